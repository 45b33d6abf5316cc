"""Sealed secrets: a block uses process.env.API_KEY in a request and never holds the
value (capabilities/network/sealed.py, docs/policy.md).

Real HTTPS servers on 127.0.0.1 play api.example.com (the host the secret is sealed
to) and other.example.com (a host the tenant may reach, but not with the secret), with
certificates from a test authority; the platform's resolver and trust store are pointed
at them, and the tenant's administrator allow-lists both names (the only way to reach
loopback). Blocks run through real isolates, the real broker and the real handlers,
inline and, on the suite's second run, through RQ workers.
"""

import json
import ssl
from dataclasses import replace

import pytest

from capabilities import network
from capabilities.base import CapabilityError
from capabilities.network import addresses, transport
from capabilities.network.sealed import PLACEHOLDER_PREFIX, run_env, run_seals
from tenants import audit
from tenants.models import AuditLog, BlockRun, TenantSecret
from tests.blocks import EXAMPLES
from tests.helpers import context_for
from tests.support.tls_servers import LocalServer, make_certificates, server_tls_context

pytestmark = [pytest.mark.django_db(transaction=True)]

VALUE = "sk-live-4f9a1c7e2b8d"
NAMES = ("api.example.com", "other.example.com")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"), list(NAMES))


@pytest.fixture(scope="module")
def https_server(certificates):
    _, cert_file, key_file = certificates
    server = LocalServer(tls_context=server_tls_context(cert_file, key_file))
    yield server
    server.close()


@pytest.fixture(scope="module")
def http_server():
    server = LocalServer()
    yield server
    server.close()


@pytest.fixture
def internet(monkeypatch, certificates, https_server, http_server):
    """Both names resolve to 127.0.0.1; the test authority is trusted."""
    ca_file = certificates[0]
    real_resolve = addresses.resolve
    monkeypatch.setattr(addresses, "resolve", lambda host, port: ["127.0.0.1"] if host in NAMES else real_resolve(host, port))
    monkeypatch.setattr(transport, "ssl_context", lambda: ssl.create_default_context(cafile=str(ca_file)))
    for server in (https_server, http_server):
        with server.state.lock:
            server.state.requests.clear()
    return https_server


@pytest.fixture
def tenant(make_tenant):
    tenant = make_tenant("sealed-co", "Interactive", network_allowed_hosts="api.example.com\nother.example.com")
    seal(tenant, "API_KEY", VALUE, "api.example.com")
    plain = TenantSecret(tenant=tenant, name="REGION")
    plain.value = "eu-west"
    plain.save()
    return tenant


def seal(tenant, name, value, hosts):
    secret = TenantSecret(tenant=tenant, name=name, sealed=True, sealed_hosts=hosts)
    secret.value = value
    secret.full_clean()
    secret.save()
    return secret


def sealed_context(tenant):
    """The call context the broker builds for a run of the tenant, and its process.env."""
    placeholders = {}
    run_secrets = [s.for_run() for s in tenant.secrets.all()]
    env = run_env(run_secrets, placeholders)
    return replace(context_for(tenant), sealed=run_seals(run_secrets, placeholders)), env


def url(server, path, host="api.example.com", scheme="https"):
    return f"{scheme}://{host}:{server.port}{path}"


def assert_value_nowhere(*runs):
    """The value is in no run's result, console or error, and in no audit row."""
    audit.flush()
    for run in runs:
        run = BlockRun.objects.get(pk=run.id)
        shown = json.dumps([run.result, run.console, run.error, getattr(run, "logs", None)])
        assert VALUE not in shown
    for row in AuditLog.objects.all():
        assert VALUE not in f"{row.target} {row.message}"


def requests_to(server):
    with server.state.lock:
        return list(server.state.requests)


# -- what works ---------------------------------------------------------------------


