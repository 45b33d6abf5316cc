"""The runner page's websocket (BlockRunnerConsumer), driven with Channels'
WebsocketCommunicator through the real ASGI stack (origin check, session auth) on the
event loop of a real in-process Daphne, so that runs started here are real isolates
connecting back to the real broker.

Alice owns "acme", Bob is a member, Victor only a viewer; Mallory owns "globex" and
should have no access to Acme's stuff.
"""

import json
import time

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from console.runner import RUNNER_LIMITS, origin_allowed
from tenants import audit
from tenants.models import AuditLog, BlockRun, Membership
from tenants.ratelimit import reset_limiter

pytestmark = [pytest.mark.django_db(transaction=True)]

WRITES_AND_RETURNS = """
console.log('hello from the block');
console.warn('careful');
await symposium.writeFile('out/report.txt', 'a report');
export default (input) => ({ doubled: input.n * 2 });
"""


@pytest.fixture(autouse=True)
def inline_dispatch(settings):
    # The page relays what the broker reports whichever way a call was dispatched; the
    # RQ path has its own tests (test_broker, test_runs) with a worker of their own.
    settings.SYMPOSIUM_RQ_CAPABILITIES = []


@pytest.fixture(autouse=True)
def fresh_limits():
    reset_limiter()
    yield
    reset_limiter()


@pytest.fixture
def server():
    from isolates.server import local_server

    return local_server()


@pytest.fixture
def tenants(acme, people, make_tenant):
    victor = get_user_model().objects.create_user("victor", "victor@example.org", "victor-password-123")
    Membership.objects.create(tenant=acme, user=victor, role="viewer")
    globex = make_tenant("globex", "Interactive")
    Membership.objects.create(tenant=globex, user=people["mallory"], role="owner")
    return {"acme": acme, "globex": globex, "victor": victor, **people}


def session_cookie(user):
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


