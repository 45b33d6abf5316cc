"""Several machines' worth of processes: two Daphne servers and two RQ workers on one
PostgreSQL and one Redis. Everything that holds state lives in those two, so blocks run
through either server alike, and a tenant's rate limits, storage quota and concurrency
limit hold across both (tests/support/platform.py starts the processes; nothing here touches
the suite's shared PostgreSQL or Redis)."""

import asyncio

import pytest

from tests.support.platform import Platform, RunnerClient, services_available

pytestmark = [pytest.mark.slow]

SIX_CANVASES = """
const outcomes = [];
for (let i = 0; i < 6; i++) {
  try {
    await symposium.canvas.createCanvas(8, 8);
    outcomes.push("ok");
  } catch (e) {
    outcomes.push(e.code + (e.retryAfter ? " retry" : ""));
  }
}
export default () => outcomes;
"""

WRITE = """
try {
  await symposium.writeFile(%r, 'x'.repeat(1600));
} catch (e) {
  throw new Error(e.code + ': ' + e.message);
}
export default () => 'written';
"""


@pytest.fixture(scope="module")
def cluster():
    reason = services_available()
    if reason:
        pytest.skip(reason)
    platform = Platform.shared()
    platform.session = platform.prepare({
        # 10 canvases a minute (a burst of 10), 3000 bytes of storage, two runs at once.
        "shared": ("Interactive", {"canvas_rate_per_minute": 10, "canvas_max_per_run": 100,
                                   "storage_quota": 3000, "max_file_size": 2000, "concurrent_runs": 2}),
        "single": ("Interactive", {"concurrent_runs": 1}),
    }, username="carol")
    platform.servers = [platform.start_server(), platform.start_server()]
    platform.workers = [platform.start_worker(), platform.start_worker()]
    yield platform
    platform.stop_all()


async def run_on(server, session, code):
    async with RunnerClient(server.port, session) as page:
        run = await page.start("shared", code)
        assert isinstance(run, str), run
        return run, await page.finished(run)


def jobs_done(platform, worker):
    count = platform.redis.client().hget(f"rq:worker:{worker.name}", "successful_job_count")
    return int(count or 0)


async def test_rate_limits_are_shared_and_both_servers_and_workers_take_the_work(cluster):
    first_server, second_server = cluster.servers
    run_a, first = await run_on(first_server, cluster.session, SIX_CANVASES)
    run_b, second = await run_on(second_server, cluster.session, SIX_CANVASES)
    assert first["status"] == second["status"] == "succeeded"
    # One budget of 10 for the tenant, wherever its runs are: the second server's run
    # gets what the first left (one more may have refilled meanwhile, at one per 6 s).
    assert first["result"] == ["ok"] * 6
    allowed = second["result"].count("ok")
    assert 4 <= allowed <= 5 and second["result"][allowed:] == ["RATE_LIMITED retry"] * (6 - allowed)
    # Each run was supervised by the server it was started on (its isolate connected
    # back to that server's own broker), and both workers ran canvas jobs.
    servers = [cluster.run_record(run)["server"] for run in (run_a, run_b)]
    assert f":{first_server.pid}-" in servers[0] and f":{second_server.pid}-" in servers[1]
    assert all(jobs_done(cluster, worker) > 0 for worker in cluster.workers), [jobs_done(cluster, w) for w in cluster.workers]
    # Every call is audited, the refused ones included, by the server that answered it.
    assert len(cluster.audit_rows(run_a)) == 6 and len(cluster.audit_rows(run_b)) == 6


async def test_the_storage_quota_is_shared(cluster):
    first_server, second_server = cluster.servers
    _, first = await run_on(first_server, cluster.session, WRITE % "a.txt")
    _, second = await run_on(second_server, cluster.session, WRITE % "b.txt")
    assert first["status"] == "succeeded"
    assert second["status"] == "failed"
    assert second["error"].startswith("QUOTA_EXCEEDED: Writing 'b.txt' (1600 bytes) would bring the tenant's storage to 3200 bytes")


async def test_the_concurrency_limit_holds_across_servers(cluster):
    waits = "await new Promise(() => {});"
    async with RunnerClient(cluster.servers[0].port, cluster.session) as one, \
            RunnerClient(cluster.servers[1].port, cluster.session) as two:
        # Ten starts at the same moment, five on each server, for a tenant allowed two.
        for page in (one, two):
            for ref in range(1, 6):
                page.send({"type": "start", "tenant": "shared", "code": waits, "ref": ref, "input": ""})
        replies = []
        for page in (one, two):
            for ref in range(1, 6):
                replies.append((page, await page.expect(lambda m, ref=ref: m.get("ref") == ref and m.get("type") in ("accepted", "refused"))))
        accepted = [(page, reply["run"]) for page, reply in replies if reply["type"] == "accepted"]
        refused = [reply for _, reply in replies if reply["type"] == "refused"]
        assert len(accepted) == 2, [reply for _, reply in replies]
        assert {r["code"] for r in refused} == {"RATE_LIMITED"}
        assert all("retry when one ends" in r["message"] for r in refused)
        for page, run in accepted:
            await page.stop(run)
        for page, run in accepted:
            assert (await page.finished(run))["status"] == "killed"
    await asyncio.sleep(0)


def test_processes_racing_to_start_runs_cannot_pass_the_tenants_limit(cluster):
    """Eight processes, each with its own database connection, create a run of a tenant
    allowed one at the same instant: the tenant's row lock lets exactly one through."""
    import subprocess
    import sys
    import time

    from tests.support.platform import ROOT

    start_at = time.time() + 4  # after every process has set Django up
    script = f"""
import time
from isolates.runs import RunRefused, create_run
from tenants.models import Tenant
tenant = Tenant.objects.get(slug="single")
time.sleep(max(0, {start_at} - time.time()))
try:
    create_run(tenant, "export default () => 1", token=str(time.time()), server="racer:1-a")
    print("created")
except RunRefused as e:
    print(e.code)
"""
    processes = [subprocess.Popen([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=cluster.env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(8)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip().splitlines()[-1] for p in processes)
    assert outcomes == ["RATE_LIMITED"] * 7 + ["created"], outcomes
    cluster.pg.query("UPDATE tenants_blockrun SET status = 'killed' WHERE server = 'racer:1-a'")
