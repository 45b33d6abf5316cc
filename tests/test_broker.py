"""The broker, driven over a websocket with Channels' WebsocketCommunicator.

The test plays the isolate: it sends the frames the runtime would send (and some it
never would) and checks what comes back, what the run records and what is audited.
"""

import asyncio
import base64
import json
import secrets
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from isolates.session import token_hash
from symposium.asgi import application
from tenants import audit
from tenants.models import AuditLog, BlockRun, PolicyOverride, TenantSecret
from tenants.ratelimit import reset_limiter

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def inline_dispatch(settings):
    # Calls run inline unless a test asks for RQ (and then runs a worker itself).
    settings.SYMPOSIUM_RQ_CAPABILITIES = []


@pytest.fixture(autouse=True)
def own_channel_layer():
    """A channel layer of this test's event loop: channels-redis refuses two loops
    receiving on one layer, and a live server an earlier test started (in a thread, with
    a loop of its own) may still have consumers receiving on the process's layer."""
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

    saved = channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    yield
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    if saved is not None:
        channel_layers.backends[DEFAULT_CHANNEL_LAYER] = saved


@pytest.fixture(autouse=True)
def fresh_limits():
    reset_limiter()
    from tenants.ratelimit import limiter

    limiter().reset()
    yield
    reset_limiter()


def make_run(tenant, code="export default () => 1"):
    token = secrets.token_urlsafe(32)
    run = BlockRun.objects.create(tenant=tenant, code=code, name="test.js", token_hash=token_hash(token))
    return run, token


class Isolate:
    """A fake isolate: a websocket to the broker speaking the runtime's frames."""

    def __init__(self, token):
        self.token = token
        self.ws = WebsocketCommunicator(application, "/ws/isolate/")
        self.next_id = 0

    async def __aenter__(self):
        connected, _ = await self.ws.connect()
        assert connected
        return self

    async def __aexit__(self, *exc):
        await self.ws.disconnect()

    async def hello(self):
        await self.ws.send_to(text_data=json.dumps({"type": "hello", "token": self.token}))
        return json.loads(await self.ws.receive_from(timeout=5))

    async def call(self, op, args, **extra):
        self.next_id += 1
        await self.ws.send_to(text_data=json.dumps({"type": "call", "id": self.next_id, "op": op, "args": args, **extra}))
        return json.loads(await self.ws.receive_from(timeout=10))


async def audit_rows(**filters):
    await database_sync_to_async(audit.flush)()
    return await database_sync_to_async(lambda: list(AuditLog.objects.filter(**filters).order_by("id")))()


async def test_it_binds_the_connection_to_its_run_and_hands_over_the_block(acme):
    secret = TenantSecret(tenant=acme, name="API_KEY")
    secret.value = "key-123"
    await database_sync_to_async(secret.save)()
    run, token = await database_sync_to_async(make_run)(acme, "export default (x) => x")
    async with Isolate(token) as isolate:
        start = await isolate.hello()
    assert start["type"] == "start"
    assert start["code"] == "export default (x) => x"
    assert start["env"] == {"API_KEY": "key-123"}
    assert start["consoleCap"] == acme.profile.console_output_cap
    run = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    assert run.status == "running" and run.token_used


async def test_cant_use_a_token_twice_or_guess_one(acme):
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as first:
        await first.hello()
        for forged in (token, "guessed-token", token + "x"):
            second = WebsocketCommunicator(application, "/ws/isolate/")
            await second.connect()
            await second.send_to(text_data=json.dumps({"type": "hello", "token": forged}))
            closed = await second.receive_output(timeout=5)
            assert closed == {"type": "websocket.close", "code": 4403}
    rows = await audit_rows(operation="hello", outcome="denied")
    assert len(rows) == 3


def make_service_run(tenant, code="export default () => 1"):
    """A run as the run service makes it: created claimed, and prepared in this process."""
    from isolates.runs import create_run

    token = secrets.token_urlsafe(32)
    run, _ = create_run(tenant, code, token=token, server="test:1-a")
    return run, token


