"""The seed's code examples, unchanged, run as blocks through real isolates, the real
broker and the real handlers: inline on every run of the suite, and through RQ workers
when Redis is configured (the suite's second run, on PostgreSQL).

The examples call https://api.example.com and https://webhook.site. There is no internet
here, so a real HTTPS server on 127.0.0.1:443 plays both, with a certificate from a test
authority; the test points the platform's resolver and trust store at them and the
tenant's administrator allow-lists the two hosts (the only way to reach loopback).
"""

import io
import json
import ssl

import pytest
from PIL import Image

from capabilities.network import addresses, transport
from tests.support.tls_servers import LocalServer, make_certificates, server_tls_context
from tenants.models import TenantSecret
from tests.blocks import EXAMPLES

pytestmark = [pytest.mark.django_db(transaction=True)]

FAKE_HOSTS = ("api.example.com", "webhook.site")


def seed(name):
    return (EXAMPLES / "seed" / name).read_text()


def with_driver(name):
    """A usage example of the seed as written, followed by the driver that calls it."""
    return seed(name) + (EXAMPLES / "drivers" / name).read_text()


@pytest.fixture(scope="module")
def internet(tmp_path_factory):
    """api.example.com and webhook.site, served on 127.0.0.1:443 over TLS."""
    ca_file, cert_file, key_file = make_certificates(tmp_path_factory.mktemp("tls"), list(FAKE_HOSTS))
    try:
        server = LocalServer(tls_context=server_tls_context(cert_file, key_file), port=443)
    except OSError as e:
        pytest.skip(f"port 443 on 127.0.0.1 is not free ({e.strerror})")
    server.ca_file = ca_file
    yield server
    server.close()


@pytest.fixture
def fake_dns(monkeypatch, internet):
    real_resolve = addresses.resolve
    monkeypatch.setattr(addresses, "resolve", lambda host, port: ["127.0.0.1"] if host in FAKE_HOSTS else real_resolve(host, port))
    monkeypatch.setattr(transport, "ssl_context", lambda: ssl.create_default_context(cafile=str(internet.ca_file)))
    internet.state.requests.clear()
    return internet


def secret(tenant, name, value):
    s = TenantSecret(tenant=tenant, name=name)
    s.value = value
    s.save()


def test_the_file_system_example(run_block, seeded, dispatch_path):
    tenant = seeded("files-co", "Interactive")
    run = run_block(tenant, seed("file-system.js"))
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    assert json.loads(run.logs[0])["site"] == "Symposium demo"
    assert run.logs[2].endswith(" bytes")
    assert (tenant.storage_root() / "output/result.txt").read_text() == "Hello World"


def test_the_database_example(run_block, seeded, dispatch_path):
    tenant = seeded("data-co", "Data")
    setup = run_block(tenant, (EXAMPLES / "setup/database.js").read_text())
    assert setup.status == "succeeded", (setup.error_code, setup.error)
    run = run_block(tenant, seed("database.js"))
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    assert run.logs == ["Found 2 active users", "Transaction completed: true"]
    check = run_block(tenant, "const r = await symposium.database.query('SELECT action, user_id FROM logs', []);\nexport default () => r.data.rows;")
    assert check.result == [{"action": "file_upload", "user_id": 123}]


def test_the_database_example_is_refused_for_interactive(run_block, seeded):
    run = run_block(seeded("ui-co", "Interactive"), seed("database.js"))
    assert run.status == "failed" and run.error_code == "PERMISSION_DENIED"
    assert "database" in run.error


def test_the_data_pipeline_example(run_block, seeded, fake_dns, dispatch_path):
    tenant = seeded("pipeline-co", "Data")
    tenant.network_allowed_hosts = "api.example.com\nwebhook.site"
    tenant.webhook_secret = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM="
    tenant.save()
    fake_dns.state.webhook_key = b"secret-key-for-tests"
    secret(tenant, "API_KEY", "token-abc")
    secret(tenant, "WEBHOOK_URL", "https://webhook.site/xyz")
    assert run_block(tenant, (EXAMPLES / "setup/database.js").read_text()).status == "succeeded"

    run = run_block(tenant, with_driver("data-pipeline.js"))
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    assert run.result == {"success": True, "processed": 25}
    api, hook = fake_dns.state.requests
    assert api["path"] == "/data" and api["params"] == {"limit": "1000"}
    assert api["headers"]["authorization"] == "Bearer token-abc"
    assert hook["path"] == "/xyz" and hook["verified"] is True
    body = json.loads(hook["body"])
    assert body["event"] == "data_pipeline_complete" and body["recordCount"] == 25
    stored = run_block(tenant, "const r = await symposium.database.query('SELECT source, data FROM raw_data', []);\nexport default () => r.data.rows;")
    [row] = stored.result
    assert row["source"] == "api" and len(json.loads(row["data"])) == 25


