"""Faults, each scripted against real processes: RQ workers killed in the middle of a
call, Redis and PostgreSQL restarted under running blocks, a server killed with runs in
flight.

The platform here runs as it does in production: `python -m daphne` servers and
`manage.py rqworker` workers, on a PostgreSQL cluster and a Redis of the test's own
(tests/support/platform.py), never the shared ones, which are the only things these tests
stop and restart. Blocks are started through the runner page's websocket, as a user
starts them; the tests read outcomes from the platform's database.
"""

import asyncio
import fcntl
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.platform import CpuThrottle, Platform, RunnerClient, services_available, wait_until

pytestmark = [pytest.mark.slow]

WRITE_BLOCK = """
const t0 = Date.now();
let outcome;
try {
  await symposium.writeFile('out/report.txt', 'x'.repeat(1000));
  outcome = { ok: true };
} catch (e) {
  outcome = { code: e.code, message: e.message };
}
export default () => ({ ...outcome, ms: Date.now() - t0 });
"""

READ_BLOCK = """
const t0 = Date.now();
const read = await symposium.readFile('data/config.json');
export default () => ({ data: read.data, ms: Date.now() - t0 });
"""

# Calls on both paths, for `seconds`, each outcome recorded: [path, code, ms, message].
CALLS_FOR_A_WHILE = """
const outcomes = [];
const until = Date.now() + %d;
while (Date.now() < until) {
  for (const [path, call] of [["rq", () => symposium.canvas.createCanvas(8, 8)], ["inline", () => symposium.fileExists("x.txt")]]) {
    const t0 = Date.now();
    try {
      await call();
      outcomes.push([path, "ok", Date.now() - t0, ""]);
    } catch (e) {
      outcomes.push([path, e.code, Date.now() - t0, e.message]);
    }
  }
  await new Promise((r) => setTimeout(r, 40));
}
export default () => outcomes;
"""

WAITS_FOREVER = "console.log('waiting'); await new Promise(() => {});"

# Limits out of the way of what these tests measure (a run makes hundreds of calls). The
# files limit is high but there: each call consults the rate limiter, in Redis.
BUSY_TENANT = {"canvas_max_per_run": 100000, "canvas_rate_per_minute": 0, "files_rate_per_minute": 10_000_000}


@pytest.fixture(scope="module")
def platform():
    reason = services_available()
    if reason:
        pytest.skip(reason)
    platform = Platform.shared()
    platform.session = platform.prepare({"acme": ("Interactive", BUSY_TENANT)})
    root = platform.storage_root / "acme"
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data/config.json").write_text('{"site": "Symposium demo"}')
    yield platform
    platform.stop_all()


def claims(platform, value, other_than=()):
    """Job ids whose call marks say `value` ("worker": a worker started it), leaving out
    those of earlier tests."""
    client = platform.redis.client()
    return [job for key in client.scan_iter("symposium:call:*:claim")
            if client.get(key) == value.encode() and (job := key.decode().split(":")[2]) not in other_than]


def call_rows(platform, run_id):
    return [row for row in platform.audit_rows(run_id) if not row[0].endswith(".attempt")]


def calls_audited(rows):
    """The calls these audit rows account for: one each, and a refusal summary row (past
    a few refusals of a kind a minute, isolates/floods.py) for as many as it counts."""
    summaries = [int(message.split()[0]) for _, _, _, message in rows if " more refusals of " in message]
    return len(rows) - len(summaries) + sum(summaries)


# -- RQ workers ----------------------------------------------------------------------


