"""Starting, supervising and stopping block runs.

A `RunService` lives on the event loop of a server process (Daphne, or the in-process
server of `runblock`). It owns that process's isolate pool. Starting a run creates the
`BlockRun` record with a one-time token, hands a warm isolate the token, and supervises
the isolate until it exits: past the profile's time limit the isolate's process group is
killed and the run ends `timed_out`; an isolate that dies (out of memory, killed from
outside) ends its run `failed` with the reason. The broker records what the block itself
reports (its result or error); whichever outcome is written first stands.
"""

import asyncio
import logging
import os
import secrets
import socket
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from isolates.broker import control_group, run_group, token_hash
from tenants.models import BlockRun, PermissionProfile, Tenant
from tenants.policy import effective_policy

logger = logging.getLogger(__name__)

# Extra CPU seconds over the wall-clock limit before the kernel's RLIMIT_CPU stops an
# isolate: the supervisor's wall clock normally acts first; the rlimit is the backstop.
CPU_GRACE_SECONDS = 5
# How long after an isolate exits cleanly the supervisor waits for the broker to record
# the block's own outcome before calling the run failed.
DONE_GRACE_SECONDS = 2.0


class RunRefused(Exception):
    """A run that cannot start; code and message are shown to whoever asked."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class RunService:
    def __init__(self, broker_port, warm_size=None):
        from isolates.pool import IsolatePool

        self.broker_port = broker_port
        self.pool = IsolatePool(broker_port, warm_size=settings.SYMPOSIUM_WARM_ISOLATES if warm_size is None else warm_size)
        self.warming = False
        self.supervisors = {}
        self.isolates = {}
        self.stopping = {}
        self.server_name = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def broker_url(self):
        return f"ws://127.0.0.1:{self.broker_port}/ws/isolate/"

    async def warm_up(self):
        """Start keeping warm isolates for every profile's limits (once)."""
        if not self.warming:
            self.warming = True
            self.pool.keep_warm(await database_sync_to_async(profile_limits)())

    async def start(self, tenant, code, *, user=None, name="", input=None, source="runblock"):
        """Create the run and start supervising it. Raises RunRefused."""
        await self.warm_up()
        token = secrets.token_urlsafe(32)
        run, policy = await self._create_run(tenant, code, user, name, input, source, token)
        self.supervisors[run.id] = asyncio.ensure_future(self._supervise(run, token, policy))
        return run

    async def wait(self, run_id):
        task = self.supervisors.get(run_id)
        if task is not None:
            await asyncio.shield(task)
        return await database_sync_to_async(BlockRun.objects.get)(pk=run_id)

    async def stop(self, run_id, reason="Stopped by the user."):
        """Kill the run's isolate; the run ends `killed`."""
        self.stopping[run_id] = reason
        isolate = self.isolates.get(run_id)
        if isolate is not None:
            isolate.kill()
        elif run_id in self.supervisors:
            # Not yet on an isolate: the supervisor sees the stop before assigning one.
            pass
        else:
            await self._finish(run_id, "killed", "KILLED", reason)

    async def stop_all(self, reason="Stopped by the platform."):
        """Stop every run of this service and wait until each one is recorded."""
        for run_id in list(self.supervisors):
            await self.stop(run_id, reason)
        for task in list(self.supervisors.values()):
            try:
                await asyncio.wait_for(asyncio.shield(task), 10)
            except (asyncio.TimeoutError, Exception):
                logger.exception("a run did not stop")

    async def shutdown(self):
        await self.stop_all("The server is shutting down.")
        await self.pool.shutdown()

    # -- internals -------------------------------------------------------------------

    @database_sync_to_async
    def _create_run(self, tenant, code, user, name, input, source, token):
        tenant = Tenant.objects.select_related("profile").get(pk=tenant.pk)
        if not tenant.is_active:
            raise RunRefused("PERMISSION_DENIED", "This tenant is suspended; it can start no run.")
        policy = effective_policy(tenant)
        running = BlockRun.objects.filter(tenant=tenant, status__in=("queued", "running")).count()
        if running >= policy.concurrent_runs:
            raise RunRefused("RATE_LIMITED", f"This tenant already has {running} runs in progress, its limit; retry when one ends.")
        run = BlockRun.objects.create(
            tenant=tenant, user=user, source=source, name=name[:200], code=code, input=input,
            token_hash=token_hash(token), server=self.server_name,
        )
        return run, policy

    async def _supervise(self, run, token, policy):
        isolate = None
        try:
            if run.id in self.stopping:
                return await self._finish(run.id, "killed", "KILLED", self.stopping[run.id])
            isolate = await self.pool.acquire(memory_mb=policy.memory_mb, cpu_seconds=policy.time_limit_seconds + CPU_GRACE_SECONDS)
            self.isolates[run.id] = isolate
            if run.id in self.stopping:
                isolate.kill()
            await isolate.assign(self.broker_url, token)
            try:
                exit_info = await asyncio.wait_for(isolate.wait(), timeout=policy.time_limit_seconds)
            except asyncio.TimeoutError:
                isolate.kill()
                exit_info = await isolate.wait()
                await self._stop_broker(run.id, "time limit")
                await self._finish(run.id, "timed_out", "TIMEOUT",
                                   f"The run exceeded its time limit of {policy.time_limit_seconds} s and was stopped.", isolate)
                return
            if run.id in self.stopping:
                await self._finish(run.id, "killed", "KILLED", self.stopping[run.id], isolate)
                return
            if await self._await_outcome(run.id, exit_info):
                await self._record_figures(run.id, isolate)
                return
            code, message = describe_exit(exit_info, policy)
            await self._finish(run.id, "failed", code, message, isolate)
        except asyncio.CancelledError:
            if isolate is not None:
                isolate.kill()
            await self._finish(run.id, "killed", "KILLED", "The server stopped the run.", isolate)
            raise
        except Exception:
            logger.exception("supervising run %s failed", run.id)
            if isolate is not None:
                isolate.kill()
            await self._finish(run.id, "failed", "INTERNAL", "The platform could not run this block; the error is logged.")
        finally:
            self.isolates.pop(run.id, None)
            self.stopping.pop(run.id, None)
            self.supervisors.pop(run.id, None)
            await self._announce_finished(run.id)

    async def _await_outcome(self, run_id, exit_info):
        """Whether the broker recorded the block's own outcome (waiting a little for it
        when the isolate exited cleanly, as it does right after sending it)."""
        deadline = time.monotonic() + (DONE_GRACE_SECONDS if exit_info.returncode == 0 else 0.2)
        while True:
            status = await database_sync_to_async(
                lambda: BlockRun.objects.filter(pk=run_id).values_list("status", flat=True).first())()
            if status in BlockRun.FINISHED:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)

    async def _stop_broker(self, run_id, reason):
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(control_group(run_id), {"type": "run.stop", "reason": reason})

    @database_sync_to_async
    def _finish(self, run_id, status, code, message, isolate=None):
        from tenants import audit

        audit.flush()
        figures = isolate_figures(isolate)
        BlockRun.objects.filter(pk=run_id, status__in=("queued", "running")).update(
            status=status, error_code=code, error=message, finished=timezone.now())
        if figures:
            BlockRun.objects.filter(pk=run_id).update(**figures)

    @database_sync_to_async
    def _record_figures(self, run_id, isolate):
        figures = isolate_figures(isolate)
        if figures:
            BlockRun.objects.filter(pk=run_id).update(**figures)

    async def _announce_finished(self, run_id):
        layer = get_channel_layer()
        if layer is None:
            return
        run = await database_sync_to_async(BlockRun.objects.get)(pk=run_id)
        await layer.group_send(run_group(run_id), {
            "type": "run.event", "run": run_id, "event": "finished", "status": run.status,
            "error_code": run.error_code, "error": run.error, "result": run.result,
            "duration": run.duration, "calls": run.calls, "bytes_in": run.bytes_in, "bytes_out": run.bytes_out,
            "peak_memory_bytes": run.peak_memory_bytes, "console_truncated": run.console_truncated,
        })


