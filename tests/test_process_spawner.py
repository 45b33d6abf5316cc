"""The spawner that forks sandboxed commands (capabilities.process.spawner): commands go
through it, a dead one is replaced, nothing but the server can reach it, and nothing it
started outlives the server."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from capabilities.process import sandbox, spawner
from tests.test_process import advanced, fresh_usage_cache, run  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not sandbox.available(), reason="bubblewrap is not installed")

ROOT = Path(__file__).resolve().parent.parent


def bwrap_parents_during(call):
    """The parents of the bubblewrap processes that `call` starts (seen while it runs)."""
    seen = set()

    def watch():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(seen) < 2:
            for entry in os.listdir("/proc"):
                try:
                    status = Path(f"/proc/{entry}/status").read_text() if entry.isdigit() else ""
                except OSError:
                    continue
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                if fields.get("Name", "").strip() == "bwrap":
                    seen.add(int(fields["PPid"]))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert call()["data"]["exitCode"] == 0
    watcher.join()
    return seen


def resident_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def test_it_forks_commands_from_a_small_process_of_its_own(advanced):
    assert run(advanced, "echo", ["hello"])["data"]["stdout"] == "hello\n"
    helper = spawner.spawner()
    assert helper.alive() and helper.process.pid != os.getpid()
    # The spawner holds the standard library only: a fork of it copies a few MB of page
    # tables, not the server's hundreds.
    assert resident_mb(helper.process.pid) < 30 < resident_mb(os.getpid())
    # bubblewrap is the spawner's child, not the server's.
    parents = bwrap_parents_during(lambda: run(advanced, "sleep", ["1"]))
    assert helper.process.pid in parents and os.getpid() not in parents


def test_it_starts_another_spawner_when_it_dies(advanced):
    assert run(advanced, "echo", ["one"])["data"]["stdout"] == "one\n"
    first = spawner.spawner().process.pid
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    assert run(advanced, "echo", ["two"])["data"]["stdout"] == "two\n"
    assert spawner.spawner().process.pid != first


def test_it_says_why_a_command_could_not_start():
    with pytest.raises(spawner.SpawnFailed) as failure:
        spawner.spawner().spawn(["/nonexistent/program"], plan=None, report_fd=None, pass_fds=[], stdin_data=False, timeout=5)
    assert failure.value.errno == 2  # ENOENT, from the spawner's child


def test_cant_connect_to_the_spawner_from_anywhere(advanced):
    run(advanced, "echo", ["x"])
    pid = spawner.spawner().process.pid
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    assert inodes
    # /proc/net/unix: Num RefCount Protocol Flags Type St Inode [Path]
    rows = [line.split() for line in Path("/proc/net/unix").read_text().splitlines()[1:]]
    theirs = [row for row in rows if row[6] in inodes]
    assert theirs and all(len(row) == 7 for row in theirs), theirs  # no path, no abstract name
    assert all(int(row[3], 16) & 0x10000 == 0 for row in theirs)  # none is listening (__SO_ACCEPTCON)


def test_cant_outlive_the_server_through_the_spawner(tmp_path):
    # A server process whose command runs a minute; the server is killed outright.
    script = f"""
import os, sys, time
sys.path.insert(0, {str(ROOT)!r})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "symposium.settings")
import django
django.setup()
from capabilities.process import spawner
helper = spawner.spawner()
spawned = helper.spawn(["/bin/sleep", "60"], plan=None, report_fd=None, pass_fds=[], stdin_data=False, timeout=5)
print(helper.process.pid, spawned.pid, flush=True)
time.sleep(60)
"""
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")})
    try:
        helper_pid, command_pid = map(int, server.stdout.readline().split())
        assert Path(f"/proc/{command_pid}").exists()
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (alive(helper_pid) or alive(command_pid)):
        time.sleep(0.05)
    assert not alive(command_pid) and not alive(helper_pid)


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_it_runs_commands_without_it_too(advanced, settings):
    settings.SYMPOSIUM_PROCESS_SPAWNER = False
    assert run(advanced, "echo", ["forked"])["data"]["stdout"] == "forked\n"
    assert os.getpid() in bwrap_parents_during(lambda: run(advanced, "sleep", ["1"]))
