"""Limits and faults inside one server process: back-pressure past the per-process cap,
the tenant's concurrency limit under racing starts, a full disk under tenant storage,
and the reaper of runs whose server stopped. Real isolates, the real broker, the test's
database (SQLite or PostgreSQL, whichever the suite runs on)."""

import subprocess
import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from isolates import reaper
from isolates.models import ServerProcess
from isolates.runs import RunRefused, create_run
from tests.support.platform import wait_until
from tenants.models import BlockRun

pytestmark = [pytest.mark.django_db(transaction=True)]


# -- back-pressure ----------------------------------------------------------------------


def test_it_refuses_runs_past_the_servers_cap_and_the_runs_in_flight_finish(run_block, make_tenant, settings):
    settings.SYMPOSIUM_MAX_RUNS_PER_PROCESS = 3
    tenant = make_tenant("busy-co", "Advanced")  # 20 runs at once: the server's cap binds first
    code = "await new Promise((r) => setTimeout(r, 1500)); export default () => 'done';"
    runs = [run_block.start(tenant, code) for _ in range(3)]
    with pytest.raises(RunRefused) as refused:
        run_block.start(tenant, code)
    assert refused.value.code == "BUSY" and refused.value.retry_after == 2
    assert refused.value.message == "This server is busy (3 runs in progress, its limit); retry in a few seconds."
    assert BlockRun.objects.count() == 3  # the refusal cost no record, no isolate
    # The runs in flight are unharmed...
    assert [run_block.wait(run.id).status for run in runs] == ["succeeded"] * 3
    # ... and once they are over, there is room again.
    assert run_block(tenant, "export default () => 'room again'").result == "room again"