def profile_limits():
    """The (memory, CPU) pairs of the profiles: the pool keeps warm isolates for each, so
    every profile's runs start warm. A tenant with overridden limits starts cold."""
    from django.db import DatabaseError

    try:
        profiles = list(PermissionProfile.objects.values_list("memory_mb", "time_limit_seconds"))
    except DatabaseError:
        return []
    return [(memory, seconds + CPU_GRACE_SECONDS) for memory, seconds in profiles]


def isolate_figures(isolate):
    if isolate is None:
        return {}
    figures = {}
    peak = getattr(isolate, "peak_rss", None)
    if peak:
        figures["peak_memory_bytes"] = int(peak)
    cpu = getattr(isolate, "cpu_seconds", None)
    if cpu is not None:
        figures["cpu_seconds"] = float(cpu)
    return figures


def describe_exit(exit_info, policy):
    """The error code and message of a run whose isolate ended without a result."""
    if exit_info.out_of_memory:
        return "MEMORY_LIMIT", f"The block ran out of memory (this tenant's limit is {policy.memory_mb} MB)."
    if exit_info.cpu_limit_hit:
        return "TIMEOUT", f"The block used more CPU time than its limit of {policy.time_limit_seconds} s."
    return "CRASHED", exit_info.reason


_services = {}


def service_for_port(port):
    """The run service of this process for isolates connecting back to `port`."""
    loop = asyncio.get_running_loop()
    key = (id(loop), port)
    if key not in _services:
        _services[key] = RunService(port)
    return _services[key]
