"""Blocks run end to end: a real isolate (Deno, locked down) against the real broker in
a real Daphne server, on the embedded path (SQLite, inline) and, in the suite's second
run, on PostgreSQL with RQ workers."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from capabilities.database import statement_fingerprint
from capabilities.registry import OPERATIONS
from tenants import audit
from tenants.models import AuditLog, BlockRun, PolicyOverride
from tenants.ratelimit import reset_limiter

pytestmark = [pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def fresh_limits():
    reset_limiter()
    from tenants.ratelimit import limiter

    limiter().reset()
    yield
    reset_limiter()


def audit_rows(**filters):
    audit.flush()
    return list(AuditLog.objects.filter(**filters).order_by("id"))


def test_it_runs_the_seed_file_system_example_as_interactive(run_block, seeded):
    tenant = seeded("acme", "Interactive")
    run = run_block(tenant, (EXAMPLES / "seed/file-system.js").read_text())
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    config = json.loads((EXAMPLES / "storage/data/config.json").read_text())
    assert json.loads(run.logs[0]) == config  # readFile's data is the text of the file
    assert "people.csv" in run.logs[1]
    size = (EXAMPLES / "storage/data/large-file.zip").stat().st_size
    assert run.logs[2] == f"{size} bytes"
    root = tenant.storage_root()
    assert (root / "output/result.txt").read_text() == "Hello World"
    assert not (root / "temp/cache.tmp").exists()
    ops = [r.operation for r in audit_rows(run_id=run.id)]
    assert ops == ["readFile", "writeFile", "listDirectory", "getFileInfo", "fileExists", "deleteFile"]


def test_the_same_example_fails_its_write_as_basic(run_block, seeded):
    tenant = seeded("basic-co", "Basic")
    run = run_block(tenant, (EXAMPLES / "seed/file-system.js").read_text())
    assert run.status == "failed"
    assert run.error_code == "PERMISSION_DENIED"
    assert "does not allow writing" in run.error
    assert not (tenant.storage_root() / "output").exists()
    denied = audit_rows(run_id=run.id, outcome="denied")
    assert [(r.operation, r.error_code) for r in denied] == [("writeFile", "PERMISSION_DENIED")]


def test_it_returns_the_default_exports_result_and_streams_console(run_block, acme):
    code = "console.log('one'); console.warn('two');\nexport default async (input) => ({ sum: input.a + input.b });"
    run = run_block(acme, code, input={"a": 2, "b": 3})
    assert run.status == "succeeded" and run.result == {"sum": 5}
    assert run.logs == ["one", "two"]
    assert [e["level"] for e in run.events if e.get("event") == "log"] == ["log", "warn"]
    assert run.console == "one\n[warn] two"
    finished = run.events[-1]
    assert finished["event"] == "finished" and finished["status"] == "succeeded"


def test_it_hands_the_tenants_secrets_to_process_env_only(run_block, acme):
    from tenants.models import TenantSecret

    secret = TenantSecret(tenant=acme, name="API_KEY")
    secret.value = "sk-test-123"
    secret.save()
    run = run_block(acme, "export default () => ({ env: { ...process.env } })")
    assert run.result == {"env": {"API_KEY": "sk-test-123"}}


@pytest.mark.parametrize("code,needle", [
    ("await Deno.readTextFile('/etc/passwd')", "NotCapable"),
    ("await Deno.readTextFile('/proc/self/environ')", "NotCapable"),
    ("new Deno.Command('/bin/sh', { args: ['-c', 'id'] }).outputSync()", "NotCapable"),
    ("new Deno.Command('sh', { args: ['-c', 'id'] }).outputSync()", "spawn"),
    ("Deno.env.get('SECRET_KEY')", "NotCapable"),
])
def test_cant_reach_the_host_from_a_block(run_block, acme, code, needle):
    run = run_block(acme, code)
    assert run.status == "failed"
    assert needle in run.error_code + run.error
    assert "/work" not in run.error and str(ROOT) not in run.error


def test_cant_fetch_the_platforms_own_admin(run_block, acme, server):
    run = run_block(acme, f"await fetch('http://127.0.0.1:{server.port}/admin/')")
    assert run.status == "failed" and "NotCapable" in run.error_code + run.error


def test_a_runaway_block_is_timed_out_and_killed(run_block, acme):
    PolicyOverride.objects.create(tenant=acme, setting="time_limit_seconds", value="2")
    started = time.monotonic()
    run = run_block(acme, "console.log('spinning'); while (true) {}")
    assert run.status == "timed_out" and run.error_code == "TIMEOUT"
    assert "time limit of 2 s" in run.error
    assert time.monotonic() - started < 6
    assert run.logs == ["spinning"]


def test_a_memory_bomb_ends_with_a_clear_reason(run_block, make_tenant):
    tenant = make_tenant("hungry", "Basic")
    run = run_block(tenant, "const a = []; while (true) a.push(new Array(1e6).fill(Math.random()));")
    assert run.status == "failed"
    assert run.error_code == "MEMORY_LIMIT", (run.error_code, run.error)
    assert "64 MB" in run.error


def test_a_stopped_run_is_killed(run_block, acme):
    run = run_block.start(acme, "await new Promise(() => {}); // waits forever")
    time.sleep(1.0)
    run_block.stop(run.id)
    run = run_block.wait(run.id)
    assert run.status == "killed" and run.error_code == "KILLED"


def test_cant_leave_a_runs_code_and_secrets_in_the_server_when_its_isolate_never_said_hello(acme, server):
    from isolates import session
    from isolates.runs import service_for_port

    async def start_and_stop():
        service = service_for_port(server.port)
        run = await service.start(acme, "export default () => 1")
        kept = run.token_hash in session._prepared  # kept for the isolate's hello
        await service.stop(run.id)  # before the run has an isolate: none will say hello
        return kept, await service.wait(run.id)

    kept, run = server.call(start_and_stop(), 30)
    assert kept and run.status == "killed"
    assert run.token_hash not in session._prepared


def test_a_warm_isolate_is_started_on_its_waiting_connection(run_block, acme, server):
    # A warm isolate's connection is open and waiting before its run exists: the run is
    # bound to it in memory (isolates/waiting.py), not told to the isolate on stdin.
    from isolates.runs import service_for_port

    run_block(acme, "export default () => 1")  # the pool is warming

    async def warm_and_run():
        service = service_for_port(server.port)
        await service.pool.fill()
        await asyncio.sleep(0.5)  # the warm isolates' connections are open
        run = await service.start(acme, "export default () => 'bound'")
        while run.id in service.supervisors and run.id not in service.isolates:
            await asyncio.sleep(0.01)
        isolate = service.isolates.get(run.id)
        return await service.wait(run.id), isolate

    run, isolate = server.call(warm_and_run(), 60)
    assert run.status == "succeeded" and run.result == "bound"
    assert isolate is not None and isolate._binding is not None


def test_an_isolate_killed_from_outside_fails_its_run(run_block, acme, server):
    import signal

    run = run_block.start(acme, "await new Promise(() => {});")
    service = run_block.service()
    for _ in range(100):
        isolate = service.isolates.get(run.id)
        if isolate is not None:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    killed_at = time.monotonic()
    os.kill(isolate.pid, signal.SIGKILL)
    run = run_block.wait(run.id)
    assert run.status == "failed" and run.error_code == "CRASHED"
    assert "SIGKILL" in run.error or "killed" in run.error
    assert run.finished is not None
    assert time.monotonic() - killed_at < 1.5


def test_a_suspended_tenant_cannot_start_a_run(run_block, acme):
    from isolates.runs import RunRefused

    acme.is_active = False
    acme.save()
    with pytest.raises(RunRefused) as refused:
        run_block(acme, "export default () => 1")
    assert refused.value.code == "PERMISSION_DENIED"
    assert BlockRun.objects.count() == 0


def test_the_concurrency_limit_of_the_profile_holds(run_block, make_tenant):
    from isolates.runs import RunRefused

    tenant = make_tenant("busy", "Basic")  # two runs at once
    first = run_block.start(tenant, "await new Promise(() => {})")
    second = run_block.start(tenant, "await new Promise(() => {})")
    with pytest.raises(RunRefused) as refused:
        run_block.start(tenant, "export default () => 1")
    assert refused.value.code == "RATE_LIMITED" and "retry" in refused.value.message
    for run in (first, second):
        run_block.stop(run.id)
        assert run_block.wait(run.id).status == "killed"


@pytest.fixture
def rq_worker():
    """A real RQ worker process on the test database, for the RQ dispatch path."""
    if not settings.REDIS_URL:
        pytest.skip("the RQ path needs REDIS_URL (the suite's second run)")
    import django_rq
    from django.db import connection

    django_rq.get_queue("capabilities").connection.flushdb()
    env = dict(os.environ)
    db = connection.settings_dict
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["SYMPOSIUM_STORAGE_ROOT"] = str(settings.TENANT_STORAGE_ROOT)
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "capabilities", "--worker-class", "rq.SimpleWorker"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.5)
    yield worker
    worker.terminate()
    worker.wait(10)


def test_it_runs_the_file_example_through_rq_workers(run_block, seeded, rq_worker, settings):
    settings.SYMPOSIUM_RQ_CAPABILITIES = ["files"]
    tenant = seeded("acme", "Interactive")
    run = run_block(tenant, (EXAMPLES / "seed/file-system.js").read_text())
    assert run.status == "succeeded", (run.error_code, run.error, run.logs)
    assert (tenant.storage_root() / "output/result.txt").read_text() == "Hello World"
    import django_rq

    queue = django_rq.get_queue("capabilities")
    assert queue.failed_job_registry.count == 0
    assert rq_worker.poll() is None  # the worker is alive and took the jobs


def test_100k_calls_without_awaiting_are_contained(run_block, acme):
    PolicyOverride.objects.create(tenant=acme, setting="files_rate_per_minute", value="0")
    code = """