def test_it_sends_the_value_to_the_sealed_host_only_in_the_request(run_block, tenant, internet, dispatch_path):
    code = f"""
    export default async () => {{
      const r = await symposium.network.fetch('{url(internet, "/echo")}?key=' + process.env.API_KEY, {{
        method: 'POST',
        headers: {{ Authorization: `Bearer ${{process.env.API_KEY}}`, 'X-Api-Key': process.env.API_KEY }},
        body: JSON.stringify({{ token: process.env.API_KEY }}),
      }});
      return {{ env: {{ ...process.env }}, echoed: r.data, url: r.url }};
    }};
    """
    run = run_block(tenant, code)
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    [got] = requests_to(internet)
    assert got["headers"]["authorization"] == f"Bearer {VALUE}"
    assert got["headers"]["x-api-key"] == VALUE
    assert got["params"] == {"key": VALUE}
    assert json.loads(got["body"]) == {"token": VALUE}
    # The block holds a placeholder; the echo of its request comes back with it, too.
    placeholder = run.result["env"]["API_KEY"]
    assert placeholder.startswith(f"{PLACEHOLDER_PREFIX}API_KEY:") and len(placeholder) > len(PLACEHOLDER_PREFIX) + 30
    assert run.result["env"]["REGION"] == "eu-west"
    assert run.result["echoed"]["headers"]["authorization"] == f"Bearer {placeholder}"
    assert placeholder in run.result["url"]
    assert_value_nowhere(run)


def test_it_makes_a_new_placeholder_for_every_run(run_block, tenant):
    first = run_block(tenant, "export default () => process.env.API_KEY")
    second = run_block(tenant, "export default () => process.env.API_KEY")
    assert first.result.startswith(PLACEHOLDER_PREFIX) and second.result.startswith(PLACEHOLDER_PREFIX)
    assert first.result != second.result


def test_the_seeds_data_pipeline_works_unchanged_with_a_sealed_key(run_block, make_tenant, certificates, monkeypatch, dispatch_path):
    """examples/seed/data-pipeline.js as written: ``Bearer ${process.env.API_KEY}`` to
    https://api.example.com/data (port 443), the key sealed to that host."""
    ca_file, cert_file, key_file = certificates
    try:
        server = LocalServer(tls_context=server_tls_context(cert_file, key_file), port=443)
    except OSError as e:
        pytest.skip(f"port 443 on 127.0.0.1 is not free ({e.strerror})")
    try:
        monkeypatch.setattr(addresses, "resolve", lambda host, port: ["127.0.0.1"])
        monkeypatch.setattr(transport, "ssl_context", lambda: ssl.create_default_context(cafile=str(ca_file)))
        tenant = make_tenant("pipeline-co", "Data", network_allowed_hosts="api.example.com\nwebhook.site")
        seal(tenant, "API_KEY", VALUE, "api.example.com")
        hook = TenantSecret(tenant=tenant, name="WEBHOOK_URL")
        hook.value = "https://api.example.com/xyz"
        hook.save()
        assert run_block(tenant, (EXAMPLES / "setup/database.js").read_text()).status == "succeeded"
        code = (EXAMPLES / "seed/data-pipeline.js").read_text() + (EXAMPLES / "drivers/data-pipeline.js").read_text()
        run = run_block(tenant, code)
        assert run.status == "succeeded", (run.error_code, run.error, run.logs)
        api = requests_to(server)[0]
        assert api["path"] == "/data" and api["headers"]["authorization"] == f"Bearer {VALUE}"
        assert_value_nowhere(run)
    finally:
        server.close()


def test_it_signs_a_webhook_with_the_value_in_its_body(tenant, internet):
    ctx, env = sealed_context(tenant)
    internet.state.webhook_key = b"hook-key-123"
    ctx = replace(ctx, webhook_secret="hook-key-123")
    reply = network.send_webhook(ctx, {"url": url(internet, "/webhook"), "payload": {"auth": env["API_KEY"], "q": 'a"b'}})
    assert reply["ok"] is True
    [got] = requests_to(internet)
    assert got["verified"] is True
    assert json.loads(got["body"]) == {"auth": VALUE, "q": 'a"b'}
    internet.state.webhook_key = None


