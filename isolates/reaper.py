"""Heartbeats of server processes, and the reaper of runs whose server is gone.

A run is supervised by exactly one server process, the one that started it
(`BlockRun.server`). While that process lives, it ends the run itself (done, time
limit, crash, stop). When the process dies without doing so (SIGKILL, out of memory, a
machine lost), its isolates die with it (the kernel's parent-death signal, or their
broker connection closing), but its runs' records would stay `running` for ever and
count against the tenant's concurrency limit. The reaper fails them:

- every server process writes a heartbeat (`ServerProcess.heartbeat`) every
  SYMPOSIUM_HEARTBEAT_SECONDS;
- every server process, and `manage.py reapruns`, fails the unfinished runs of servers
  whose heartbeat is older than SYMPOSIUM_HEARTBEAT_STALE_SECONDS, or that are known to
  be gone at once (a process on this very machine whose pid no longer runs).

The update is one conditional UPDATE (`status in (queued, running)`), so several reapers
on several machines can run at the same time: each run is failed once, and a run that
its server finished in the meantime is left alone.
"""

import logging
import os
import secrets
import socket
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from isolates.runevents import run_group
from isolates.errors import run_error
from isolates.models import ServerProcess
from tenants.models import BlockRun

logger = logging.getLogger(__name__)

SERVER_STOPPED_CODE = "SERVER_STOPPED"
SERVER_STOPPED_MESSAGE = "The server running this block stopped."
UNFINISHED = ("queued", "running")


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def machine_id():
    """This kernel's boot and this pid namespace: pids are comparable only within both."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{_read('/proc/sys/kernel/random/boot_id')}/{namespace}"


def process_start_ticks(pid):
    """When process `pid` started, in clock ticks since boot (None when it is gone)."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def new_server_name():
    return f"{socket.gethostname()[:60]}:{os.getpid()}-{secrets.token_hex(3)}"


def beat(name, runs_in_flight=0):
    """Write this process's heartbeat (creating its row the first time)."""
    now = timezone.now()
    updated = ServerProcess.objects.filter(name=name).update(heartbeat=now, runs_in_flight=runs_in_flight)
    if not updated:
        ServerProcess.objects.update_or_create(name=name, defaults=dict(
            host=socket.gethostname()[:100], pid=os.getpid(), machine=machine_id(),
            pid_started=process_start_ticks(os.getpid()), heartbeat=now, runs_in_flight=runs_in_flight,
        ))


def forget(name):
    ServerProcess.objects.filter(name=name).delete()


def dead_servers(now=None, alive=()):
    """Names of servers whose heartbeat is stale, or that are gone from this machine."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.SYMPOSIUM_HEARTBEAT_STALE_SECONDS)
    here = machine_id()
    dead = []
    for name, heartbeat, machine, pid, pid_started in ServerProcess.objects.values_list(
            "name", "heartbeat", "machine", "pid", "pid_started"):
        if name in alive:
            continue
        if heartbeat < stale_before:
            dead.append(name)
        elif machine == here and pid_started is not None and process_start_ticks(pid) != pid_started:
            # Same kernel, same pid namespace: the process that wrote the row is gone
            # (or its pid now belongs to another process).
            dead.append(name)
    return dead


def reap(now=None, alive=()):
    """Fail the unfinished runs of dead servers. Returns the ids of the runs failed.

    `alive` names servers known to be alive whatever their row says (the calling process
    itself). A run whose server has no row at all is reaped too once it is older than
    the stale time: its server never beat, or its row was already removed."""
    now = now or timezone.now()
    dead = dead_servers(now, alive)
    known = set(ServerProcess.objects.values_list("name", flat=True))
    stale_before = now - timedelta(seconds=settings.SYMPOSIUM_HEARTBEAT_STALE_SECONDS)
    unfinished = BlockRun.objects.filter(status__in=UNFINISHED).exclude(server="")
    # Runs made without a server name (tests, imports) are nobody's to reap.
    candidates = set(unfinished.filter(server__in=dead).values_list("id", flat=True)[:10000])
    candidates |= set(
        unfinished.filter(created__lt=stale_before).exclude(server__in=known | set(alive)).values_list("id", flat=True)[:10000]
    )
    if not candidates:
        _prune(now, dead)
        return []
    with transaction.atomic():
        # The conditional update is the arbiter between reapers and a server finishing
        # its own run at the same moment: whoever writes first wins, nobody overwrites.
        reaped = list(BlockRun.objects.filter(id__in=candidates, status__in=UNFINISHED).values_list("id", flat=True))
        BlockRun.objects.filter(id__in=reaped, status__in=UNFINISHED).update(
            status="failed", error_code=SERVER_STOPPED_CODE, error=SERVER_STOPPED_MESSAGE, finished=now)
    if reaped:
        logger.warning("reaped %d run(s) of stopped servers: %s", len(reaped), ", ".join(sorted(reaped)[:20]))
    _prune(now, dead)
    return reaped


def _prune(now, dead):
    """Remove the rows of dead servers that have no unfinished run left."""
    if not dead:
        return
    busy = set(BlockRun.objects.filter(status__in=UNFINISHED, server__in=dead).values_list("server", flat=True))
    ServerProcess.objects.filter(name__in=[d for d in dead if d not in busy]).delete()


def announce(run_ids):
    """Tell whoever watches the reaped runs (the runner page) that they ended."""
    layer = get_channel_layer()
    if layer is None or not run_ids:
        return
    for run in BlockRun.objects.filter(id__in=run_ids):
        try:
            async_to_sync(layer.group_send)(run_group(run.id), finished_event(run))
        except Exception:
            logger.exception("announcing the end of reaped run %s failed", run.id)
            return


def finished_event(run):
    return {
        "type": "run.event", "run": run.id, "event": "finished", "status": run.status,
        "error_code": run.error_code, "error": run.error, "error_detail": run_error(run), "result": run.result,
        "duration": run.duration, "calls": run.calls, "bytes_in": run.bytes_in, "bytes_out": run.bytes_out,
        "peak_memory_bytes": run.peak_memory_bytes, "cpu_ms": run.cpu_ms, "console_truncated": run.console_truncated,
    }
