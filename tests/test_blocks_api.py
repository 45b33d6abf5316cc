"""Saved blocks through the HTTP API and their HTTP endpoints, against the real server:
an in-process Daphne on a loopback port, its broker on the real websocket, real
isolates. Requests go over TCP with httpx, as an application's would.

Acme (Alice owns it) has a deploy token and a run token; Globex is another tenant
whose token should reach nothing of Acme's.
"""

import time
from datetime import timedelta

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone

from blocks.models import ApiToken, Block, BlockVersion
from tenants import audit
from tenants.models import AuditLog, BlockRun, PolicyOverride
from tenants.ratelimit import reset_limiter

pytestmark = [pytest.mark.django_db(transaction=True)]

HELLO = "export default (input) => ({ hello: input?.name ?? 'world', v: 1 });"
HELLO_V2 = "export default (input) => ({ hello: input?.name ?? 'world', v: 2 });"
SLOW = "await new Promise((r) => setTimeout(r, 1500)); export default () => 'slow';"
TYPESCRIPT = """
interface Greeting { hello: string; length: number }
const greet = (name: string): Greeting => ({ hello: name, length: name.length });
export default (input: { name: string }): Greeting => greet(input.name);
"""
ENDPOINT = """
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const body = request.method === "POST" ? await request.json() : null;
    return Response.json(
      {
        method: request.method,
        path: url.pathname,
        query: url.searchParams.get("q"),
        body,
        agent: request.headers.get("x-app"),
        cookie: request.headers.get("cookie"),
        authorization: request.headers.get("authorization"),
      },
      { status: request.method === "POST" ? 201 : 200, headers: { "x-answer": "42" } },
    );
  },
};
"""
FAILING_ENDPOINT = """
export default { fetch() { throw new Error("secret detail /srv/app/config.py"); } };
"""


@pytest.fixture(autouse=True)
def fresh_limits():
    reset_limiter()
    yield
    reset_limiter()


@pytest.fixture(autouse=True)
def inline_dispatch(settings):
    settings.SYMPOSIUM_RQ_CAPABILITIES = []


class Api:
    """An application calling the API with one token."""

    def __init__(self, server, token):
        self.base = f"http://127.0.0.1:{server.port}"
        self.client = httpx.Client(base_url=self.base, timeout=60,
                                   headers={"Authorization": f"Bearer {token}"} if token else {})

    def __getattr__(self, method):
        return getattr(self.client, method)


@pytest.fixture
def tokens(acme, make_tenant):
    globex = make_tenant("globex", "Interactive")
    _, deploy = ApiToken.issue(acme, name="ci", scope="deploy")
    _, run = ApiToken.issue(acme, name="app", scope="run")
    _, other = ApiToken.issue(globex, name="globex-ci", scope="deploy")
    return {"deploy": deploy, "run": run, "globex": other, "acme": acme, "globex_tenant": globex}


@pytest.fixture
def api(server, tokens, run_block):
    # run_block: no run outlives its test.
    return {name: Api(server, tokens[name]) for name in ("deploy", "run", "globex")} | {"none": Api(server, None)}