def test_it_matches_sealed_hosts_by_pattern(make_tenant, internet):
    tenant = make_tenant("wild-co", "Interactive", network_allowed_hosts="api.example.com")
    seal(tenant, "API_KEY", VALUE, "*.example.com")
    ctx, env = sealed_context(tenant)
    echo = network.fetch(ctx, {"url": url(internet, "/echo"), "headers": {"Authorization": env["API_KEY"]}})["data"]
    assert echo["headers"]["authorization"] == env["API_KEY"]
    assert requests_to(internet)[0]["headers"]["authorization"] == VALUE


# -- what must not happen -------------------------------------------------------------


def test_cant_send_sealed_secret_to_other_host(run_block, tenant, internet, dispatch_path):
    code = f"""
    const attempt = async (f) => {{ try {{ await f(); return 'sent'; }} catch (e) {{ return {{ code: e.code, message: e.message }}; }} }};
    export default async () => ({{
      header: await attempt(() => symposium.network.fetch('{url(internet, "/echo", "other.example.com")}',
        {{ headers: {{ Authorization: `Bearer ${{process.env.API_KEY}}` }} }})),
      query: await attempt(() => symposium.network.fetch('{url(internet, "/echo", "other.example.com")}?k=' + process.env.API_KEY)),
      body: await attempt(() => symposium.network.fetch('{url(internet, "/echo", "other.example.com")}',
        {{ method: 'POST', body: 'key=' + process.env.API_KEY }})),
      webhook: await attempt(() => symposium.network.sendWebhook('{url(internet, "/webhook", "other.example.com")}',
        {{ key: process.env.API_KEY }})),
      // An allowed host that redirects elsewhere: the header must not follow it there.
      redirect: await attempt(() => symposium.network.fetch(
        '{url(internet, "/redirect")}?code=307&to=' + encodeURIComponent('{url(internet, "/echo", "other.example.com")}'),
        {{ headers: {{ 'X-Api-Key': process.env.API_KEY }} }})),
    }});
    """
    run = run_block(tenant, code)
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    for attempt in ("header", "query", "body", "webhook", "redirect"):
        error = run.result[attempt]
        assert isinstance(error, dict) and error["code"] == "PERMISSION_DENIED", (attempt, error)
        assert "sealed secret API_KEY" in error["message"] and "other.example.com" in error["message"], error
    # The one request that got out is the redirecting one, to the sealed host.
    assert [r["path"] for r in requests_to(internet)] == ["/redirect"]
    audit.flush()
    denied = AuditLog.objects.filter(capability="network", error_code="PERMISSION_DENIED", message__contains="sealed secret API_KEY")
    assert denied.count() == 5
    assert_value_nowhere(run)


def test_cant_send_sealed_secret_over_plain_http(run_block, tenant, internet, http_server, dispatch_path):
    # The sealed host itself, but without TLS (a plain server on another port).
    target = url(http_server, "/echo", scheme="http")
    code = f"""
    const attempt = async (f) => {{ try {{ await f(); return 'sent'; }} catch (e) {{ return {{ code: e.code, message: e.message }}; }} }};
    export default async () => ({{
      fetch: await attempt(() => symposium.network.fetch('{target}', {{ headers: {{ Authorization: `Bearer ${{process.env.API_KEY}}` }} }})),
      webhook: await attempt(() => symposium.network.sendWebhook('{url(http_server, "/webhook", scheme="http")}', {{ key: process.env.API_KEY }})),
    }});
    """
    run = run_block(tenant, code)
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    for error in run.result.values():
        assert error["code"] == "PERMISSION_DENIED" and "over HTTPS only" in error["message"], error
    assert requests_to(http_server) == []
    # An https URL that redirects to http loses nothing either.
    ctx, env = sealed_context(tenant)
    with pytest.raises(CapabilityError) as caught:
        network.fetch(ctx, {"url": url(internet, "/redirect") + "?code=307&to=" + target, "headers": {"X-Key": env["API_KEY"]}})
    assert caught.value.code == "PERMISSION_DENIED" and "redirected" in caught.value.message
    assert requests_to(http_server) == []
    assert_value_nowhere(run)