const outcomes = await Promise.allSettled(Array.from({ length: 100000 }, () => symposium.fileExists('x.txt')));
const refused = outcomes.filter((o) => o.status === 'rejected');
export default () => ({ answered: outcomes.length - refused.length, refused: refused.length,
                        codes: [...new Set(refused.map((o) => o.reason.code))] });
"""
    run = run_block(acme, code, timeout=120)
    assert run.status == "succeeded", (run.error_code, run.error)
    assert run.result["answered"] + run.result["refused"] == 100000
    # Past the cap, calls are refused at once; the first ones are answered.
    assert run.result["codes"] == ["RATE_LIMITED"]
    # Only what the in-flight cap let through reached the broker, and all of it is audited.
    assert 0 < run.calls <= 64 * 4
    assert len(audit_rows(run_id=run.id)) == run.calls


def test_other_runs_carry_on_after_a_bomb(run_block, acme, make_tenant):
    bomb = run_block(make_tenant("bomber", "Basic"), "const a = []; while (true) a.push(new Array(1e6).fill(1));")
    assert bomb.status == "failed"
    run = run_block(acme, "export default () => 'still here'")
    assert run.status == "succeeded" and run.result == "still here"


# One call of every operation, made through the block's API with its documented
# parameters, and the audit target the broker should record for it. Calls that fail
# (a missing file, a private address, a capability the profile lacks) serve as well as
# ones that succeed: what matters is that the block could make them, that the broker knew
# them, and what it recorded.
EVERY_OPERATION = {
    "writeFile": ("symposium.writeFile('notes/a.txt', 'hi')", "notes/a.txt"),
    "readFile": ("symposium.readFile('notes/a.txt')", "notes/a.txt"),
    "listDirectory": ("symposium.listDirectory('notes')", "notes"),
    "getFileInfo": ("symposium.getFileInfo('notes/a.txt')", "notes/a.txt"),
    "fileExists": ("symposium.fileExists('notes/a.txt')", "notes/a.txt"),
    "deleteFile": ("symposium.deleteFile('notes/a.txt')", "notes/a.txt"),
    "network.fetch": ("symposium.network.fetch('http://127.0.0.1:9/secret?token=x')", "127.0.0.1"),
    "network.sendWebhook": ("symposium.network.sendWebhook('http://127.0.0.1:9/hook', { a: 1 })", "127.0.0.1"),
    "canvas.createCanvas": ("symposium.canvas.createCanvas(20, 10)", ""),
    "canvas.draw": ("symposium.canvas.draw(canvasId, [{ type: 'fillRect', x: 0, y: 0, width: 5, height: 5 }])", "CANVAS"),
    "canvas.exportImage": ("symposium.canvas.exportImage(canvasId, 'png')", "CANVAS"),
    "database.query": ("symposium.database.query('SELECT 1 AS one')", "SQL"),
    "database.transaction": ("symposium.database.transaction([{ query: 'SELECT 1' }])", ""),
    "process.execute": ("symposium.process.execute('ls', ['-la'])", "ls"),
    "kv.set": ("symposium.kv.set('visits', 1)", "visits"),
    "kv.get": ("symposium.kv.get('visits')", "visits"),
    "kv.list": ("symposium.kv.list({ prefix: 'vis' })", "vis"),
    "kv.delete": ("symposium.kv.delete('visits')", "visits"),
    "email.send": ("symposium.email.send({ to: 'ops@example.org', subject: 'Report', text: 'hi' })", "Report"),
    "image.info": ("symposium.image.info('pictures/none.png')", "pictures/none.png"),
    "image.transform": ("symposium.image.transform('pictures/none.png', [{ type: 'grayscale' }], { output: 'pictures/out.png' })", "pictures/out.png"),
    "realtime.publish": ("symposium.realtime.publish('updates', { n: 1 })", "updates"),
}
# Methods that shape another operation's call (canvas.drawImage is one canvas.draw).
CONVENIENCES = {"canvas.drawImage"}


def test_a_block_can_call_every_operation_of_the_registry(run_block, acme, dispatch_path):
    assert set(EVERY_OPERATION) == set(OPERATIONS)
    calls = "\n".join(
        f"  try {{ const r = await {code}; if ({name!r} === 'canvas.createCanvas') canvasId = r.canvasId; outcomes.push([{name!r}, 'ok', null]); }}"
        f" catch (e) {{ outcomes.push([{name!r}, e.code, e.capability, e.message]); }}"
        for name, (code, _) in EVERY_OPERATION.items()
    )
    code = f"""
    function methods(object, prefix) {{
      return Object.entries(object).flatMap(([key, value]) =>
        typeof value === 'function' ? [prefix + key] : key === 'utils' ? [] : methods(value, prefix + key + '.'));
    }}
    export default async () => {{
      const outcomes = [];
      let canvasId = null;
    {calls}
      return {{ api: methods(symposium, ''), outcomes, canvasId, unknown: typeof symposium.shell }};
    }};
    """
    run = run_block(acme, code)
    assert run.status == "succeeded", (run.error_code, run.error)
    # The block's API is the registry's operations (and the conveniences made of them),
    # no more and no fewer.
    assert sorted(run.result["api"]) == sorted(set(OPERATIONS) | CONVENIENCES)
    assert run.result["unknown"] == "undefined"
    for name, code_, *rest in run.result["outcomes"]:
        if code_ != "ok":
            # A refusal names the operation's capability, as the registry has it.
            capability, message = rest
            assert capability == OPERATIONS[name].capability, (name, rest)
            assert "Unknown operation" not in message, (name, message)
    rows = {r.operation: r for r in audit_rows(run_id=run.id) if not r.operation.endswith(".attempt")}
    assert set(rows) == set(OPERATIONS)
    assert run.result["canvasId"]
    for name, (_, target) in EVERY_OPERATION.items():
        if target == "SQL":
            target = statement_fingerprint({"sql": "SELECT 1 AS one"})
        elif target == "CANVAS":
            target = run.result["canvasId"]
        assert (rows[name].capability, rows[name].target) == (OPERATIONS[name].capability, target), name
    # What operations report besides their own row: the webhook's attempt, the image.
    assert [r.operation for r in audit_rows(run_id=run.id, operation__endswith=".attempt")] == ["network.sendWebhook.attempt"]
    assert [e["mime"] for e in run.events if e.get("event") == "image"] == ["image/png"]