async def test_it_fails_a_write_whose_worker_was_killed_mid_call(platform):
    server = platform.start_server(SYMPOSIUM_RQ_CAPABILITIES="files")
    worker = platform.start_worker()
    root = platform.storage_root / "acme"
    # Holding the tenant's storage lock keeps the worker's writeFile waiting inside the
    # handler: the call is under way when the worker is killed.
    lock = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        async with RunnerClient(server.port, platform.session) as page:
            earlier = claims(platform, "worker")
            run = await page.start("acme", WRITE_BLOCK)
            await asyncio.to_thread(wait_until, lambda: claims(platform, "worker", earlier), 20, "the worker starting the call")
            worker.kill()
            killed = time.monotonic()
            fcntl.flock(lock, fcntl.LOCK_UN)
            final = await page.finished(run)
    finally:
        os.close(lock)
        server.kill()
    # The block heard what happened within seconds (the worker's alive mark lasts 5 s),
    # not after the call's 30 s deadline.
    assert time.monotonic() - killed < 9
    result = final["result"]
    assert final["status"] == "succeeded", final
    assert result["code"] == "INTERNAL"
    assert result["message"] == "writeFile was interrupted: the worker running it stopped. It may or may not have taken effect."
    # A write that never finished leaves nothing behind, not even its temporary file.
    assert not (root / "out/report.txt").exists()
    assert not [p for p in root.rglob("*") if p.name.startswith(".symposium-tmp-")]
    # The broker wrote the call's row although the worker died with the call.
    assert call_rows(platform, run) == [("writeFile", "failed", "INTERNAL", result["message"])]


@pytest.mark.skipif(not CpuThrottle.available(), reason="no writable cgroup v1 cpu controller to slow a worker down")
async def test_it_retries_a_read_on_another_worker_when_its_worker_was_killed_mid_call(platform):
    server = platform.start_server(SYMPOSIUM_RQ_CAPABILITIES="files")
    slow = platform.start_worker()  # the first idle worker gets the next job
    other = platform.start_worker()
    try:
        with CpuThrottle(percent=1) as throttle:
            # At 1% of a core the slow worker takes a second for what takes a
            # millisecond: it can be killed with the read under way.
            throttle.add(slow.pid)
            async with RunnerClient(server.port, platform.session) as page:
                earlier = claims(platform, "worker")
                run = await page.start("acme", READ_BLOCK)
                await asyncio.to_thread(wait_until, lambda: claims(platform, "worker", earlier), 20, "the slow worker starting the read")
                slow.kill()
                final = await page.finished(run)
    finally:
        other.kill()
        server.kill()
    assert final["status"] == "succeeded", final
    assert json.loads(final["result"]["data"]) == {"site": "Symposium demo"}
    assert final["result"]["ms"] < 15000
    rows = platform.audit_rows(run)
    assert rows[0][:3] == ("readFile.attempt", "failed", "INTERNAL")
    assert "worker running it stopped" in rows[0][3] and "queued again" in rows[0][3]
    assert rows[1:] == [("readFile", "allowed", "", "")]


async def test_it_runs_a_call_once_when_the_worker_that_took_it_died_before_starting_it(platform):
    server = platform.start_server()
    stuck = platform.start_worker()
    other = platform.start_worker()
    # Stopped while waiting for work, the first worker still receives the next job from
    # Redis, and never starts it.
    os.kill(stuck.pid, signal.SIGSTOP)
    code = """
const first = await symposium.canvas.createCanvas(8, 8);
await new Promise((r) => setTimeout(r, 1500));
const second = await symposium.canvas.createCanvas(8, 8);
export default () => [first.canvasId, second.canvasId];
"""
    try:
        async with RunnerClient(server.port, platform.session) as page:
            earlier = claims(platform, "abandoned")
            run = await page.start("acme", code)
            await asyncio.to_thread(wait_until, lambda: claims(platform, "abandoned", earlier), 20, "the broker abandoning the job")
            # The stuck worker wakes up and takes its old job: the claim tells it that
            # the broker gave up on it, so it does not create a canvas behind our back.
            os.kill(stuck.pid, signal.SIGCONT)
            final = await page.finished(run)
    finally:
        stuck.kill()
        other.kill()
        server.kill()
    assert final["status"] == "succeeded", final
    first, second = final["result"]
    # Canvas numbers count the creations of the run: one each, none twice.
    assert first.startswith("c1-") and second.startswith("c2-"), final["result"]
    rows = platform.audit_rows(run)
    assert rows[0][:3] == ("canvas.createCanvas.attempt", "failed", "INTERNAL"), rows
    assert "stopped before starting it" in rows[0][3]
    assert [r[:2] for r in rows[1:]] == [("canvas.createCanvas", "allowed")] * 2