def test_cant_read_sealed_secret_value(run_block, tenant, internet, dispatch_path):
    """The block tries every way it has to see the value: print it, write it to a file,
    keep it in the key-value store, have the sealed host echo it back, read it from an
    error, return it."""
    code = f"""
    export default async () => {{
      const key = process.env.API_KEY;
      console.log('the key is', key, JSON.stringify(process.env));
      console.error(Object.entries(process.env));
      await symposium.writeFile('leak.txt', 'key=' + key);
      const stored = await symposium.readFile('leak.txt');
      await symposium.kv.set('leak', key);
      const echo = await symposium.network.fetch('{url(internet, "/echo")}?k=' + key, {{
        method: 'POST', headers: {{ 'X-Api-Key': key }}, body: key }});
      console.log(JSON.stringify(echo.data), echo.url);
      let bad = null;
      try {{ await symposium.network.fetch('{url(internet, "/echo")}', {{ headers: {{ 'X-Api-Key': key + '\\u2603' }} }}); }}
      catch (e) {{ bad = {{ code: e.code, message: e.message }}; }}
      return {{ key, stored: stored.data, echo: echo.data, url: echo.url, bad }};
    }};
    """
    run = run_block(tenant, code)
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    placeholder = run.result["key"]
    assert placeholder.startswith(PLACEHOLDER_PREFIX)
    # The sealed host got the value; everything the block read back has the placeholder.
    assert requests_to(internet)[0]["headers"]["x-api-key"] == VALUE
    assert run.result["echo"]["headers"]["x-api-key"] == placeholder and run.result["echo"]["body"] == placeholder
    assert (tenant.storage_root() / "leak.txt").read_text() == f"key={placeholder}"
    assert run.result["bad"]["code"] in ("PERMISSION_DENIED", "INVALID_ARGUMENT")
    assert any(placeholder in line for line in run.logs)
    assert VALUE not in json.dumps([run.result, run.logs, run.events])
    assert_value_nowhere(run)
    # Where the placeholder went is audited, once per secret and place.
    audit.flush()
    noted = set(AuditLog.objects.filter(operation__endswith=".sealed").values_list("operation", flat=True))
    assert {"console.sealed", "writeFile.sealed", "kv.set.sealed"} <= noted, noted


def test_cant_use_another_runs_placeholder(run_block, tenant, internet, dispatch_path):
    first = run_block(tenant, "export default () => process.env.API_KEY")
    code = f"""
    export default async () => (await symposium.network.fetch('{url(internet, "/echo")}',
      {{ headers: {{ 'X-Api-Key': {json.dumps(first.result)} }} }})).data;
    """
    run = run_block(tenant, code)
    assert run.status == "succeeded", (run.error_code, run.error)
    assert requests_to(internet)[0]["headers"]["x-api-key"] == first.result  # sent as the text it is


def test_cant_move_a_request_with_a_value_that_looks_like_a_url(make_tenant, internet):
    tenant = make_tenant("tricky-co", "Interactive", network_allowed_hosts="api.example.com\nother.example.com")
    seal(tenant, "API_KEY", "x@other.example.com/#", "api.example.com")
    ctx, env = sealed_context(tenant)
    echo = network.fetch(ctx, {"url": url(internet, "/echo") + "?k=" + env["API_KEY"]})
    [got] = requests_to(internet)
    assert got["headers"]["host"] == f"api.example.com:{internet.port}"
    assert got["params"] == {"k": "x@other.example.com/#"}
    assert "x@other.example.com" not in echo["url"]