def test_the_network_example(run_block, seeded, fake_dns, dispatch_path):
    tenant = seeded("net-co", "Interactive")
    tenant.network_allowed_hosts = "api.example.com\nwebhook.site"
    tenant.save()
    fake_dns.state.webhook_key = None
    code = seed("network.js").replace("https://api.example.com/data", "https://api.example.com/echo")
    run = run_block(tenant, code)
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    echo, hook = fake_dns.state.requests
    assert echo["method"] == "POST" and echo["headers"]["authorization"] == "Bearer token123"
    assert json.loads(echo["body"]) == {"query": "test"}
    assert json.loads(hook["body"]) == {"event": "user_action", "data": {"action": "file_upload", "size": 1024}}


def test_the_canvas_example(run_block, seeded, dispatch_path):
    run = run_block(seeded("canvas-co", "Interactive"), seed("canvas.js"))
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    assert run.logs[0].startswith("Created canvas: ")
    assert run.logs[1].startswith("Exported ") and run.logs[1].endswith(" bytes of PNG data")
    images = [e for e in run.events if e.get("event") == "image"]
    assert len(images) == 1 and images[0]["mime"] == "image/png"


def test_the_interactive_dashboard_example(run_block, seeded, dispatch_path, tmp_path):
    tenant = seeded("dash-co", "Interactive")
    run = run_block(tenant, with_driver("interactive-dashboard.js"))
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    saved = tenant.storage_root() / run.result["filename"]
    image = Image.open(io.BytesIO(saved.read_bytes()))
    assert image.size == (1200, 800) and run.result["size"] == saved.stat().st_size
    rgb = image.convert("RGB")
    assert rgb.getpixel((5, 5)) == (245, 245, 245)  # the background
    assert rgb.getpixel((200, 650)) == (0x1E, 0x88, 0xE5)  # inside Monday's bar
    image.save(tmp_path / "dashboard.png")


def test_the_process_example_as_advanced(run_block, seeded, dispatch_path):
    run = run_block(seeded("adv-co", "Advanced"), seed("process.js"))
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    assert run.logs[0] == "Exit code: 0"
    assert run.logs[1].startswith("Output: total")


@pytest.mark.parametrize("profile", ["Basic", "Interactive", "Data"])
def test_the_process_example_is_refused_for_other_profiles(run_block, seeded, profile):
    run = run_block(seeded("other-co", profile), seed("process.js"))
    assert run.status == "failed" and run.error_code == "PERMISSION_DENIED"
    assert "process execution" in run.error


def test_the_utils_example(run_block, seeded):
    run = run_block(seeded("utils-co", "Basic"), seed("utils.js"))
    assert run.status == "succeeded"
    temp, timestamp, unique = run.logs
    assert temp.startswith("temp/tmp_") and temp.endswith(".json")
    assert timestamp.isdigit() and len(unique) >= 8


def test_the_file_processing_example(run_block, seeded, dispatch_path):
    tenant = seeded("csv-co", "Data")
    assert run_block(tenant, (EXAMPLES / "setup/database.js").read_text()).status == "succeeded"
    run = run_block(tenant, with_driver("process-uploaded-file.js"))
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    assert run.result["success"] is True and run.result["recordCount"] == 3
    records = json.loads((tenant.storage_root() / run.result["outputPath"]).read_text())
    assert records[0] == {"name": "Ada", "email": "ada@example.org", "plan": "pro"}


@pytest.mark.parametrize("profile", ["Basic", "Interactive", "Data", "Advanced"])
def test_the_orchestrator_test_suite_passes_what_each_profile_allows(run_block, seeded, profile, dispatch_path):
    tenant = seeded("suite-co", profile)
    tenant.email_sender = "suite@suite-co.example"  # set by its administrator
    tenant.save()
    run = run_block(tenant, (EXAMPLES / "test-orchestrator.js").read_text())
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    failures = [line for line in run.logs if line.startswith("FAIL")]
    assert failures == []
    assert run.result["failed"] == 0 and run.result["passed"] > 0
    skipped = {line.split(":")[0].removeprefix("SKIP ") for line in run.logs if line.startswith("SKIP")}
    if profile == "Advanced":
        assert skipped == set()
    if profile == "Basic":
        assert {"files.writeFile", "canvas.createCanvas", "database.query", "process.execute", "kv.set", "email.send", "image.info", "realtime.publish"} <= skipped


@pytest.mark.parametrize("name", ["kv", "email", "image", "realtime"])
def test_the_examples_of_the_new_capabilities_run(run_block, seeded, name, dispatch_path):
    tenant = seeded("examples-co", "Interactive")
    tenant.email_sender = "blocks@examples-co.example"
    tenant.save()
    run = run_block(tenant, (EXAMPLES / "capabilities" / f"{name}.js").read_text())
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    if name == "kv":
        assert run_block(tenant, (EXAMPLES / "capabilities" / "kv.js").read_text()).result == {"visits": 2}
    if name == "image":
        assert run.result["width"] == 100 and run.result["height"] == 100
        assert (tenant.storage_root() / "pictures" / "card.png").exists()
