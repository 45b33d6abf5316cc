"""The runner's HTTP side and the admins' pages, through Django's test client: the page,
run history, file downloads (membership and path safety), the overview, the tenant's
change page and the job-queue dashboard.

Alice owns "acme", Bob is a member, Victor a viewer; Mallory owns "globex" and should
have no access to Acme's stuff.
"""

import json
import os
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from tenants import audit
from tenants.models import AuditLog, BlockRun, Membership, PolicyOverride


@pytest.fixture
def tenants(acme, people, make_tenant):
    victor = get_user_model().objects.create_user("victor", "victor@example.org", "victor-password-123")
    Membership.objects.create(tenant=acme, user=victor, role="viewer")
    globex = make_tenant("globex", "Basic")
    Membership.objects.create(tenant=globex, user=people["mallory"], role="owner")
    return {"acme": acme, "globex": globex, "victor": victor, **people}


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


@pytest.fixture
def admin_client(client, db):
    root = get_user_model().objects.create_superuser("root", "root@example.org", "root-password-123")
    client.force_login(root)
    return client


def boot_data(response):
    html = response.content.decode()
    start = html.index('<script id="runner-boot" type="application/json">') + len('<script id="runner-boot" type="application/json">')
    return json.loads(html[start: html.index("</script>", start)])


def make_run(tenant, user=None, **fields):
    values = {"code": "export default () => 1;", "status": "succeeded", "source": "runner", "name": "block.js"}
    values.update(fields)
    return BlockRun.objects.create(tenant=tenant, user=user, **values)


def audit_row(tenant, **fields):
    values = {"capability": "files", "operation": "readFile", "outcome": "allowed", "duration_ms": 1.0}
    values.update(fields)
    return AuditLog.objects.create(tenant=tenant, tenant_slug=tenant.slug if tenant else "", **values)


# -- the page -----------------------------------------------------------------------------