# -- Redis and PostgreSQL restarted ------------------------------------------------------


def outcome_summary(outcomes):
    return {path: [(code, message) for p, code, ms, message in outcomes if p == path and code != "ok"] for path in ("rq", "inline")}


async def test_redis_restarted_under_running_blocks(platform):
    server = platform.start_server()
    # RQ 2.12's worker exits when Redis goes away while it records a job's success: in
    # production its supervisor (systemd, compose) starts it again, and so does this test.
    worker = platform.start_worker(restart=True)
    try:
        async with RunnerClient(server.port, platform.session) as page:
            run = await page.start("acme", CALLS_FOR_A_WHILE % 7000)
        await asyncio.sleep(2)
        platform.redis.restart(down_seconds=1.0)
        record = await asyncio.to_thread(platform.wait_finished, run, 40)
        assert record["status"] == "succeeded", record
        outcomes = record["result"]
        failed = outcome_summary(outcomes)
        # Calls in flight or made while Redis was down failed, saying why...
        assert failed["rq"] and failed["inline"], failed
        for code, message in failed["rq"] + failed["inline"]:
            assert code in ("INTERNAL", "RATE_LIMITED") and "Redis" in message, (code, message)
        # ... quickly: nobody waited for the 30 s deadline...
        assert max(ms for _, _, ms, _ in outcomes) < 6000, [o for o in outcomes if o[2] >= 6000]
        # ... and once it was back, calls on both paths worked again.
        assert [o[1] for o in outcomes[-6:]] == ["ok"] * 6, outcomes[-6:]
        # Every call the block made has its audit row.
        assert calls_audited(call_rows(platform, run)) == len(outcomes)
        # New runs work.
        async with RunnerClient(server.port, platform.session) as page:
            again = await page.start("acme", "const c = await symposium.canvas.createCanvas(8, 8); export default () => c.canvasId;")
            final = await page.finished(again)
        assert final["status"] == "succeeded" and final["result"].startswith("c1-")
    finally:
        worker.kill()
        server.kill()
    assert not platform.pg.query("SELECT id FROM tenants_blockrun WHERE status IN ('queued', 'running')")


async def test_postgres_restarted_under_running_blocks(platform):
    # A backlog of 5 rows: the audit rows of calls made while the database is down
    # overflow to disk and are written from there once it is back.
    server = platform.start_server(SYMPOSIUM_AUDIT_BACKLOG=5)
    worker = platform.start_worker(restart=True)
    try:
        async with RunnerClient(server.port, platform.session) as page:
            run = await page.start("acme", CALLS_FOR_A_WHILE % 7000)
            busy = await page.start("acme", WAITS_FOREVER)
        await asyncio.sleep(2)
        platform.pg.restart(down_seconds=1.5)
        record = await asyncio.to_thread(platform.wait_finished, run, 40)
        assert record["status"] == "succeeded", record
        outcomes = record["result"]
        failed = outcome_summary(outcomes)
        assert failed["rq"] or failed["inline"], "no call met the restart"
        for code, message in failed["rq"] + failed["inline"]:
            assert code == "INTERNAL" and "database is unavailable" in message, (code, message)
        assert max(ms for _, _, ms, _ in outcomes) < 6000
        assert [o[1] for o in outcomes[-6:]] == ["ok"] * 6, outcomes[-6:]
        # Nothing lost from the audit log, the rows spilled to disk included.
        await asyncio.to_thread(wait_until, lambda: calls_audited(call_rows(platform, run)) == len(outcomes), 15, "every call audited")
        assert not list(platform.var_dir.glob("audit-backlog-*"))
        # The run that kept running through it can still be stopped, and ends `killed`.
        async with RunnerClient(server.port, platform.session) as page:
            await page.stop(busy)
            again = await page.start("acme", "export default () => 'after'")
            final = await page.finished(again)
        assert final["status"] == "succeeded" and final["result"] == "after"
        assert (await asyncio.to_thread(platform.wait_finished, busy, 10))["status"] == "killed"
    finally:
        worker.kill()
        server.kill()
    assert not platform.pg.query("SELECT id FROM tenants_blockrun WHERE status IN ('queued', 'running')")