def wait_finished(client, run_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/runs/{run_id}").json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def test_it_creates_runs_versions_and_rolls_back(api, tokens):
    created = api["deploy"].put("/api/v1/blocks/hello", json={"code": HELLO, "message": "first", "deploy": True})
    assert created.status_code == 201, created.text
    assert created.json()["version"]["number"] == 1 and created.json()["deployedVersion"] == 1

    # With wait: the run's outcome in the runblock --json shape.
    ran = api["run"].post("/api/v1/blocks/hello/runs", json={"input": {"name": "Ada"}, "wait": 20})
    assert ran.status_code == 201, ran.text
    body = ran.json()
    assert body["status"] == "succeeded" and body["result"] == {"hello": "Ada", "v": 1}
    assert body["error"] is None and body["stats"]["run"] == body["id"] and body["block"] == "hello" and body["version"] == 1

    # Without wait: 202 at once, then poll.
    queued = api["run"].post("/api/v1/blocks/hello/runs", json={"input": {"name": "Bo"}})
    assert queued.status_code == 202 and queued.json()["status"] in ("queued", "running")
    polled = wait_finished(api["run"], queued.json()["id"])
    assert polled["result"] == {"hello": "Bo", "v": 1}

    # The same code again makes no version; new code makes version 2, not deployed yet.
    same = api["deploy"].put("/api/v1/blocks/hello", json={"code": HELLO})
    assert same.status_code == 200 and same.json()["createdVersion"] is False and same.json()["latestVersion"] == 1
    second = api["deploy"].put("/api/v1/blocks/hello", json={"code": HELLO_V2, "message": "v2"})
    assert second.json()["version"]["number"] == 2 and second.json()["deployedVersion"] == 1
    assert api["run"].post("/api/v1/blocks/hello/runs", json={"wait": 20}).json()["result"]["v"] == 1

    deployed = api["deploy"].post("/api/v1/blocks/hello/deploy", json={"version": 2})
    assert deployed.status_code == 200 and deployed.json()["deployedVersion"] == 2
    assert api["run"].post("/api/v1/blocks/hello/runs", json={"wait": 20}).json()["result"]["v"] == 2
    # Version N still runs after N+1 is deployed, when asked for.
    old = api["run"].post("/api/v1/blocks/hello/runs", json={"wait": 20, "version": 1}).json()
    assert old["result"]["v"] == 1 and old["version"] == 1

    rolled = api["deploy"].post("/api/v1/blocks/hello/deploy", json={"version": 1})
    assert rolled.json()["deployedVersion"] == 1
    assert api["run"].post("/api/v1/blocks/hello/runs", json={"wait": 20}).json()["result"]["v"] == 1

    versions = api["run"].get("/api/v1/blocks/hello/versions").json()
    assert [v["number"] for v in versions] == [2, 1] and versions[1]["code"] == HELLO
    assert versions[0]["author"] == "token ci"
    listed = api["run"].get("/api/v1/blocks").json()
    assert [b["slug"] for b in listed] == ["hello"]

    audit.flush()
    operations = list(AuditLog.objects.filter(capability="blocks").order_by("time", "id").values_list("operation", "target"))
    assert operations == [("deploy", "hello@1"), ("deploy", "hello@2"), ("rollback", "hello@1")]
    runs = BlockRun.objects.filter(source="api")
    assert runs.count() == 6 and all(r.block.slug == "hello" for r in runs)


def test_it_runs_typescript_blocks(api):
    api["deploy"].put("/api/v1/blocks/greet", json={"code": TYPESCRIPT, "language": "typescript", "deploy": True})
    body = api["run"].post("/api/v1/blocks/greet/runs", json={"input": {"name": "Grace"}, "wait": 20}).json()
    assert body["status"] == "succeeded", body
    assert body["result"] == {"hello": "Grace", "length": 5}


def test_it_returns_the_console_with_when_each_entry_was_printed(api):
    code = "console.log('a'); await new Promise((r) => setTimeout(r, 400)); console.error('b\\nc'); export default () => 1;"
    api["deploy"].put("/api/v1/blocks/talk", json={"code": code, "deploy": True})
    body = api["run"].post("/api/v1/blocks/talk/runs", json={"wait": 20}).json()
    assert [(log["level"], log["text"]) for log in body["logs"]] == [("log", "a"), ("error", "b\nc")], body
    first, second = (log["ms"] for log in body["logs"])
    assert 0 <= first < 400 <= second - first + 50, body["logs"]
    assert api["run"].get(f"/api/v1/runs/{body['id']}").json()["logs"] == body["logs"]


def test_it_stops_a_run(api):
    api["deploy"].put("/api/v1/blocks/slow", json={"code": "await new Promise(() => setInterval(() => {}, 1000));", "deploy": True})
    started = api["run"].post("/api/v1/blocks/slow/runs", json={})
    stopped = api["run"].post(f"/api/v1/runs/{started.json()['id']}/stop")
    assert stopped.status_code == 200
    assert wait_finished(api["run"], started.json()["id"])["status"] == "killed"


def test_it_says_what_is_wrong(api):
    assert api["none"].get("/api/v1/blocks").status_code == 401
    bad_json = api["deploy"].put("/api/v1/blocks/x", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "INVALID_ARGUMENT"
    bad_field = api["deploy"].put("/api/v1/blocks/x", json={"code": "export default 1", "language": "cobol"})
    assert bad_field.status_code == 400 and "language" in bad_field.json()["error"]["message"]
    bad_slug = api["deploy"].put("/api/v1/blocks/Not_A_Slug", json={"code": "export default 1"})
    assert bad_slug.status_code == 400
    missing = api["run"].post("/api/v1/blocks/nothing/runs", json={})
    assert missing.status_code == 404 and missing.json() == {"error": {"code": "NOT_FOUND", "message": "There is no block 'nothing'."}}
    api["deploy"].put("/api/v1/blocks/undeployed", json={"code": HELLO})
    conflict = api["run"].post("/api/v1/blocks/undeployed/runs", json={})
    assert conflict.status_code == 409
    too_big = api["deploy"].put("/api/v1/blocks/big", content=b"x" * (3 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "TOO_LARGE"
    wait_too_long = api["run"].post("/api/v1/blocks/undeployed/runs", json={"wait": 31})
    assert wait_too_long.status_code == 400


def test_it_serves_an_openapi_document(api):
    document = api["none"].get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/api/v1/blocks/{slug}/runs", "/api/v1/runs/{run_id}", "/api/v1/schedules/{schedule_id}"} <= set(document["paths"])
    assert "RunOut" in document["components"]["schemas"]


def test_cant_deploy_with_a_run_token(api):
    refused = api["run"].put("/api/v1/blocks/hello", json={"code": HELLO})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "PERMISSION_DENIED"
    assert "scope" in refused.json()["error"]["message"]
    assert not Block.objects.exists()


def test_cant_reach_another_tenants_blocks_or_runs(api, server):
    api["deploy"].put("/api/v1/blocks/hello", json={"code": HELLO, "deploy": True})
    run_id = api["run"].post("/api/v1/blocks/hello/runs", json={"wait": 20}).json()["id"]
    schedule = api["deploy"].post("/api/v1/blocks/hello/schedules", json={"cron": "0 * * * *"}).json()
    other = api["globex"]
    assert other.get("/api/v1/blocks").json() == []
    for response in (
        other.get("/api/v1/blocks/hello"),
        other.get("/api/v1/blocks/hello/versions"),
        other.post("/api/v1/blocks/hello/runs", json={"wait": 5}),
        other.post("/api/v1/blocks/hello/deploy", json={"version": 1}),
        other.get(f"/api/v1/runs/{run_id}"),
        other.post(f"/api/v1/runs/{run_id}/stop"),
        other.get("/api/v1/blocks/hello/schedules"),
        other.patch(f"/api/v1/schedules/{schedule['id']}", json={"enabled": False}),
        other.delete(f"/api/v1/schedules/{schedule['id']}"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "NOT_FOUND"
    # Globex's own block of the same name is Globex's, and Acme's is untouched.
    other.put("/api/v1/blocks/hello", json={"code": HELLO_V2, "deploy": True})
    assert api["run"].get("/api/v1/blocks/hello").json()["latestVersion"] == 1


def test_cant_use_an_expired_or_revoked_token(server, tokens, run_block):
    record, token = ApiToken.issue(tokens["acme"], name="old", scope="run", expires=timezone.now() - timedelta(seconds=1))
    expired = Api(server, token).get("/api/v1/blocks")
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    record, token = ApiToken.issue(tokens["acme"], name="gone", scope="run")
    assert Api(server, token).get("/api/v1/blocks").status_code == 200
    ApiToken.objects.filter(pk=record.pk).update(revoked=timezone.now())
    revoked = Api(server, token).get("/api/v1/blocks")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    assert Api(server, "sym_made-up").get("/api/v1/blocks").status_code == 401
    record.refresh_from_db()
    assert record.last_used is not None


def test_it_limits_the_rate_per_token(api, tokens):
    PolicyOverride.objects.create(tenant=tokens["acme"], setting="api_rate_per_minute", value="3")
    answers = [api["run"].get("/api/v1/blocks") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert answers[-1].json()["error"]["code"] == "RATE_LIMITED"
    # Another token of the tenant has its own budget.
    assert api["deploy"].get("/api/v1/blocks").status_code == 200


def test_it_answers_429_at_the_tenants_concurrency_limit(api, tokens):
    PolicyOverride.objects.create(tenant=tokens["acme"], setting="concurrent_runs", value="1")
    api["deploy"].put("/api/v1/blocks/slow", json={"code": SLOW, "deploy": True})
    first = api["run"].post("/api/v1/blocks/slow/runs", json={})
    assert first.status_code == 202
    second = api["run"].post("/api/v1/blocks/slow/runs", json={})
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"
    wait_finished(api["run"], first.json()["id"])


def test_it_refuses_runs_of_a_suspended_tenant(api, tokens):
    api["deploy"].put("/api/v1/blocks/hello", json={"code": HELLO, "deploy": True})
    tokens["acme"].is_active = False
    tokens["acme"].save()
    refused = api["run"].post("/api/v1/blocks/hello/runs", json={"wait": 5})
    assert refused.status_code == 403
    assert api["deploy"].put("/api/v1/blocks/hello", json={"code": HELLO_V2}).status_code == 403


def test_createtoken_prints_a_token_that_works(server, acme, run_block, capsys):
    call_command("createtoken", "acme", "--scope", "deploy", "--name", "laptop", "--expires", "30")
    token = capsys.readouterr().out.strip()
    assert token.startswith("sym_") and "\n" not in token
    record = ApiToken.objects.get(name="laptop")
    assert record.digest != token and token not in record.prefix and record.expires > timezone.now() + timedelta(days=29)
    assert Api(server, token).put("/api/v1/blocks/x", json={"code": HELLO}).status_code == 201


# -- HTTP endpoints ------------------------------------------------------------------


def endpoint_block(api, slug, code, public):
    response = api["deploy"].put(f"/api/v1/blocks/{slug}", json={"code": code, "deploy": True, "publicEndpoint": public})
    assert response.status_code == 201, response.text


def test_an_endpoint_answers_get_and_post(api, server):
    endpoint_block(api, "echo", ENDPOINT, public=True)
    base = f"http://127.0.0.1:{server.port}"
    got = httpx.get(f"{base}/b/acme/echo/items?q=7", headers={"x-app": "demo"})
    assert got.status_code == 200, got.text
    assert got.headers["x-answer"] == "42" and got.headers["content-type"].startswith("application/json")
    assert got.json() == {"method": "GET", "path": "/b/acme/echo/items", "query": "7", "body": None,
                          "agent": "demo", "cookie": None, "authorization": None}
    run_id = got.headers["X-Symposium-Run"]
    run = BlockRun.objects.get(pk=run_id)
    assert run.source == "http" and run.block.slug == "echo" and run.version.number == 1

    posted = httpx.post(f"{base}/b/acme/echo/", json={"n": 1})
    assert posted.status_code == 201 and posted.json()["body"] == {"n": 1} and posted.json()["method"] == "POST"


def test_cant_see_platform_cookies_or_tokens_from_an_endpoint(api, server, tokens):
    endpoint_block(api, "echo", ENDPOINT, public=True)
    answer = httpx.get(f"http://127.0.0.1:{server.port}/b/acme/echo/",
                       headers={"Cookie": "sessionid=abc; csrftoken=def; theme=dark",
                                "Authorization": f"Bearer {tokens['run']}", "Connection": "keep-alive"})
    assert answer.json()["cookie"] == "theme=dark"
    assert answer.json()["authorization"] is None


def test_a_private_endpoint_needs_a_run_token(api, server, tokens):
    endpoint_block(api, "private", ENDPOINT, public=False)
    url = f"http://127.0.0.1:{server.port}/b/acme/private/"
    refused = httpx.get(url)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHENTICATED"
    assert httpx.get(url, headers={"Authorization": f"Bearer {tokens['run']}"}).status_code == 200
    # Another tenant's token learns nothing: as if there were no such endpoint.
    assert httpx.get(url, headers={"Authorization": f"Bearer {tokens['globex']}"}).status_code == 404


def test_a_failing_endpoint_answers_500_without_internals(api, server):
    endpoint_block(api, "broken", FAILING_ENDPOINT, public=True)
    answer = httpx.get(f"http://127.0.0.1:{server.port}/b/acme/broken/")
    assert answer.status_code == 500
    assert "secret" not in answer.text and "/srv" not in answer.text and "Error" not in answer.text
    run = BlockRun.objects.get(pk=answer.headers["X-Symposium-Run"])
    assert run.status == "failed" and "secret detail" in run.error  # the owner sees it in the run


def test_an_endpoint_past_its_time_answers_504(api, server, tokens):
    PolicyOverride.objects.create(tenant=tokens["acme"], setting="time_limit_seconds", value="1")
    endpoint_block(api, "sleepy", "export default { fetch: () => new Promise(() => setInterval(() => {}, 100)) };", public=True)
    answer = httpx.get(f"http://127.0.0.1:{server.port}/b/acme/sleepy/")
    assert answer.status_code == 504 and answer.headers["X-Symposium-Run"]


def test_an_endpoint_of_a_suspended_tenant_answers_403(api, server, tokens):
    endpoint_block(api, "echo", ENDPOINT, public=True)
    tokens["acme"].is_active = False
    tokens["acme"].save()
    assert httpx.get(f"http://127.0.0.1:{server.port}/b/acme/echo/").status_code == 403


def test_an_endpoint_refuses_a_body_over_the_profile_limit(api, server, tokens):
    PolicyOverride.objects.create(tenant=tokens["acme"], setting="endpoint_max_body_bytes", value="100")
    endpoint_block(api, "echo", ENDPOINT, public=True)
    answer = httpx.post(f"http://127.0.0.1:{server.port}/b/acme/echo/", content=b"x" * 101)
    assert answer.status_code == 413


def test_cant_set_the_platforms_cookies_from_an_endpoint(api, server):
    code = """export default { fetch() {
      const headers = new Headers();
      headers.append("set-cookie", "sessionid=stolen; Path=/");
      headers.append("set-cookie", "theme=dark; Path=/b/acme/");
      return new Response("<script>alert(1)</script>", { headers: { ...Object.fromEntries([["content-type", "text/html"]]) , "set-cookie": "sessionid=stolen; Path=/" } });
    } };"""
    endpoint_block(api, "cookies", code, public=True)
    answer = httpx.get(f"http://127.0.0.1:{server.port}/b/acme/cookies/")
    assert answer.status_code == 200
    assert "sessionid" not in answer.headers.get("set-cookie", "")
    assert answer.headers["content-security-policy"].startswith("sandbox")


def test_requests_to_one_endpoint_run_at_once(api, server, tokens):
    endpoint_block(api, "slow", "export default { async fetch() { await new Promise((r) => setTimeout(r, 700)); return new Response('ok'); } };", public=True)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.get(f"http://127.0.0.1:{server.port}/b/acme/slow/", timeout=30), range(4)))
    assert [a.text for a in answers] == ["ok"] * 4
    runs = BlockRun.objects.filter(pk__in=[a.headers["X-Symposium-Run"] for a in answers])
    # Each block waits 0.7 s: runs in flight at once started before any of them ended.
    deadline = time.monotonic() + 10
    while runs.filter(finished__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    ordered = sorted(runs, key=lambda r: r.started)
    overlapping = sum(1 for a, b in zip(ordered, ordered[1:]) if b.started < a.finished)
    assert overlapping >= 2, "the requests ran one after another"


def test_an_endpoint_answers_with_the_sites_security_headers_and_no_session(api, server):
    # Endpoints are served without the site's session and authentication middleware
    # (blocks/endpoints.py, EndpointHandler); the headers every page carries remain.
    endpoint_block(api, "echo", ENDPOINT, public=True)
    base = f"http://127.0.0.1:{server.port}"
    answer = httpx.get(f"{base}/b/acme/echo/", headers={"Cookie": "sessionid=abc"})
    assert answer.status_code == 200
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "same-origin"
    assert answer.headers["content-length"] == str(len(answer.content))
    assert "set-cookie" not in answer.headers and "cookie" not in answer.headers.get("vary", "").lower()
    # A block's own X-Frame-Options is kept, as on every page.
    endpoint_block(api, "framed", "export default { fetch: () => new Response('ok', { headers: { 'x-frame-options': 'SAMEORIGIN' } }) };",
                   public=True)
    assert httpx.get(f"{base}/b/acme/framed/").headers["x-frame-options"] == "SAMEORIGIN"
    # Without its trailing slash, an endpoint's address redirects to it, as pages do.
    moved = httpx.get(f"{base}/b/acme/echo")
    assert moved.status_code == 301 and moved.headers["location"] == "/b/acme/echo/"


def test_cant_reach_a_page_of_the_site_through_the_endpoint_handler():
    # The handler without the site's middleware serves block endpoints and nothing
    # else, whatever path reaches it: the admin's login is not served without CSRF.
    from asgiref.testing import ApplicationCommunicator
    from asgiref.sync import async_to_sync

    from blocks.endpoints import EndpointHandler

    async def get(path):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
                 "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        app = ApplicationCommunicator(EndpointHandler(), scope)
        await app.send_input({"type": "http.request", "body": b""})
        start = await app.receive_output(10)
        await app.receive_output(10)
        return start["status"]

    assert async_to_sync(get)("/admin/login/") == 404
    assert async_to_sync(get)("/runner/") == 404


def test_cant_make_the_server_open_a_database_connection_per_request(api, server):
    # Under ASGI each request has a thread of its own for thread-sensitive work; an
    # endpoint's lookup, its run's creation, or the run's later writes (its start, its
    # outcome, its figures) on such a thread opened a new database connection for each
    # request: on PostgreSQL, a new server process a request.
    endpoint_block(api, "echo", ENDPOINT, public=True)
    url = f"http://127.0.0.1:{server.port}/b/acme/echo/"

    def settle(n):
        for _ in range(n):
            answer = httpx.get(url)
            assert answer.status_code == 200
            run_id = answer.headers["X-Symposium-Run"]
            deadline = time.monotonic() + 10
            while BlockRun.objects.get(pk=run_id).cpu_ms is None and time.monotonic() < deadline:
                time.sleep(0.02)

    settle(4)  # the threads that keep connections have made theirs
    assert connections_opened(lambda: settle(8)) <= 2


def connections_opened(work):
    from django.db.backends.signals import connection_created

    opened = []
    receiver = lambda **kwargs: opened.append(kwargs["connection"].alias)  # noqa: E731
    connection_created.connect(receiver)
    try:
        work()
    finally:
        connection_created.disconnect(receiver)
    return len(opened)


def test_cant_make_the_server_open_a_database_connection_per_api_request(api):
    endpoint_block(api, "hello", HELLO, public=False)

    def requests(n):
        for _ in range(n):
            assert api["deploy"].get("/api/v1/blocks/hello").status_code == 200
            assert api["deploy"].get("/api/v1/blocks").status_code == 200

    requests(4)
    assert connections_opened(lambda: requests(8)) <= 2