def test_it_sends_anonymous_users_to_the_login_page(client, db):
    response = client.get("/runner/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=/runner/"


def test_it_logs_a_member_in_with_the_plain_login_page(client, tenants):
    page = client.get("/login/?next=/runner/")
    assert page.status_code == 200 and b'name="csrfmiddlewaretoken"' in page.content
    response = client.post("/login/", {"username": "bob", "password": "bob-password-123", "next": "/runner/"})
    assert response.status_code == 302 and response["Location"] == "/runner/"
    assert client.get("/runner/").status_code == 200
    client.post("/logout/")
    assert client.get("/runner/").status_code == 302
    bad = client.post("/login/", {"username": "bob", "password": "wrong"})
    assert b"didn&#x27;t match" in bad.content or b"didn't match" in bad.content


def test_it_offers_only_the_users_own_tenants(login, tenants):
    response = login(tenants["alice"]).get("/runner/")
    assert response.status_code == 200
    boot = boot_data(response)
    assert [t["slug"] for t in boot["tenants"]] == ["acme"]
    assert boot["selected"] == "acme"
    assert b"globex" not in response.content
    assert response["Content-Security-Policy"].startswith("default-src 'self'; script-src 'self'")


def test_it_tells_a_user_without_tenants_what_to_do(login, people):
    response = login(people["mallory"]).get("/runner/")
    assert b"You are not a member of any tenant" in response.content


def test_it_marks_a_viewers_tenant_as_not_runnable(login, tenants):
    boot = boot_data(login(tenants["victor"]).get("/runner/"))
    assert boot["tenants"][0]["can_run"] is False and boot["tenants"][0]["role"] == "viewer"


def test_it_offers_the_seed_examples_verbatim(login, tenants, settings):
    from pathlib import Path

    boot = boot_data(login(tenants["alice"]).get("/runner/"))
    examples = {e["key"]: e for e in boot["examples"]}
    seed = Path(settings.BASE_DIR) / "examples"
    assert examples["canvas"]["code"] == (seed / "seed/canvas.js").read_text()
    assert examples["interactive-dashboard"]["code"] == (
        (seed / "seed/interactive-dashboard.js").read_text() + "\n" + (seed / "drivers/interactive-dashboard.js").read_text())
    assert examples["test-orchestrator"]["code"] == (seed / "test-orchestrator.js").read_text()
    assert {"file-system", "network", "database", "process", "utils", "process-uploaded-file", "data-pipeline",
            "setup-database"} <= set(examples)


def test_it_shows_the_tenants_history_on_reload(login, tenants):
    old = make_run(tenants["acme"], tenants["bob"], name="old.js", created=timezone.now() - timedelta(hours=1))
    new = make_run(tenants["acme"], tenants["alice"], name="new.js", status="failed", error_code="PERMISSION_DENIED")
    make_run(tenants["globex"], tenants["mallory"], name="theirs.js")
    client = login(tenants["alice"])
    boot = boot_data(client.get("/runner/"))
    assert [(r["id"], r["name"], r["user"]) for r in boot["history"]] == [(new.pk, "new.js", "alice"), (old.pk, "old.js", "bob")]
    assert boot["history"][0]["error_code"] == "PERMISSION_DENIED"
    data = client.get("/runner/acme/runs/").json()
    assert [r["id"] for r in data["runs"]] == [new.pk, old.pk]


def test_it_shows_a_past_run_with_its_calls_and_files(login, tenants, storage_root):
    run = make_run(tenants["acme"], tenants["alice"], console="hello\n[warn] careful", result={"ok": True}, calls=2)
    audit_row(tenants["acme"], run=run, operation="writeFile", target="out/a.txt")
    audit_row(tenants["acme"], run=run, operation="writeFile", target="out/b.txt")
    audit_row(tenants["acme"], run=run, operation="deleteFile", target="out/b.txt")
    audit_row(tenants["acme"], run=run, capability="canvas", operation="canvas.createCanvas", outcome="denied",
              error_code="PERMISSION_DENIED", message="no canvas")
    detail = login(tenants["victor"]).get(f"/runner/acme/runs/{run.pk}/").json()
    assert detail["calls"] == 2  # the run's figure; the calls themselves are the call log
    assert detail["console"] == "hello\n[warn] careful" and detail["result"] == {"ok": True}
    assert detail["files"] == [{"path": "out/a.txt", "url": "/runner/acme/files/out/a.txt"}]
    assert [(c["op"], c["outcome"], c["code"]) for c in detail["call_log"]] == [
        ("writeFile", "allowed", ""), ("writeFile", "allowed", ""), ("deleteFile", "allowed", ""),
        ("canvas.createCanvas", "denied", "PERMISSION_DENIED")]


@pytest.mark.django_db(transaction=True)  # the audit writer's thread commits on its own
def test_cant_read_another_tenants_history(login, tenants):
    run = make_run(tenants["acme"], tenants["alice"])
    client = login(tenants["mallory"])
    assert client.get("/runner/acme/runs/").status_code == 404
    assert client.get(f"/runner/acme/runs/{run.pk}/").status_code == 404
    # Nor through her own tenant's address.
    assert client.get(f"/runner/globex/runs/{run.pk}/").status_code == 404
    audit.flush()
    rows = AuditLog.objects.filter(capability="runner", user=tenants["mallory"])
    assert {(r.operation, r.tenant_slug, r.outcome) for r in rows} == {("history", "acme", "denied")}


# -- downloads ----------------------------------------------------------------------------


@pytest.fixture
def stored(tenants):
    acme_root = tenants["acme"].storage_root()
    (acme_root / "out").mkdir()
    (acme_root / "out/report.txt").write_text("a report")
    (acme_root / "out/page.html").write_text("<script>alert(document.cookie)</script>")
    globex_root = tenants["globex"].storage_root()
    (globex_root / "secret.txt").write_text("globex secret")
    (acme_root / ".symposium").mkdir()
    (acme_root / ".symposium/tenant.sqlite3").write_text("platform data")
    return acme_root


def test_it_serves_a_file_to_a_member_as_an_attachment(login, tenants, stored):
    for user in ("alice", "bob", "victor"):
        response = login(tenants[user]).get("/runner/acme/files/out/report.txt")
        assert response.status_code == 200, user
        assert b"".join(response.streaming_content) == b"a report"
    assert response["Content-Disposition"] == 'attachment; filename="report.txt"'


def test_cant_make_a_tenants_html_file_a_page_of_the_site(login, tenants, stored):
    response = login(tenants["alice"]).get("/runner/acme/files/out/page.html")
    # Never rendered by the browser as a page of this origin (stored XSS).
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment")
    assert response["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db(transaction=True)  # the audit writer's thread commits on its own
def test_cant_download_a_file_of_a_tenant_one_is_not_a_member_of(login, tenants, stored):
    client = login(tenants["mallory"])
    assert client.get("/runner/acme/files/out/report.txt").status_code == 404
    audit.flush()
    row = AuditLog.objects.get(capability="runner", operation="download")
    assert (row.tenant_slug, row.user, row.outcome) == ("acme", tenants["mallory"], "denied")
    client.logout()
    assert client.get("/runner/acme/files/out/report.txt").status_code == 302  # to the login page


@pytest.mark.parametrize("path", [
    "../globex/secret.txt",
    "%2e%2e/globex/secret.txt",
    "out/../../globex/secret.txt",
    "/etc/passwd",
    "etc/passwd",
    ".symposium/tenant.sqlite3",
    "out/report.txt%00.png",
    "out",
    "",
    "no-such-file.txt",
])
def test_cant_download_outside_the_tenants_files(login, tenants, stored, path):
    response = login(tenants["alice"]).get(f"/runner/acme/files/{path}")
    assert response.status_code == 404


def test_cant_download_through_a_symbolic_link(login, tenants, stored):
    os.symlink("/etc/passwd", stored / "passwd.txt")
    os.symlink(tenants["globex"].storage_root(), stored / "globex")
    os.symlink(stored / "out", stored / "out-link")
    client = login(tenants["alice"])
    for path in ("passwd.txt", "globex/secret.txt", "out-link/report.txt"):
        assert client.get(f"/runner/acme/files/{path}").status_code == 404, path


def test_cant_download_a_fifo_or_hang_on_it(login, tenants, stored):
    os.mkfifo(stored / "pipe")
    assert login(tenants["alice"]).get("/runner/acme/files/pipe").status_code == 404


# -- the admins' pages ----------------------------------------------------------------------


@pytest.fixture
def activity(tenants):
    """A week of activity: runs and calls of two tenants, denials, a rate limit."""
    now = timezone.now()
    acme, globex = tenants["acme"], tenants["globex"]
    runs = [make_run(acme, tenants["alice"], created=now - timedelta(hours=h)) for h in (1, 2, 30)]
    runs.append(make_run(globex, tenants["mallory"], status="failed", error_code="PERMISSION_DENIED", created=now - timedelta(hours=3)))
    for i in range(5):
        audit_row(acme, run=runs[0], time=now - timedelta(hours=1), duration_ms=10.0 + i, bytes_out=100 * i)
    audit_row(acme, run=runs[0], capability="network", operation="network.fetch", target="slow.example",
              time=now - timedelta(hours=2), duration_ms=4321.0, bytes_out=2048)
    audit_row(acme, run=runs[0], capability="files", operation="readFile", target="<script>alert(1)</script>",
              time=now - timedelta(hours=2), duration_ms=2.0, bytes_out=9 * 1024 * 1024)
    audit_row(globex, run=runs[3], capability="canvas", operation="canvas.createCanvas", outcome="denied",
              error_code="PERMISSION_DENIED", time=now - timedelta(hours=3))
    for _ in range(3):
        audit_row(globex, run=runs[3], capability="network", operation="network.fetch", outcome="denied",
                  error_code="RATE_LIMITED", time=now - timedelta(hours=3))
    audit_row(acme, capability="runner", operation="start", outcome="denied", error_code="PERMISSION_DENIED",
              time=now - timedelta(minutes=5), user=tenants["mallory"])
    return runs


def test_it_shows_the_overview_with_charts(admin_client, activity):
    response = admin_client.get("/admin/overview/")
    assert response.status_code == 200
    html = response.content.decode()
    for section in ("chart-runs", "chart-calls", "chart-denials", "chart-slowest", "chart-largest"):
        assert f'id="{section}"' in html
    assert html.count('<svg class="chart"') >= 6
    # 4 runs; 11 calls reached the broker (refused runner requests are not calls); 5
    # denials (4 calls and the runner request), 3 of them rate limits.
    assert '<div class="label">Runs</div><div class="value">4</div>' in html
    assert '<div class="label">Capability calls</div><div class="value">11</div>' in html
    assert '<div class="label">Denials</div><div class="value">5</div>' in html
    assert '<div class="label">Rate-limit hits</div><div class="value">3</div>' in html
    assert "acme · network.fetch slow.example" in html and "4.32 s" in html  # the slowest call
    assert "9.0 MB" in html  # the largest call
    # A target comes from a block: it is shown as text, never as markup.
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_it_shows_each_period(admin_client, activity):
    day = admin_client.get("/admin/overview/?range=24h").content.decode()
    month = admin_client.get("/admin/overview/?range=30d").content.decode()
    assert '<div class="label">Runs</div><div class="value">3</div>' in day  # the run 30 h ago is out
    assert '<div class="label">Runs</div><div class="value">4</div>' in month
    assert admin_client.get("/admin/overview/?range=bogus").status_code == 200


def test_it_shows_an_empty_overview(admin_client, db):
    html = admin_client.get("/admin/overview/").content.decode()
    assert "Nothing in this period." in html and "No denials in this period." in html


def test_cant_see_the_overview_without_the_right_to_read_the_audit_log(client, tenants):
    assert client.get("/admin/overview/").status_code == 302
    client.force_login(tenants["bob"])  # not staff
    assert client.get("/admin/overview/")["Location"].startswith("/admin/login/")
    staff = get_user_model().objects.create_user("staffer", "s@example.org", "staff-password-123", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/overview/").status_code == 403
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_auditlog", "view_blockrun"]))
    assert client.get("/admin/overview/").status_code == 200


def test_it_links_the_overview_runner_and_queues_from_the_admin_index(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/overview/"' in html and 'href="/runner/"' in html and 'href="/django-rq/"' in html


def test_it_shows_the_job_queues_to_staff_only(admin_client, client, tenants):
    assert admin_client.get("/django-rq/").status_code == 200
    client.force_login(tenants["bob"])
    assert client.get("/django-rq/")["Location"].startswith("/admin/login/")


def test_it_shows_the_tenants_policy_beside_its_profile(admin_client, tenants, activity, storage_root):
    acme = tenants["acme"]
    PolicyOverride.objects.create(tenant=acme, setting="max_file_size", value=str(20 * 1024 * 1024))
    PolicyOverride.objects.create(tenant=acme, setting="network_rate_per_minute", value="90")
    (acme.storage_root() / "data.bin").write_bytes(b"x" * 300_000)
    html = admin_client.get(f"/admin/tenants/tenant/{acme.pk}/change/").content.decode()
    assert "Effective policy · profile Interactive with 2 overrides" in html
    row = html[html.index('data-setting="max_file_size"'):]
    row = row[: row.index("</tr>")]
    assert 'class="overridden"' in html[html.rindex("<tr", 0, html.index('data-setting="max_file_size"')):html.index('data-setting="max_file_size"')]
    assert "5.0 MB (5,242,880 bytes)" in row and "20.0 MB (20,971,520 bytes)" in row and "override" in row
    plain = html[html.index('data-setting="storage_quota"') - 40: html.index('data-setting="storage_quota"')]
    assert "overridden" not in plain
    assert "293.0 KB" in html and "of 100.0 MB" in html  # storage against quota
    assert html.count('class="sym-badge succeeded"') >= 3  # recent runs
    assert "network.fetch" in html and "slow.example" in html  # audit trail
    assert "/runner/?tenant=acme" in html and f"?tenant__id__exact={acme.pk}" in html