def test_a_run_is_created_in_two_queries_and_refused_at_the_tenants_limit(acme):
    """The tenant's is_active, then the insert that counts the runs in progress itself; a
    refusal loses nothing and names the count."""
    import time

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from isolates.runs import RunRefused, create_run
    from isolates.session import forget_prepared, read_tenant

    PolicyOverride.objects.create(tenant=acme, setting="concurrent_runs", value="2")
    context = (read_tenant(acme.pk), time.monotonic())
    made = []
    with CaptureQueriesContext(connection) as queries:
        made.append(create_run(acme, "export default () => 1", token="one", server="test:1-a", context=context)[0])
    statements = [q["sql"] for q in queries if q["sql"].split()[0] not in ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")]
    assert len(statements) == 2, statements
    made.append(create_run(acme, "export default (x) => x", input={"a": [1, "é"]}, source="api", name="b.js",
                           token="two", server="test:1-a", context=context)[0])
    with pytest.raises(RunRefused) as refused:
        create_run(acme, "export default () => 3", token="three", server="test:1-a", context=context)
    assert refused.value.code == "RATE_LIMITED" and "already has 2 runs in progress" in refused.value.message
    rows = {row.pk: row for row in BlockRun.objects.filter(tenant=acme)}
    assert sorted(rows) == sorted(run.pk for run in made)
    second = rows[made[1].pk]
    assert (second.status, second.token_used, second.input, second.source, second.name, second.code) == (
        "queued", True, {"a": [1, "é"]}, "api", "b.js", "export default (x) => x")
    assert second.token_hash == token_hash("two") and second.created is not None
    BlockRun.objects.filter(pk=made[0].pk).update(status="succeeded")
    made.append(create_run(acme, "export default () => 4", token="four", server="test:1-a", context=context)[0])
    assert BlockRun.objects.filter(tenant=acme).count() == 3
    for run in made:
        forget_prepared(run)


async def test_it_claims_a_run_of_this_process_in_memory_and_records_its_start(acme):
    run, token = await database_sync_to_async(make_service_run)(acme, "export default () => 2")
    row = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    assert row.token_used and row.status == "queued"  # created claimed: no other hello can have it
    async with Isolate(token) as isolate:
        start = await isolate.hello()
        assert start["type"] == "start" and start["code"] == "export default () => 2"
        await isolate.ws.send_to(text_data=json.dumps({"type": "done", "ok": True, "result": 2}))
        await asyncio.sleep(0.5)
    row = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    # The start, written off the start's path, is in the row before the outcome.
    assert row.status == "succeeded" and row.result == 2
    assert row.started is not None and row.started <= row.finished


async def test_cant_claim_a_run_of_this_process_twice_or_from_another(acme):
    from isolates import session as sessions

    run, token = await database_sync_to_async(make_service_run)(acme)
    other, other_token = await database_sync_to_async(make_service_run)(acme)
    # Another process's broker has no prepared entry: the database refuses its claim too.
    sessions._prepared.pop(token_hash(other_token))
    async with Isolate(token) as first:
        assert (await first.hello())["type"] == "start"
        for forged in (token, other_token):
            second = WebsocketCommunicator(application, "/ws/isolate/")
            await second.connect()
            await second.send_to(text_data=json.dumps({"type": "hello", "token": forged}))
            assert await second.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
    row = await database_sync_to_async(BlockRun.objects.get)(pk=other.pk)
    assert row.status == "queued" and row.started is None


async def test_cant_start_a_block_whose_run_was_stopped_before_its_isolate_said_hello(acme):
    run, token = await database_sync_to_async(make_service_run)(acme)
    # Stopped from another server process (the admin, say) before the isolate's hello.
    await database_sync_to_async(BlockRun.objects.filter(pk=run.pk).update)(status="killed", error_code="KILLED")
    async with Isolate(token) as isolate:
        await isolate.ws.send_to(text_data=json.dumps({"type": "hello", "token": token}))
        frames = []
        while (output := await isolate.ws.receive_output(timeout=5))["type"] == "websocket.send":
            frames.append(json.loads(output["text"])["type"])
        # The stop comes before the start or right after it (its block is not started).
        assert frames in (["stop"], ["start", "stop"]) and output == {"type": "websocket.close"}
    row = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    assert row.status == "killed" and row.started is None


async def waiting_connection(key):
    ws = WebsocketCommunicator(application, "/ws/isolate/")
    assert (await ws.connect())[0]
    await ws.send_to(text_data=json.dumps({"type": "wait", "key": key}))
    await asyncio.sleep(0.1)  # the frame is handled
    return ws


async def test_it_starts_a_run_bound_to_its_isolates_waiting_connection(acme):
    from isolates import waiting

    run, token = await database_sync_to_async(make_service_run)(acme, "export default () => 3")
    key = secrets.token_urlsafe(24)
    waiting.expect(key)  # as the pool does at spawn
    ws = await waiting_connection(key)
    bind = waiting.take(key)
    assert bind is not None and waiting.take(key) is None  # bound once
    await bind(token)
    start = json.loads(await ws.receive_from(timeout=5))
    assert start["type"] == "start" and start["code"] == "export default () => 3"
    await ws.send_to(text_data=json.dumps({"type": "done", "ok": True, "result": 3}))
    await asyncio.sleep(0.5)
    await ws.disconnect()
    row = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    assert row.status == "succeeded" and row.result == 3 and row.started is not None


async def test_cant_wait_with_a_key_the_pool_did_not_issue_or_another_connection_holds(acme):
    from isolates import waiting

    # A key the pool never issued parks nothing: the pool has nothing to bind.
    made_up = secrets.token_urlsafe(24)
    stranger = await waiting_connection(made_up)
    assert made_up not in waiting._waiting and waiting.take(made_up) is None
    # A second connection with an issued key does not take it from the first one.
    key = secrets.token_urlsafe(24)
    waiting.expect(key)
    first = await waiting_connection(key)
    second = await waiting_connection(key)
    run, token = await database_sync_to_async(make_service_run)(acme)
    await waiting.take(key)(token)
    assert json.loads(await first.receive_from(timeout=5))["type"] == "start"
    assert await second.receive_nothing(timeout=0.3)
    # Neither is closed for it: such a connection can still say hello with a token.
    other, other_token = await database_sync_to_async(make_service_run)(acme)
    await stranger.send_to(text_data=json.dumps({"type": "hello", "token": other_token}))
    assert json.loads(await stranger.receive_from(timeout=5))["type"] == "start"
    for ws in (stranger, first, second):
        await ws.disconnect()


async def test_a_waiting_connection_that_closes_binds_nothing(acme):
    from isolates import waiting

    key = secrets.token_urlsafe(24)
    waiting.expect(key)
    ws = await waiting_connection(key)
    await ws.disconnect()
    await asyncio.sleep(0.1)
    # The pool then assigns the isolate its run on stdin instead.
    assert waiting.take(key) is None


async def test_it_answers_file_calls_inline(acme, settings):
    settings.SYMPOSIUM_RQ_CAPABILITIES = []
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        written = await isolate.call("writeFile", {"path": "output/result.txt", "data": "Hello World"})
        assert written["ok"] is True, written
        read = await isolate.call("readFile", {"path": "output/result.txt"})
        assert read["ok"] is True and read["envelope"]["data"] == "Hello World"
        binary = await isolate.call("writeFile", {"path": "b.bin2", "data": {"$bytes": "AAEC/w=="}})
        assert binary["ok"] is True
        back = await isolate.call("readFile", {"path": "b.bin2", "encoding": "binary"})
        assert back["envelope"]["data"] == {"$bytes": "AAEC/w=="}
    assert (acme.storage_root() / "output/result.txt").read_text() == "Hello World"
    rows = await audit_rows(run_id=run.id)
    assert [(r.operation, r.target, r.outcome) for r in rows] == [
        ("writeFile", "output/result.txt", "allowed"),
        ("readFile", "output/result.txt", "allowed"),
        ("writeFile", "b.bin2", "allowed"),
        ("readFile", "b.bin2", "allowed"),
    ]


async def test_it_denies_a_basic_tenants_write_and_audits_it(make_tenant):
    basic = await database_sync_to_async(make_tenant)("basic-co", "Basic")
    run, token = await database_sync_to_async(make_run)(basic)
    async with Isolate(token) as isolate:
        await isolate.hello()
        reply = await isolate.call("writeFile", {"path": "output/result.txt", "data": "Hello World"})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "PERMISSION_DENIED"
    assert reply["error"]["capability"] == "files"
    assert "read-only" in reply["error"]["message"]
    assert not (basic.storage_root() / "output").exists()
    [row] = await audit_rows(run_id=run.id)
    assert (row.operation, row.outcome, row.error_code, row.tenant_slug) == ("writeFile", "denied", "PERMISSION_DENIED", "basic-co")


async def test_cant_claim_another_tenant_or_run_in_a_call(acme, make_tenant):
    other = await database_sync_to_async(make_tenant)("globex", "Advanced")
    (other.storage_root() / "secret.txt").write_text("globex's secret")
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        for field in ("tenant", "tenantId", "run", "profile"):
            reply = await isolate.call("readFile", {"path": "secret.txt", field: "globex"})
            assert reply["error"]["code"] == "INVALID_ARGUMENT", reply
            assert "own run" in reply["error"]["message"]
        # A frame with an extra top-level field is not a call the runtime makes.
        await isolate.ws.send_to(text_data=json.dumps({"type": "call", "id": 9, "op": "readFile", "args": {"path": "secret.txt"}, "tenant": "globex"}))
        stop = json.loads(await isolate.ws.receive_from(timeout=5))
    assert stop["type"] == "stop" and "unexpected fields: tenant" in stop["reason"]
    run = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    assert run.status == "failed" and run.error_code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("op", ["__init__", "__class__", "os.system", "execute_operation", "readfile", "network", "", 42, None])
async def test_it_refuses_operations_not_on_the_allow_list(acme, op):
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        reply = await isolate.call(op, {})
    assert reply["ok"] is False and reply["error"]["code"] == "INVALID_ARGUMENT"
    assert "Unknown operation" in reply["error"]["message"]


@pytest.mark.parametrize("frame,reason", [
    ("{not json", "not valid JSON"),
    (json.dumps({"type": "exec", "cmd": "ls"}), "unknown type"),
    (json.dumps([1, 2, 3]), "unknown type"),
])
async def test_it_ends_the_run_on_a_forged_frame(acme, frame, reason):
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        await isolate.ws.send_to(text_data=frame)
        stop = json.loads(await isolate.ws.receive_from(timeout=5))
        closed = await isolate.ws.receive_output(timeout=5)
    assert stop["type"] == "stop" and reason in stop["reason"]
    assert closed["type"] == "websocket.close"
    run = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    assert run.status == "failed" and reason in run.error
    rows = await audit_rows(run_id=run.id, capability="broker")
    assert rows and rows[0].outcome == "denied"


async def test_it_refuses_a_frame_over_the_limit(acme):
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        huge = json.dumps({"type": "call", "id": 1, "op": "writeFile", "args": {"path": "a", "data": "x" * (9 * 1024 * 1024)}})
        await isolate.ws.send_to(text_data=huge)
        stop = json.loads(await isolate.ws.receive_from(timeout=5))
    assert stop["type"] == "stop" and "the limit is" in stop["reason"]
    assert not (acme.storage_root() / "a").exists()


async def test_it_rate_limits_with_retry_after(acme):
    await database_sync_to_async(PolicyOverride.objects.create)(tenant=acme, setting="files_rate_per_minute", value="3")
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        replies = [await isolate.call("fileExists", {"path": "x"}) for _ in range(4)]
    assert [r["ok"] for r in replies] == [True, True, True, False]
    error = replies[-1]["error"]
    assert error["code"] == "RATE_LIMITED" and 19 < error["retryAfter"] <= 20
    assert "3 files calls per minute" in error["message"]


async def test_it_refuses_calls_of_a_suspended_tenant(acme):
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        assert (await isolate.call("fileExists", {"path": "x"}))["ok"]
        acme.is_active = False
        await database_sync_to_async(acme.save)()
        await asyncio.sleep(1.1)  # the broker re-reads the tenant at most once a second
        reply = await isolate.call("fileExists", {"path": "x"})
    assert reply["error"]["code"] == "PERMISSION_DENIED" and "suspended" in reply["error"]["message"]


async def test_it_records_console_output_up_to_the_cap(acme):
    await database_sync_to_async(PolicyOverride.objects.create)(tenant=acme, setting="console_output_cap", value="2048")
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        for i in range(100):
            await isolate.ws.send_to(text_data=json.dumps({"type": "log", "level": "info", "text": f"line {i} " + "x" * 50, "t": 0}))
        await isolate.ws.send_to(text_data=json.dumps({"type": "done", "ok": True, "result": {"n": 1}}))
        await asyncio.sleep(0.3)
    run = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    assert run.status == "succeeded" and run.result == {"n": 1}
    assert run.console_truncated and len(run.console.encode()) <= 2048
    assert run.console.startswith("line 0 ")


@pytest.mark.skipif(not settings.REDIS_URL, reason="the RQ path needs REDIS_URL (the suite's second run)")
async def test_it_dispatches_through_rq_workers(acme, settings):
    import django_rq

    from tests.rq_fixtures import work_burst

    settings.SYMPOSIUM_RQ_CAPABILITIES = ["files"]
    queue = django_rq.get_queue("capabilities")
    queue.connection.flushdb()
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        isolate.next_id += 1
        await isolate.ws.send_to(text_data=json.dumps({"type": "call", "id": 1, "op": "writeFile", "args": {"path": "rq.txt", "data": "via rq"}}))
        await asyncio.sleep(0.2)
        assert queue.count == 1  # queued, not run inline
        await asyncio.get_running_loop().run_in_executor(None, work_burst, queue)
        reply = json.loads(await isolate.ws.receive_from(timeout=10))
    assert reply["ok"] is True and reply["id"] == 1
    assert (acme.storage_root() / "rq.txt").read_text() == "via rq"
    assert queue.failed_job_registry.count == 0
    assert queue.count == 0


@pytest.mark.skipif(not settings.REDIS_URL, reason="the RQ path needs REDIS_URL (the suite's second run)")
async def test_an_rq_reply_comes_back_whole_on_its_servers_list_and_leaves_nothing_in_redis(acme, settings):
    """A worker pushes its reply onto the reply list of the event loop that queued the
    call (capabilities/dispatch.py): bytes arrive as bytes, the list is emptied as the
    replies come, and a list nobody reads any more (its server stopped) expires."""
    import django_rq

    from capabilities import dispatch
    from tests.rq_fixtures import RunningWorker

    settings.SYMPOSIUM_RQ_CAPABILITIES = ["files"]
    queue = django_rq.get_queue("capabilities")
    queue.connection.flushdb()
    data = bytes(range(256)) * 64
    acme.storage_root().mkdir(parents=True, exist_ok=True)
    (acme.storage_root() / "bin.dat").write_bytes(data)
    run, token = await database_sync_to_async(make_run)(acme)
    worker = RunningWorker(queue)
    try:
        async with Isolate(token) as isolate:
            await isolate.hello()
            for _ in range(5):
                reply = await isolate.call("readFile", {"path": "bin.dat", "encoding": "binary"})
                assert reply["ok"] is True, reply
                assert base64.b64decode(reply["envelope"]["data"]["$bytes"]) == data
    finally:
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
    assert queue.failed_job_registry.count == 0
    assert list(queue.connection.scan_iter("symposium:replies:*")) == []

    # A reply whose reader is gone stays at most REPLY_TTL seconds.
    dispatch.send_reply(queue.connection, "symposium:replies:gone", 1, {"ok": True, "envelope": {"value": 1}})
    assert 0 < queue.connection.ttl("symposium:replies:gone") <= dispatch.REPLY_TTL


async def test_cant_switch_off_the_audit_log_with_a_lone_surrogate(acme, make_tenant):
    """readFile('\\ud800'): JSON carries the lone surrogate as an escape, which no
    database column can store. The call is audited (with U+FFFD), and so is every call
    after it, this tenant's and another's."""
    other = await database_sync_to_async(make_tenant)("globex", "Interactive")
    run, token = await database_sync_to_async(make_run)(acme)
    other_run, other_token = await database_sync_to_async(make_run)(other)
    async with Isolate(token) as isolate:
        await isolate.hello()
        for path in ("\ud800", "a\x00b\udfff" * 200):
            reply = await isolate.call("readFile", {"path": path})
            assert reply["ok"] is False
        reply = await isolate.call("fileExists", {"path": "after.txt"})
        assert reply["ok"] is True
    async with Isolate(other_token) as isolate:
        await isolate.hello()
        assert (await isolate.call("fileExists", {"path": "x.txt"}))["ok"] is True
    rows = await audit_rows(run_id=run.id)
    assert [row.operation for row in rows] == ["readFile", "readFile", "fileExists"]
    assert rows[0].target == "\ufffd"
    assert len(rows[1].target) == 300 and "\x00" not in rows[1].target
    assert rows[2].target == "after.txt"
    assert [row.operation for row in await audit_rows(run_id=other_run.id)] == ["fileExists"]


async def test_cant_block_the_audit_log_with_a_row_the_database_refuses(acme):
    """Should the database refuse a row for what it holds (here a run deleted while its
    row was queued), it is stored alone, in a plainer form, and the rows queued with it
    are written."""

    def queue_rows():
        audit.record(tenant_id=acme.pk, tenant_slug="acme", capability="files", operation="readFile",
                     target="gone.txt", outcome="denied", run_id=2**40)
        audit.record(tenant_id=acme.pk, tenant_slug="acme", capability="files", operation="fileExists",
                     target="good.txt", outcome="allowed")
        assert audit.flush(10)

    await database_sync_to_async(queue_rows)()
    rows = await audit_rows(tenant_slug="acme")
    assert [(row.target, row.run_id) for row in rows] == [("gone.txt", None), ("good.txt", None)]
    assert not audit.writer.failing


async def test_cant_crash_the_run_with_a_lone_surrogate_in_console_text(acme):
    run, token = await database_sync_to_async(make_run)(acme)
    async with Isolate(token) as isolate:
        await isolate.hello()
        await isolate.ws.send_to(text_data=json.dumps({"type": "log", "level": "log", "text": "half \ud800 a pair, a \x00", "t": 0}))
        # The consumer is still there and answering.
        assert (await isolate.call("fileExists", {"path": "x.txt"}))["ok"] is True
        await isolate.ws.send_to(text_data=json.dumps({"type": "done", "ok": True, "result": {"s": "\udfff", "\ud800": [1]}}))
        await asyncio.sleep(0.3)
    run = await database_sync_to_async(BlockRun.objects.get)(pk=run.pk)
    assert run.status == "succeeded"
    assert run.console == "half \ufffd a pair, a \ufffd"
    assert run.result == {"s": "\ufffd", "\ufffd": [1]}


@pytest.mark.skipif(not settings.REDIS_URL, reason="the RQ path needs REDIS_URL (the suite's second run)")
async def test_an_rq_reply_that_comes_back_before_its_enqueue_returns_still_answers_the_call(acme, settings, monkeypatch):
    """A worker can take a job, run it and push its reply before the thread that queued
    it is back on the event loop (a busy loop, a fast handler). With the loop's reader
    already reading (another job watched), that reply is taken off the list at once: the
    call it answers must be known by then, or the reply is dropped and the block waits
    for a "lost" verdict instead of its result."""
    import django_rq

    from capabilities import dispatch
    from tests.rq_fixtures import RunningWorker

    settings.SYMPOSIUM_RQ_CAPABILITIES = ["files"]
    queue = django_rq.get_queue("capabilities")
    queue.connection.flushdb()
    acme.storage_root().mkdir(parents=True, exist_ok=True)
    (acme.storage_root() / "early.txt").write_text("early")
    real_enqueue = dispatch.enqueue

    def enqueue_then_dawdle(*args):
        job = real_enqueue(*args)
        time.sleep(0.4)  # the job is queued; the loop hears of it only now
        return job

    monkeypatch.setattr(dispatch, "enqueue", enqueue_then_dawdle)
    run, token = await database_sync_to_async(make_run)(acme)
    worker = RunningWorker(queue)
    try:
        # Another job watched keeps the loop's reply reader reading meanwhile.
        dispatch.job_watcher().watch("another-job", time.time() + 30)
        async with Isolate(token) as isolate:
            await isolate.hello()
            started = time.monotonic()
            reply = await isolate.call("readFile", {"path": "early.txt"})
            took = time.monotonic() - started
    finally:
        dispatch.job_watcher().forget("another-job")
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
    assert reply["ok"] is True and reply["envelope"]["data"] == "early", reply
    assert took < 2.5