class Page:
    """One browser tab's websocket, on the server's event loop."""

    def __init__(self, server, user=None, origin=None, host=None):
        self.server = server
        host = host or f"127.0.0.1:{server.port}"
        headers = [(b"host", host.encode())]
        origin = f"http://{host}" if origin is None else origin
        if origin:
            headers.append((b"origin", origin.encode()))
        if user is not None:
            headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_cookie(user)}".encode()))
        self.headers = headers
        self.communicator = None
        self.frames = []

    def call(self, coro, timeout=60):
        return self.server.call(coro, timeout)

    def connect(self):
        async def connect():
            from symposium.asgi import application

            self.communicator = WebsocketCommunicator(application, "/ws/runner/", headers=self.headers)
            # Daphne puts the listening address in the scope; the consumer starts runs
            # on the run service of that port.
            self.communicator.scope["server"] = ("127.0.0.1", self.server.port)
            return await self.communicator.connect(timeout=10)

        return self.call(connect())

    def send(self, frame):
        async def send():
            await self.communicator.send_to(text_data=json.dumps(frame) if not isinstance(frame, str) else frame)

        self.call(send())

    def receive(self, timeout=10):
        async def receive():
            return await self.communicator.receive_output(timeout)

        message = self.call(receive(), timeout + 5)
        if message["type"] == "websocket.close":
            return {"type": "<closed>", "code": message.get("code")}
        frame = json.loads(message["text"])
        self.frames.append(frame)
        return frame

    def receive_until(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.receive(timeout=max(0.1, deadline - time.monotonic()))
            if predicate(frame):
                return frame
        raise AssertionError(f"no matching frame within {timeout} s; got {[f.get('type') for f in self.frames]}")

    def start(self, tenant, code, input="", name="test.js"):
        self.send({"type": "start", "tenant": tenant, "code": code, "input": input, "name": name})
        return self.receive_until(lambda f: f["type"] in ("accepted", "refused"))

    def finished(self, run_id, timeout=60):
        for frame in self.frames:  # it may have come while waiting for something else
            if frame["type"] == "finished" and frame["run"] == run_id:
                return frame
        return self.receive_until(lambda f: f["type"] == "finished" and f["run"] == run_id, timeout)

    def events(self, run_id, kind=None):
        """The run's events in order, console lines (sent in batches) one by one."""
        events = []
        for frame in self.frames:
            if frame.get("run") != run_id:
                continue
            if frame["type"] == "logs":
                events += [{"type": "event", "event": "log", "run": run_id, **line} for line in frame["lines"]]
            elif frame["type"] == "event":
                events.append(frame)
        return [e for e in events if kind is None or e["event"] == kind]

    def disconnect(self):
        async def disconnect():
            await self.communicator.disconnect()

        self.call(disconnect())


@pytest.fixture
def pages(server):
    opened = []

    def open_page(user=None, **kwargs):
        page = Page(server, user, **kwargs)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        if page.communicator is not None:
            try:
                page.disconnect()
            except Exception:
                pass

    async def stop_all():
        from isolates.runs import service_for_port

        await service_for_port(server.port).stop_all()

    # No run outlives its test (its supervisor would write to the next test's database).
    server.call(stop_all(), 30)


def runner_audit(**filters):
    audit.flush()
    return list(AuditLog.objects.filter(capability="runner", **filters).order_by("id"))


# -- the handshake ------------------------------------------------------------------------


def test_it_greets_a_logged_in_user(pages, tenants):
    page = pages(tenants["alice"])
    assert page.connect() == (True, None)
    ready = page.receive()
    assert ready["type"] == "ready" and ready["user"] == "alice"
    assert ready["limits"]["code_bytes"] == RUNNER_LIMITS["code_bytes"]


def test_cant_use_the_runner_anonymously(pages, tenants):
    page = pages(None)
    page.connect()
    error = page.receive()
    assert error == {"type": "error", "code": "UNAUTHENTICATED", "message": "Log in to run blocks."}
    assert page.receive() == {"type": "<closed>", "code": 4401}


def test_cant_open_the_websocket_from_another_site(pages, tenants):
    # Cross-site websocket hijacking: a page elsewhere opening our websocket with the
    # user's cookie. The handshake is refused before the consumer runs.
    for origin in ("http://evil.example", "https://127.0.0.1.evil.example", "null", ""):
        page = pages(tenants["alice"], origin=origin)
        connected, code = page.connect()
        assert not connected, origin
        page.communicator = None


def test_cant_open_the_websocket_from_another_port_of_the_same_host(pages, tenants, server):
    # Another port is another origin (another program on the machine, another site).
    page = pages(tenants["alice"], origin=f"http://127.0.0.1:{server.port + 1}")
    assert page.connect()[0] is False
    page.communicator = None


def test_it_checks_origins_like_the_csrf_check(settings):
    settings.ALLOWED_HOSTS = ["symposium.example", "127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example"]
    assert origin_allowed("https://symposium.example", "symposium.example")
    assert origin_allowed("https://symposium.example", "symposium.example:443")
    assert origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert origin_allowed("https://app.example", "symposium.example")
    assert not origin_allowed("https://symposium.example:8443", "symposium.example")
    assert not origin_allowed("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not origin_allowed("https://other.example", "other.example")  # not an allowed host
    assert not origin_allowed("ftp://symposium.example", "symposium.example")
    assert not origin_allowed("https://symposium.example", "")


# -- membership ---------------------------------------------------------------------------


def test_cant_start_a_run_for_a_tenant_one_is_not_a_member_of(pages, tenants):
    page = pages(tenants["mallory"])
    page.connect()
    page.receive()
    # The page only offers Mallory's own tenant; she edits the frame to name Acme.
    refused = page.start("acme", "console.log('pwned')")
    assert refused["type"] == "refused" and refused["code"] == "PERMISSION_DENIED"
    assert refused["message"] == "You are not a member of the tenant 'acme'."
    assert not BlockRun.objects.filter(tenant=tenants["acme"]).exists()
    [row] = runner_audit()
    assert (row.tenant_id, row.tenant_slug, row.user_id) == (tenants["acme"].pk, "acme", tenants["mallory"].pk)
    assert (row.operation, row.outcome, row.error_code) == ("start", "denied", "PERMISSION_DENIED")


def test_cant_start_a_run_for_a_tenant_that_does_not_exist(pages, tenants):
    page = pages(tenants["mallory"])
    page.connect()
    page.receive()
    refused = page.start("no-such-tenant", "1")
    # The same answer as for a tenant that exists: no probing for names.
    assert refused["message"] == "You are not a member of the tenant 'no-such-tenant'."
    [row] = runner_audit()
    assert row.tenant_id is None and row.tenant_slug == "no-such-tenant"


def test_cant_start_a_run_as_a_viewer(pages, tenants):
    page = pages(tenants["victor"])
    page.connect()
    page.receive()
    refused = page.start("acme", "1")
    assert refused["code"] == "PERMISSION_DENIED"
    assert "viewer" in refused["message"]
    assert not BlockRun.objects.exists()
    assert [r.operation for r in runner_audit(user=tenants["victor"])] == ["start"]


def test_it_refuses_a_run_the_run_service_refuses(pages, tenants):
    acme = tenants["acme"]
    acme.is_active = False
    acme.save()
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    refused = page.start("acme", "1")
    assert (refused["code"], refused["message"]) == ("PERMISSION_DENIED", "This tenant is suspended; it can start no run.")
    [row] = runner_audit()
    assert (row.operation, row.tenant_slug, row.error_code) == ("start", "acme", "PERMISSION_DENIED")


def test_it_validates_the_input_on_the_server(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    refused = page.start("acme", "1", input='{"n": 1,,}')
    assert refused["code"] == "INVALID_ARGUMENT"
    assert refused["message"].startswith("The input is not valid JSON") and "line 1, column 9" in refused["message"]
    assert page.start("acme", "1", input="NaN")["message"] == "The input is not valid JSON: NaN is not JSON."
    assert page.start("acme", "1", input="[" * 100000 + "]" * 100000)["code"] == "INVALID_ARGUMENT"
    too_big = '"' + "x" * RUNNER_LIMITS["input_bytes"] + '"'
    assert "larger than" in page.start("acme", "1", input=too_big)["message"]
    assert not BlockRun.objects.exists()


def test_it_refuses_requests_it_does_not_know(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    page.send({"type": "websocket.close"})  # a type must never pick a method by name
    assert page.receive()["message"] == "Unknown request; expected start, stop or watch."
    page.send({"type": ["start"], "tenant": "acme", "code": "1"})
    assert page.receive()["message"] == "Unknown request; expected start, stop or watch."
    page.send("[1, 2]")
    assert page.receive()["message"] == "Unknown request; expected start, stop or watch."
    page.send("not json")
    assert page.receive()["message"] == "The request is not JSON."
    page.send({"type": "start", "tenant": "acme", "code": "x" * (RUNNER_LIMITS["frame_bytes"] + 1)})
    assert page.receive()["message"] == "A request may be at most 2 MB."
    page.send({"type": "start", "tenant": "acme", "code": "   "})
    assert page.receive()["message"] == "There is no code to run."


def test_it_ignores_channel_messages_it_does_not_handle(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    run_id = page.start("acme", "await new Promise(r => setTimeout(r, 300)); export default () => 'still here';")["run"]

    async def publish():
        from channels.layers import get_channel_layer

        from isolates.runevents import run_group

        # Types that would name methods of the consumer under Channels' default dispatch.
        for kind in ("send.finished", "run.stop", "disconnect"):
            await get_channel_layer().group_send(run_group(run_id), {"type": kind, "code": 1000})

    page.call(publish())
    assert page.finished(run_id)["result"] == "still here"


def test_it_stops_obeying_a_page_whose_session_ended(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    from django.contrib.sessions.models import Session

    Session.objects.all().delete()  # logged out in another tab
    page.send({"type": "start", "tenant": "acme", "code": "1"})
    assert page.receive()["code"] == "UNAUTHENTICATED"
    assert page.receive() == {"type": "<closed>", "code": 4401}
    assert not BlockRun.objects.exists()


# -- runs ---------------------------------------------------------------------------------


def test_it_runs_a_block_and_relays_everything_it_does(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    accepted = page.start("acme", WRITES_AND_RETURNS, input='{"n": 21}', name="report.js")
    assert accepted["type"] == "accepted" and accepted["tenant"] == "acme"
    run_id = accepted["run"]
    finished = page.finished(run_id)

    assert finished["status"] == "succeeded"
    assert finished["result"] == {"doubled": 42}
    assert finished["console_complete"] is True
    assert finished["calls"] == 1 and finished["duration"] > 0 and finished["bytes_out"] > 0
    assert finished["files"] == [{"path": "out/report.txt", "url": "/runner/acme/files/out/report.txt"}]
    assert [e["event"] for e in page.events(run_id) if e["event"] != "log"] == ["started", "call", "done"]
    logs = page.events(run_id, "log")
    assert [(e["level"], e["text"]) for e in logs] == [("log", "hello from the block"), ("warn", "careful")]
    assert all(isinstance(e["t"], (int, float)) for e in logs)
    [call] = page.events(run_id, "call")
    assert (call["op"], call["target"], call["outcome"]) == ("writeFile", "out/report.txt", "allowed")
    assert call["download"] == "/runner/acme/files/out/report.txt" and call["ms"] > 0

    run = BlockRun.objects.get(pk=run_id)
    assert (run.source, run.user, run.name, run.input) == ("runner", tenants["alice"], "report.js", {"n": 21})
    assert run.console == "hello from the block\n[warn] careful"


def test_it_shows_a_denied_call_and_the_blocks_error_code(pages, tenants, make_tenant):
    basic = make_tenant("basic-co", "Basic")
    Membership.objects.create(tenant=basic, user=tenants["alice"], role="owner")
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    run_id = page.start("basic-co", "await symposium.canvas.createCanvas(800, 600);")["run"]
    finished = page.finished(run_id)
    assert (finished["status"], finished["error_code"]) == ("failed", "PERMISSION_DENIED")
    assert finished["error"] == "The Basic profile does not allow canvases."
    [call] = page.events(run_id, "call")
    assert (call["op"], call["outcome"], call["code"]) == ("canvas.createCanvas", "denied", "PERMISSION_DENIED")


def test_it_sends_exported_images_inline(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    code = """
    const c = await symposium.canvas.createCanvas(40, 30);
    await symposium.canvas.draw(c.canvasId, [{ type: 'fillRect', x: 0, y: 0, width: 40, height: 30, style: '#ff0000' }]);
    await symposium.canvas.exportImage(c.canvasId, 'png');
    """
    run_id = page.start("acme", code)["run"]
    assert page.finished(run_id)["status"] == "succeeded"
    [image] = page.events(run_id, "image")
    assert (image["mime"], image["width"], image["height"]) == ("image/png", 40, 30)
    import base64

    assert base64.b64decode(image["data"]).startswith(b"\x89PNG")


def test_it_stops_a_runaway_block(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    run_id = page.start("acme", "console.log('spinning'); while (true) {}")["run"]
    page.receive_until(lambda f: f["type"] == "logs")
    started = time.monotonic()
    page.send({"type": "stop", "run": run_id})
    finished = page.finished(run_id)
    assert time.monotonic() - started < 5
    assert finished["status"] == "killed" and finished["error_code"] == "KILLED"
    assert finished["error"] == "Stopped by alice from the runner page."
    run = BlockRun.objects.get(pk=run_id)
    assert run.status == "killed" and run.finished is not None and run.console == "spinning"


def test_cant_stop_or_watch_another_tenants_run(pages, tenants):
    alice = pages(tenants["alice"])
    alice.connect()
    alice.receive()
    run_id = alice.start("acme", "while (true) {}")["run"]
    mallory = pages(tenants["mallory"])
    mallory.connect()
    mallory.receive()
    for request in ("stop", "watch"):
        mallory.send({"type": request, "run": run_id})
        refused = mallory.receive()
        # Said like a run that does not exist: a run id must not reveal its tenant.
        assert (refused["type"], refused["code"], refused["message"]) == ("refused", "NOT_FOUND", "There is no such run.")
    assert BlockRun.objects.get(pk=run_id).status in ("queued", "running")
    rows = runner_audit(user=tenants["mallory"])
    assert [(r.operation, r.tenant_slug, r.run_id) for r in rows] == [("stop", "acme", run_id), ("watch", "acme", run_id)]
    alice.send({"type": "stop", "run": run_id})
    assert alice.finished(run_id)["status"] == "killed"


def test_cant_stop_another_members_run_unless_owner(pages, tenants):
    bob = pages(tenants["bob"])
    bob.connect()
    bob.receive()
    alice = pages(tenants["alice"])
    alice.connect()
    alice.receive()
    alices_run = alice.start("acme", "while (true) {}")["run"]
    bob.send({"type": "stop", "run": alices_run})
    assert bob.receive()["message"] == "Only the tenant's owners can stop a run someone else started."
    bobs_run = bob.start("acme", "while (true) {}")["run"]
    alice.send({"type": "stop", "run": bobs_run})  # Alice owns Acme
    assert alice.receive_until(lambda f: f["type"] == "info")["message"] == "Stopping the run."
    assert bob.finished(bobs_run)["status"] == "killed"
    alice.send({"type": "stop", "run": alices_run})
    assert alice.finished(alices_run)["status"] == "killed"


def test_it_lets_a_viewer_watch_a_run(pages, tenants):
    alice = pages(tenants["alice"])
    alice.connect()
    alice.receive()
    code = "console.log('before'); await new Promise(r => setTimeout(r, 800)); console.log('after'); export default () => 'done';"
    run_id = alice.start("acme", code)["run"]
    alice.receive_until(lambda f: f["type"] == "logs")
    victor = pages(tenants["victor"])
    victor.connect()
    victor.receive()
    victor.send({"type": "watch", "run": run_id})
    snapshot = victor.receive_until(lambda f: f["type"] == "snapshot")
    assert snapshot["detail"]["status"] == "running" and snapshot["detail"]["code"] == code
    finished = victor.finished(run_id)
    assert finished["status"] == "succeeded" and finished["result"] == "done"
    # Victor joined halfway, so the page is handed the stored console.
    assert finished["console_complete"] is False and finished["console"] == "before\nafter"
    victor.send({"type": "stop", "run": run_id})
    assert "viewer" in victor.receive()["message"]


def test_it_runs_two_tabs_at_once(pages, tenants):
    first, second = pages(tenants["alice"]), pages(tenants["alice"])
    for page in (first, second):
        page.connect()
        page.receive()
    code = "await new Promise(r => setTimeout(r, 300)); export default (input) => input.tab;"
    one = first.start("acme", code, input='{"tab": 1}')["run"]
    two = second.start("acme", code, input='{"tab": 2}')["run"]
    assert first.finished(one)["result"] == 1
    assert second.finished(two)["result"] == 2
    # Each tab hears only about its own run.
    assert {f["run"] for f in first.frames if "run" in f} == {one}
    assert {f["run"] for f in second.frames if "run" in f} == {two}
    runs = BlockRun.objects.filter(pk__in=[one, two])
    started = sorted(r.started for r in runs)
    finished = sorted(r.finished for r in runs)
    assert started[1] < finished[0], "the two runs overlapped in time"


def test_it_limits_the_runs_one_page_has_going(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    runs = [page.start("acme", "while (true) {}")["run"] for _ in range(RUNNER_LIMITS["runs_per_connection"])]
    refused = page.start("acme", "while (true) {}")
    assert refused["code"] == "RATE_LIMITED" and "already has 4 runs going" in refused["message"]
    for run_id in runs:
        page.send({"type": "stop", "run": run_id})
    for run_id in runs:
        page.finished(run_id)


def test_it_keeps_the_run_going_when_the_page_goes_away(pages, tenants, server, settings):
    settings.SYMPOSIUM_KILL_RUNS_ON_DISCONNECT = False
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    code = "console.log('working'); await new Promise(r => setTimeout(r, 700)); export default () => 'finished alone';"
    run_id = page.start("acme", code)["run"]
    page.receive_until(lambda f: f["type"] == "logs")
    page.disconnect()
    page.communicator = None
    run = wait_for_run(server, run_id)
    assert run.status == "succeeded" and run.result == "finished alone"
    assert run.console == "working" and run.finished is not None and run.calls == 0


def test_it_kills_the_run_when_the_page_goes_away_if_set_to(pages, tenants, server, settings):
    settings.SYMPOSIUM_KILL_RUNS_ON_DISCONNECT = True
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    run_id = page.start("acme", "console.log('spinning'); while (true) {}")["run"]
    page.receive_until(lambda f: f["type"] == "logs")
    page.disconnect()
    page.communicator = None
    run = wait_for_run(server, run_id)
    assert (run.status, run.error_code) == ("killed", "KILLED")
    assert run.error == "Stopped because the page that started it was closed."
    assert run.console == "spinning" and run.finished is not None


def test_it_stays_responsive_when_a_block_prints_10_mb(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    code = "const chunk = 'x'.repeat(1024 * 1024); for (let i = 0; i < 10; i++) console.log(chunk); export default () => 'printed';"
    started = time.monotonic()
    run_id = page.start("acme", code)["run"]
    finished = page.finished(run_id, timeout=60)
    elapsed = time.monotonic() - started
    assert finished["status"] == "succeeded" and finished["console_truncated"] is True
    logs = page.events(run_id, "log")
    cap = tenants["acme"].profile.console_output_cap
    # The cap (1 MB for Interactive) bounds what reaches the page, not the 10 MB printed.
    assert sum(len(e["text"]) + 1 for e in logs) < cap + 4096
    assert logs[-1]["text"].startswith("Console output reached this tenant's cap of 1048576 bytes")
    assert elapsed < 10


def test_it_relays_a_block_printing_ten_thousand_lines(pages, tenants):
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    code = "const line = 'x'.repeat(1023); for (let i = 0; i < 10240; i++) console.log(line); export default () => 'printed';"
    started = time.monotonic()
    run_id = page.start("acme", code)["run"]
    finished = page.finished(run_id, timeout=60)
    elapsed = time.monotonic() - started
    assert finished["status"] == "succeeded" and finished["console_truncated"] is True
    logs = page.events(run_id, "log")
    # What the page did not get live (the channel layer drops events for a reader that
    # falls behind) it gets with the finished record: either way it has the console.
    stored = BlockRun.objects.get(pk=run_id).console
    if finished["console_complete"]:
        assert "\n".join(e["text"] for e in logs[:-1]) == stored
    else:
        assert finished["console"] == stored
    assert len(stored) <= tenants["acme"].profile.console_output_cap
    assert elapsed < 20
    print(f"\n10240 lines printed: {len(logs)} console events relayed, finished in {elapsed:.2f} s")


def wait_for_run(server, run_id, timeout=30):
    async def wait():
        from isolates.runs import service_for_port

        return await service_for_port(server.port).wait(run_id)

    run = server.call(wait(), timeout)
    deadline = time.monotonic() + timeout
    while run.status not in BlockRun.FINISHED and time.monotonic() < deadline:
        time.sleep(0.05)
        run.refresh_from_db()
    return run


# -- saved blocks ---------------------------------------------------------------------------


def test_a_run_of_an_open_block_records_the_block_and_the_version_it_ran(pages, tenants):
    from blocks.service import save_block

    v1 = "export default () => 'one';\n"
    block, _, _ = save_block(tenants["acme"], "hello", code=v1, user=tenants["alice"])
    save_block(tenants["acme"], "hello", code="export default () => 'two';\n", user=tenants["alice"])
    page = pages(tenants["bob"])
    page.connect()
    page.receive()
    # The code of version 1, run with the block open: a run of hello@1.
    page.send({"type": "start", "tenant": "acme", "code": v1, "input": "", "name": "ignored.js", "block": "hello"})
    saved = page.receive_until(lambda f: f["type"] in ("accepted", "refused"))
    assert page.finished(saved["run"])["result"] == "one"
    # Edited code not saved yet: a run of the block, of no version.
    page.send({"type": "start", "tenant": "acme", "code": "export default () => 'draft';\n", "block": "hello"})
    draft = page.receive_until(lambda f: f["type"] in ("accepted", "refused"))
    assert page.finished(draft["run"])["result"] == "draft"
    runs = {r.pk: r for r in BlockRun.objects.filter(tenant=tenants["acme"])}
    assert (runs[saved["run"]].block, runs[saved["run"]].version.number, runs[saved["run"]].name) == (block, 1, "hello.js")
    assert (runs[draft["run"]].block, runs[draft["run"]].version) == (block, None)


def test_cant_run_as_a_block_of_another_tenant(pages, tenants):
    from blocks.service import save_block

    save_block(tenants["globex"], "secret", code="export default () => 1;\n", user=tenants["mallory"])
    page = pages(tenants["alice"])
    page.connect()
    page.receive()
    page.send({"type": "start", "tenant": "acme", "code": "export default () => 1;\n", "block": "secret"})
    refused = page.receive_until(lambda f: f["type"] in ("accepted", "refused"))
    assert (refused["type"], refused["code"], refused["message"]) == ("refused", "NOT_FOUND", "This tenant has no such block.")
    assert not BlockRun.objects.exists()