def test_cant_start_more_runs_than_the_tenants_limit_by_racing(make_tenant):
    tenant = make_tenant("racer", "Basic")  # two runs at once
    barrier = threading.Barrier(8)
    outcomes = []

    def start():
        from django.db import connection

        barrier.wait()
        try:
            create_run(tenant, "export default () => 1", token=f"t{threading.get_ident()}", server="test:1-a")
            outcomes.append("created")
        except RunRefused as e:
            outcomes.append(e.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["RATE_LIMITED"] * 6 + ["created"] * 2
    assert BlockRun.objects.filter(tenant=tenant).count() == 2


# -- a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path, settings):
    """Tenant storage on a 1 MB tmpfs: a disk that really fills up."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    settings.TENANT_STORAGE_ROOT = mount_point
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)])


def test_it_fails_writes_on_a_full_disk_and_leaves_no_partial_file(run_block, make_tenant, small_disk):
    tenant = make_tenant("full-co", "Interactive")  # a 100 MB quota: the disk fills first
    code = """
const results = {};
await symposium.writeFile('keep.txt', 'k'.repeat(400 * 1024));
for (const [name, size] of [['big.txt', 800 * 1024], ['keep.txt', 900 * 1024]]) {
  try {
    await symposium.writeFile(name, 'x'.repeat(size));
    results[name] = 'written';
  } catch (e) {
    results[name] = [e.code, e.message];
  }
}
const listing = await symposium.listDirectory('');
results.files = listing.data.map((f) => [f.name, f.size]);
export default () => results;
"""
    run = run_block(tenant, code)
    assert run.status == "succeeded", (run.error_code, run.error)
    for name in ("big.txt", "keep.txt"):
        code_, message = run.result[name]
        assert code_ == "QUOTA_EXCEEDED", run.result
        assert "no space" in message.lower() or "full" in message.lower(), message
        assert str(small_disk) not in message  # no server path
    # The failed new file is not there at all, and the failed overwrite left the old
    # content whole: writes go to a temporary name and are renamed into place.
    assert run.result["files"] == [["keep.txt", 400 * 1024]]
    assert (small_disk / "full-co" / "keep.txt").read_text() == "k" * 400 * 1024
    assert not [p.name for p in (small_disk / "full-co").iterdir() if p.name != "keep.txt" and not p.name.startswith(".symposium")]
    assert not list((small_disk / "full-co").glob(".symposium-tmp-*"))


# -- the reaper -----------------------------------------------------------------------------


def unfinished_run(tenant, server, minutes_ago=0):
    return BlockRun.objects.create(tenant=tenant, code="await new Promise(() => {})", status="running", server=server,
                                   created=timezone.now() - timedelta(minutes=minutes_ago))


def test_reapruns_fails_the_runs_of_a_server_whose_heartbeat_stopped(acme, capsys):
    now = timezone.now()
    ServerProcess.objects.create(name="web-2:41-aa", host="web-2", pid=41, machine="another-machine/1",
                                 heartbeat=now - timedelta(seconds=settings.SYMPOSIUM_HEARTBEAT_STALE_SECONDS + 5))
    ServerProcess.objects.create(name="web-3:42-bb", host="web-3", pid=42, machine="another-machine/1", heartbeat=now)
    lost = unfinished_run(acme, "web-2:41-aa")
    alive = unfinished_run(acme, "web-3:42-bb")
    vanished = unfinished_run(acme, "web-4:43-cc", minutes_ago=5)  # a server with no row at all
    untracked = unfinished_run(acme, "")  # not made by a server: nobody's to reap
    call_command("reapruns")
    assert "Failed 2 run(s) of stopped servers." in capsys.readouterr().out
    for run in (lost, vanished):
        run.refresh_from_db()
        assert (run.status, run.error_code, run.error) == ("failed", "SERVER_STOPPED", "The server running this block stopped.")
        assert run.finished is not None
    for run in (alive, untracked):
        run.refresh_from_db()
        assert run.status == "running"
    # The dead server's row goes once it has no unfinished run left.
    # (Servers this test process runs for other tests may have beaten meanwhile: only
    # the rows this test made are its business.)
    names = set(ServerProcess.objects.values_list("name", flat=True))
    assert "web-3:42-bb" in names and "web-2:41-aa" not in names


def test_it_knows_at_once_that_a_server_on_this_machine_is_gone(acme):
    # A process of this machine that exited: its pid no longer runs what it ran.
    process = subprocess.Popen(["sleep", "0"])
    process.wait()
    ServerProcess.objects.create(name=f"here:{process.pid}-dd", host="here", pid=process.pid, machine=reaper.machine_id(),
                                 pid_started=1, heartbeat=timezone.now())
    run = unfinished_run(acme, f"here:{process.pid}-dd")
    reaped = reaper.reap()
    run.refresh_from_db()
    # Failed at once, its heartbeat fresh: by this reap, or by the keeper of a server this
    # test process runs for other tests, which reaps what it finds too.
    assert reaped in ([run.id], []) and (run.status, run.error_code) == ("failed", "SERVER_STOPPED")
    # This very process, fresh heartbeat and same machine, is alive.
    reaper.beat("me:1-ee")
    mine = unfinished_run(acme, "me:1-ee", minutes_ago=10)
    assert reaper.reap() == []
    mine.refresh_from_db()
    assert mine.status == "running"


def test_a_run_finished_by_its_server_is_never_overwritten_by_a_reaper(acme):
    ServerProcess.objects.create(name="old:1-ff", host="old", pid=1, machine="elsewhere/1",
                                 heartbeat=timezone.now() - timedelta(hours=1))
    run = unfinished_run(acme, "old:1-ff")
    BlockRun.objects.filter(pk=run.pk).update(status="succeeded", result=42)
    assert reaper.reap() == []
    run.refresh_from_db()
    assert (run.status, run.result) == ("succeeded", 42)


def test_a_live_server_heartbeats_and_keeps_its_runs(run_block, acme, settings):
    settings.SYMPOSIUM_HEARTBEAT_SECONDS = 0.2
    run = run_block.start(acme, "await new Promise(() => {})")
    service = run_block.service()
    # (The database was emptied since this process's last heartbeat: wait for the next.)
    first = wait_until(lambda: ServerProcess.objects.filter(name=service.server_name).first(), 6, "a heartbeat").heartbeat
    # (Its keeper may still be in a sleep it began at the default 5 s.)
    wait_until(lambda: ServerProcess.objects.get(name=service.server_name).heartbeat > first, 7, "another heartbeat")
    assert ServerProcess.objects.get(name=service.server_name).runs_in_flight == 1
    assert run.server == service.server_name
    assert reaper.reap(alive=set()) == []  # alive by its heartbeat, not by being the caller
    run_block.stop(run.id)
    assert run_block.wait(run.id).status == "killed"