def test_cant_put_a_line_break_into_a_header_through_a_sealed_value(make_tenant, internet):
    tenant = make_tenant("crlf-co", "Interactive", network_allowed_hosts="api.example.com")
    seal(tenant, "API_KEY", "abcdefgh\r\nX-Injected: 1", "api.example.com")
    ctx, env = sealed_context(tenant)
    with pytest.raises(CapabilityError) as caught:
        network.fetch(ctx, {"url": url(internet, "/echo"), "headers": {"Authorization": env["API_KEY"]}})
    assert caught.value.code == "PERMISSION_DENIED" and "line break" in caught.value.message
    assert "abcdefgh" not in caught.value.message
    assert requests_to(internet) == []


# -- the administrator's side ---------------------------------------------------------


@pytest.fixture
def admin_client(client):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("root", "root@example.org", "root-password-123"))
    return client


def secret_form(tenant, **fields):
    data = {
        "slug": tenant.slug, "name": tenant.name, "profile": tenant.profile_id, "is_active": "on",
        "suspended_reason": "", "network_allowed_hosts": "api.example.com", "new_webhook_secret": "",
    }
    for prefix in ("membership_set", "overrides", "secrets"):
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0", f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"})
    data.update({"secrets-TOTAL_FORMS": "1", "secrets-0-tenant": str(tenant.pk), "secrets-0-name": "API_KEY"})
    data.update({f"secrets-0-{k}": v for k, v in fields.items()})
    return data


def test_it_lets_an_administrator_seal_a_secret_to_hosts(admin_client, make_tenant):
    tenant = make_tenant("admin-co", "Interactive")
    response = admin_client.post(f"/admin/tenants/tenant/{tenant.pk}/change/", secret_form(
        tenant, **{"new_value": VALUE, "sealed": "on", "sealed_hosts": "api.example.com\n*.stripe.com"}))
    assert response.status_code == 302, response.content.decode()[:3000]
    secret = TenantSecret.objects.get(tenant=tenant)
    assert secret.sealed and secret.hosts() == ["api.example.com", "*.stripe.com"] and secret.value == VALUE
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/change/").content.decode()
    assert VALUE not in page and VALUE[-2:] + "<" not in page  # no tail of a sealed value shown
    audit.flush()
    row = AuditLog.objects.get(capability="admin", operation="secret.seal")
    assert "API_KEY to api.example.com *.stripe.com" in row.message and VALUE not in row.message


@pytest.mark.parametrize("fields,error", [
    ({"new_value": VALUE, "sealed": "on", "sealed_hosts": ""}, "needs at least one host"),
    ({"new_value": "short", "sealed": "on", "sealed_hosts": "api.example.com"}, "at least 8 characters"),
    ({"new_value": VALUE, "sealed": "on", "sealed_hosts": "https://api.example.com/"}, "is not a host name"),
])
def test_it_refuses_a_sealed_secret_without_hosts_or_too_short(admin_client, make_tenant, fields, error):
    tenant = make_tenant("admin-co", "Interactive")
    response = admin_client.post(f"/admin/tenants/tenant/{tenant.pk}/change/", secret_form(tenant, **fields))
    assert response.status_code == 200 and error in response.content.decode()
    assert not TenantSecret.objects.filter(tenant=tenant).exists()


def test_cant_find_the_value_in_a_queued_call_or_a_repr(tenant):
    """An RQ job carries the call context pickled through Redis: sealed secrets travel in
    it as ciphertext, and neither a Seal nor a RunSecret shows its value when printed."""
    import pickle

    ctx, env = sealed_context(tenant)
    assert VALUE.encode() not in pickle.dumps(ctx)
    assert VALUE not in repr(ctx) and VALUE not in repr([s.for_run() for s in tenant.secrets.all()])
    assert pickle.loads(pickle.dumps(ctx)).sealed[0].value() == VALUE