# -- the server process -----------------------------------------------------------------


def command_name(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


async def test_a_killed_server_takes_its_isolates_along_and_its_runs_are_reaped(platform):
    server = platform.start_server()
    async with RunnerClient(server.port, platform.session) as page:
        runs = [await page.start("acme", WAITS_FOREVER) for _ in range(2)]
        await asyncio.to_thread(wait_until, lambda: all(platform.run_record(r)["status"] == "running" for r in runs), 20,
                                "the runs starting")
        started = server.children()
    isolates = [pid for pid in started if command_name(pid) == "deno"]
    assert len(isolates) >= 2
    server.kill(signal.SIGKILL)
    # The isolates do not outlive their server, nor does the spawner that forked them
    # (it kills them when its server's end closes, and they die with it: parent-death
    # signal; and the runtime exits when its broker connection closes).
    wait_until(lambda: not [pid for pid in started if os.path.exists(f"/proc/{pid}")], 3, "the isolates exiting")
    assert [platform.run_record(r)["status"] for r in runs] == ["running", "running"]
    # Another server's reaper notices the dead server (same machine: at once; elsewhere:
    # when its heartbeat is stale) and fails its runs.
    other = platform.start_server()
    try:
        async with RunnerClient(other.port, platform.session) as page:
            run = await page.start("acme", "export default () => 'new runs work'")
            assert (await page.finished(run))["result"] == "new runs work"
        for run_id in runs:
            record = await asyncio.to_thread(platform.wait_finished, run_id, 10)
            assert (record["status"], record["error_code"], record["error"]) == (
                "failed", "SERVER_STOPPED", "The server running this block stopped.")
        # A server stopped the normal way (SIGTERM) fails its runs itself on the way out.
        async with RunnerClient(other.port, platform.session) as page:
            last = await page.start("acme", WAITS_FOREVER)
            await asyncio.to_thread(wait_until, lambda: platform.run_record(last)["status"] == "running", 20, "the run starting")
    finally:
        other.kill(signal.SIGTERM)
    record = platform.run_record(last)
    assert (record["status"], record["error_code"]) == ("failed", "SERVER_STOPPED")


CALLS_AND_SAYS_SO = """
for (let i = 1; ; i++) {
  await symposium.fileExists(`data/missing-${i}.txt`);
  console.log(String(i));
  await new Promise((r) => setTimeout(r, 10));
}
"""


async def test_a_server_killed_after_its_replies_loses_at_most_the_audit_writers_window(platform):
    # A block makes a call every 10 ms and says how many replies it has had. The server
    # is killed (SIGKILL: no atexit flush) after the page saw a few hundred: every call
    # whose reply the block had more than the writer's window (20 ms of linger plus one
    # insert, docs/broker.md) before the kill has its audit row, and the run does not
    # stay `running`.
    server = platform.start_server()
    async with RunnerClient(server.port, platform.session) as page:
        run_id = await page.start("acme", CALLS_AND_SAYS_SO)
        seen = 0
        while seen < 300:
            batch = await page.expect(lambda m: m.get("type") == "logs" and m.get("run") == run_id, 30)
            seen = max([seen] + [int(line["text"]) for line in batch["lines"]])
        server.kill(signal.SIGKILL)
    rows = [row for row in call_rows(platform, run_id) if row[0] == "fileExists"]
    # 25 calls: 250 ms of this block's calls, a generous bound for one insert on a busy
    # machine; the replies the page saw are fewer than the block had.
    assert len(rows) >= seen - 25, (len(rows), seen)
    other = platform.start_server()
    try:
        # Its run service (and so its reaper) starts with its first run.
        async with RunnerClient(other.port, platform.session) as page:
            await page.finished(await page.start("acme", "export default () => 1"))
        record = await asyncio.to_thread(platform.wait_finished, run_id, 15)
        assert (record["status"], record["error_code"]) == ("failed", "SERVER_STOPPED")
    finally:
        other.kill(signal.SIGTERM)
