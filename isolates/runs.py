"""Starting, supervising and stopping block runs.

A `RunService` lives on the event loop of a server process (Daphne, or the in-process
server of `runblock`). It owns that process's isolate pool. Starting a run creates the
`BlockRun` record with a one-time token, hands a warm isolate the token, and supervises
the isolate until it exits: past the profile's time limit the isolate's process group is
killed and the run ends `timed_out`; past its CPU-time budget (a limit of its own,
measured on the isolate's process) it is killed and the run ends `failed` with
`CPU_LIMIT`; an isolate that dies (out of memory, killed from outside) ends its run
`failed` with the reason. The CPU a run used is recorded on it (`cpu_ms`). The broker records what the block itself
reports (its result or error); whichever outcome is written first stands.

Faults (docs/deploy.md): the service heartbeats its server process and reaps the runs of
servers that stopped (`isolates/reaper.py`); it refuses new runs past a per-process cap
(SYMPOSIUM_MAX_RUNS_PER_PROCESS) with "busy, retry after" instead of overloading the
machine; a run's last write is retried while the database restarts; and a process that
exits normally fails its unfinished runs on the way out.
"""

import asyncio
import atexit
import contextvars
import logging
import math
import secrets
import threading
import time
from datetime import timedelta

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections, router, transaction
from django.utils import timezone

from isolates import reaper
from isolates.broker import MAX_START_HOLD_SECONDS, hold_start, wait_closed
from isolates.pool import IsolatePool
from isolates.runevents import control_group, run_group
from isolates.session import forget_prepared, on_pool_thread, prepare_connection, read_tenant, read_tenant_shared, token_hash
from tenants import audit
from tenants.models import BlockRun, PermissionProfile, Tenant

logger = logging.getLogger(__name__)

# Extra CPU seconds over the run's CPU budget (rounded up to whole seconds) before the
# kernel's RLIMIT_CPU stops an isolate: the supervisor's own measurement acts first, to
# the millisecond; the rlimit is the backstop should the supervisor ever fall behind.
CPU_GRACE_SECONDS = 1
# How often the supervisor reads a running isolate's CPU time: half of what is left of
# the budget, so that it reads rarely while much is left (a few reads per run) and often
# near the end, within these bounds. The overshoot past the budget is at most the
# shortest interval times the threads that run at once (V8's JS thread and its helpers).
CPU_CHECK_MIN_SECONDS = 0.02
CPU_CHECK_MAX_SECONDS = 1.0
# How long after an isolate exits cleanly the supervisor waits for the broker to record
# the block's own outcome before calling the run failed.
DONE_GRACE_SECONDS = 2.0
# How long the supervisor waits for this process's broker to finish with a run whose
# isolate has exited (it may be relaying a backlog of console events).
CLOSE_GRACE_SECONDS = 30.0
# Database errors that mean "unavailable, try again" (a restart, a lost connection), as
# opposed to a bug.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)
# A run of this process that its supervisor no longer knows (its last write failed for
# longer than the retry window) is failed by the keeper once it is this old.
UNTRACKED_GRACE_SECONDS = 10
# Runs are created one at a time per process: on SQLite (the single-process setup) this
# is what makes "count, then create" atomic; PostgreSQL also locks the tenant's row.
_create_lock = threading.Lock()


class RunRefused(Exception):
    """A run that cannot start; code and message are shown to whoever asked. Codes:
    PERMISSION_DENIED (suspended tenant), RATE_LIMITED (the tenant's concurrent runs),
    BUSY (this server's cap on runs), UNAVAILABLE (the platform's database is down).
    `retry_after` (seconds) is set when trying again later can work."""

    def __init__(self, code, message, retry_after=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class RunService:
    def __init__(self, broker_port, warm_size=None):
        self.broker_port = broker_port
        self.pool = IsolatePool(broker_port, warm_size=settings.SYMPOSIUM_WARM_ISOLATES if warm_size is None else warm_size)
        self.warming = False
        self.supervisors = {}
        self.isolates = {}
        self.stopping = {}
        self.server_name = reaper.new_server_name()
        self.keeper = None
        self.beating = False
        self.starting = 0  # start() calls between the cap's check and their supervisor
        atexit.register(self._fail_unfinished_at_exit)

    @property
    def broker_url(self):
        return f"ws://127.0.0.1:{self.broker_port}/ws/isolate/"

    async def warm_up(self):
        """Start keeping warm isolates for every profile's limits, and the heartbeat (once)."""
        if not self.warming:
            self.warming = True
            self.pool.keep_warm(await database_sync_to_async(profile_limits)())
        if self.keeper is None:
            # A context of its own, as each run's supervisor has (see start()).
            self.keeper = asyncio.get_running_loop().create_task(self._keep(), context=contextvars.Context())

    async def start(self, tenant, code, *, user=None, name="", input=None, source="runblock", block=None, version=None,
                    not_before=None):
        """Create the run and start supervising it. Raises RunRefused. `block` and
        `version` name the saved block a run runs (blocks.models), if any. With
        `not_before` (Unix time, at most a few seconds ahead), the run is prepared now
        (its row, its isolate, the isolate's hello) and its block starts at that time."""
        in_progress = len(self.supervisors) + self.starting
        if in_progress >= settings.SYMPOSIUM_MAX_RUNS_PER_PROCESS:
            # Refused before any work: the runs in flight keep the machine to themselves.
            raise RunRefused("BUSY", f"This server is busy ({in_progress} runs in progress, its limit); retry in a few seconds.",
                             retry_after=2)
        self.starting += 1
        try:
            await self.warm_up()
            if not self.beating:
                # The server's row exists before its first run names it, so that no reaper
                # takes the run for an orphan.
                await database_sync_to_async(reaper.beat)(self.server_name, len(self.supervisors))
                self.beating = True
            token = secrets.token_urlsafe(32)
            # The tenant's policy and secrets as the broker reads them for every call:
            # one read a POLICY_TTL shared by the tenant's runs and calls on this server.
            context = await read_tenant_shared(tenant.pk)
            run, policy = await self._create_run(tenant, code, user, name, input, source, token, block, version, context)
        except UNAVAILABLE_ERRORS:
            logger.exception("starting a run failed")
            raise RunRefused("UNAVAILABLE", "The platform's database is unavailable; retry in a few seconds.", retry_after=5) from None
        finally:
            self.starting -= 1
        if not_before is not None:
            hold_start(run.id, not_before)
        # In a context of its own, not the caller's: a run started from an HTTP request
        # would otherwise carry that request's thread-sensitive context (asgiref's), and
        # each database call of the run (its start, its outcome, its figures) would get
        # a new thread, and with it a new database connection, once the request ended.
        self.supervisors[run.id] = asyncio.get_running_loop().create_task(
            self._supervise(run, token, policy, not_before), context=contextvars.Context())
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
        if self.keeper is not None:
            self.keeper.cancel()
        await self.stop_all("The server is shutting down.")
        await self.pool.shutdown()
        try:
            await database_sync_to_async(reaper.forget)(self.server_name)
        except Exception:
            logger.exception("removing the heartbeat of %s failed", self.server_name)

    # -- heartbeat and reaping ---------------------------------------------------------

    async def _keep(self):
        """Heartbeat this process, and reap the runs of servers that stopped, for as long
        as the service lives."""
        failures = 0
        while True:
            try:
                await database_sync_to_async(reaper.beat)(self.server_name, len(self.supervisors))
                self.beating = True
                reaped = await database_sync_to_async(reaper.reap)(alive={self.server_name})
                reaped += await database_sync_to_async(self._fail_untracked)(set(self.supervisors))
                await self._announce_reaped(reaped)
                if failures:
                    logger.warning("heartbeat of %s works again after %d failed attempts", self.server_name, failures)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if isinstance(e, RuntimeError) and "shutdown" in str(e):
                    return  # the interpreter is exiting
                # Best effort: the next beat tries again; a stale heartbeat costs this
                # server its runs only after SYMPOSIUM_HEARTBEAT_STALE_SECONDS. Said once,
                # then once a minute, while it lasts.
                if failures % max(1, int(60 / settings.SYMPOSIUM_HEARTBEAT_SECONDS)) == 0:
                    logger.warning("heartbeat of %s failed: %s", self.server_name, str(e).strip()[:200])
                failures += 1
            await asyncio.sleep(settings.SYMPOSIUM_HEARTBEAT_SECONDS)

    def _fail_untracked(self, supervised):
        """Runs of this process that no supervisor follows any more (their last write was
        lost while the database was down): failed, never left running."""
        old = timezone.now() - timedelta(seconds=UNTRACKED_GRACE_SECONDS)
        ids = set(BlockRun.objects.filter(server=self.server_name, status__in=reaper.UNFINISHED, created__lt=old)
                  .values_list("id", flat=True)) - supervised
        if not ids:
            return []
        BlockRun.objects.filter(id__in=ids, status__in=reaper.UNFINISHED).update(
            status="failed", error_code="INTERNAL", finished=timezone.now(),
            error="The platform lost track of this run while its database was unavailable; it was stopped.")
        return sorted(ids)

    async def _announce_reaped(self, run_ids):
        if not run_ids:
            return
        layer = get_channel_layer()
        runs = await database_sync_to_async(lambda: list(BlockRun.objects.filter(id__in=run_ids)))()
        for run in runs:
            try:
                await layer.group_send(run_group(run.id), reaper.finished_event(run))
            except Exception:
                logger.exception("announcing the end of reaped run %s failed", run.id)
                return

    def _fail_unfinished_at_exit(self):
        """At a normal exit of the process (Daphne stopped with SIGTERM) its isolates die
        with it: say so in their runs at once instead of waiting for the reaper."""
        if not self.supervisors:
            return
        try:
            BlockRun.objects.filter(server=self.server_name, status__in=reaper.UNFINISHED).update(
                status="failed", error_code=reaper.SERVER_STOPPED_CODE, error=reaper.SERVER_STOPPED_MESSAGE,
                finished=timezone.now())
            reaper.forget(self.server_name)
        except Exception:
            pass  # the reaper of another process (or the next one) does it

    # -- internals -------------------------------------------------------------------

    async def _create_run(self, tenant, code, user, name, input, source, token, block=None, version=None, context=None):
        return await on_pool_thread(create_run)(
            tenant, code, user=user, name=name, input=input, source=source, token=token, server=self.server_name,
            block=block, version=version, context=context)

    async def _supervise(self, run, token, policy, not_before=None):
        isolate = None
        try:
            if run.id in self.stopping:
                return await self._finish(run.id, "killed", "KILLED", self.stopping[run.id])
            isolate = await self.pool.acquire(memory_mb=policy.memory_mb, cpu_seconds=cpu_rlimit_seconds(policy))
            self.isolates[run.id] = isolate
            if run.id in self.stopping:
                isolate.kill()
            # The run's CPU is counted from here: the isolate's start-up is the platform's.
            cpu_start = isolate.cpu_time() or 0.0
            await isolate.assign(self.broker_url, token)
            # A held start (not_before) does not count against the block's time.
            held = min(max(0.0, (not_before or 0) - time.time()), MAX_START_HOLD_SECONDS)
            ended, exit_info = await self._watch(isolate, policy, cpu_start, held)
            if ended == "time":
                await self._stop_broker(run.id, "time limit")
                await self._finish(run.id, "timed_out", "TIMEOUT",
                                   f"The run exceeded its time limit of {policy.time_limit_seconds} s and was stopped.", isolate, cpu_start)
                return
            if ended == "cpu":
                await self._stop_broker(run.id, "CPU time limit")
                await self._finish(run.id, "failed", "CPU_LIMIT", cpu_limit_message(policy), isolate, cpu_start)
                return
            if run.id in self.stopping:
                await self._finish(run.id, "killed", "KILLED", self.stopping[run.id], isolate, cpu_start)
                return
            if await self._await_outcome(run.id, exit_info):
                await self._record_figures(run.id, isolate, cpu_start)
                return
            code, message = describe_exit(exit_info, policy)
            await self._finish(run.id, "failed", code, message, isolate, cpu_start)
        except asyncio.CancelledError:
            if isolate is not None:
                isolate.kill()
            await self._finish(run.id, "killed", "KILLED", "The server stopped the run.", isolate)
            raise
        except Exception:
            logger.exception("supervising run %s failed", run.id)
            if isolate is not None:
                isolate.kill()
            try:
                await self._finish(run.id, "failed", "INTERNAL", "The platform could not run this block; the error is logged.")
            except UNAVAILABLE_ERRORS:
                pass  # logged; the keeper fails the run once the database is back
        finally:
            forget_prepared(run)
            self.isolates.pop(run.id, None)
            self.stopping.pop(run.id, None)
            self.supervisors.pop(run.id, None)
            await self._announce_finished(run.id)

    async def _watch(self, isolate, policy, cpu_start, held=0.0):
        """Wait for the isolate to exit, killing it past the run's wall-clock limit (plus
        the time its start was `held`) or its CPU budget. Returns ("exit" | "time" |
        "cpu", the exit record)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.time_limit_seconds + held
        budget = policy.cpu_time_limit_ms / 1000
        exited = asyncio.ensure_future(isolate.wait())
        try:
            while True:
                used = (isolate.cpu_time() or cpu_start) - cpu_start
                if used >= budget and not exited.done():
                    isolate.kill()
                    return "cpu", await exited
                left = deadline - loop.time()
                if left <= 0 and not exited.done():
                    isolate.kill()
                    return "time", await exited
                interval = min(max((budget - used) / 2, CPU_CHECK_MIN_SECONDS), CPU_CHECK_MAX_SECONDS, max(left, 0))
                await asyncio.wait({exited}, timeout=interval)
                if exited.done():
                    return "exit", exited.result()
        finally:
            if not exited.done():
                exited.cancel()

    async def _await_outcome(self, run_id, exit_info):
        """Whether the broker recorded the block's own outcome (waiting a little for it
        when the isolate exited cleanly, as it does right after sending it). While the
        database is unavailable the broker cannot record it either: wait for it longer."""
        # The broker records the outcome before it lets go of the run's connection, and
        # it may still be relaying the run's last events: wait for it to close first.
        await wait_closed(run_id, CLOSE_GRACE_SECONDS)
        started = time.monotonic()
        deadline = started + (DONE_GRACE_SECONDS if exit_info.returncode == 0 else 0.2)
        while True:
            try:
                status = await database_sync_to_async(
                    lambda: BlockRun.objects.filter(pk=run_id).values_list("status", flat=True).first())()
            except UNAVAILABLE_ERRORS:
                status = None
                deadline = max(deadline, min(time.monotonic() + 1, started + settings.SYMPOSIUM_FINISH_RETRY_SECONDS))
                await asyncio.sleep(0.5)
            if status in BlockRun.FINISHED:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)

    async def _stop_broker(self, run_id, reason):
        layer = get_channel_layer()
        if layer is not None:
            try:
                await layer.group_send(control_group(run_id), {"type": "run.stop", "reason": reason})
            except Exception:
                # The isolate is killed already; its broker connection ends with it.
                logger.warning("telling the broker of run %s to stop failed", run_id)

    async def _finish(self, run_id, status, code, message, isolate=None, cpu_start=0.0):
        """Record how the run ended (unless an outcome was recorded first), retrying
        while the database restarts."""
        await self._write_retrying(self._finish_sync, run_id, status, code, message, isolate_figures(isolate, cpu_start))

    def _finish_sync(self, run_id, status, code, message, figures):
        audit.flush()
        BlockRun.objects.filter(pk=run_id, status__in=reaper.UNFINISHED).update(
            status=status, error_code=code, error=message, finished=timezone.now())
        if figures:
            BlockRun.objects.filter(pk=run_id).update(**figures)

    async def _record_figures(self, run_id, isolate, cpu_start=0.0):
        figures = isolate_figures(isolate, cpu_start)
        if figures:
            await self._write_retrying(lambda: BlockRun.objects.filter(pk=run_id).update(**figures))

    async def _write_retrying(self, write, *args):
        give_up = time.monotonic() + settings.SYMPOSIUM_FINISH_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                return await database_sync_to_async(write)(*args)
            except UNAVAILABLE_ERRORS as e:
                if time.monotonic() + delay > give_up:
                    # The keeper fails the run once the database is back (_fail_untracked).
                    logger.error("recording the end of a run failed for %d s: %s", settings.SYMPOSIUM_FINISH_RETRY_SECONDS, str(e).strip()[:200])
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def _announce_finished(self, run_id):
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            run = await database_sync_to_async(BlockRun.objects.get)(pk=run_id)
            await layer.group_send(run_group(run_id), reaper.finished_event(run))
        except Exception:
            # Watchers read the run's record themselves (the runner page does on reconnect).
            logger.warning("announcing the end of run %s failed", run_id)


def cpu_rlimit_seconds(policy_or_ms):
    """RLIMIT_CPU of a run's isolate (the pool adds its start-up allowance): the CPU budget
    rounded up to whole seconds, plus the grace after which the kernel's backstop acts."""
    ms = getattr(policy_or_ms, "cpu_time_limit_ms", policy_or_ms)
    return math.ceil(ms / 1000) + CPU_GRACE_SECONDS


def cpu_limit_message(policy):
    return f"The run used up its CPU time limit of {policy.cpu_time_limit_ms} ms and was stopped."


def profile_limits():
    """The (memory, CPU) pairs of the profiles: the pool keeps warm isolates for each, so
    every profile's runs start warm. A tenant with overridden limits starts cold."""
    try:
        profiles = list(PermissionProfile.objects.values_list("memory_mb", "cpu_time_limit_ms"))
    except DatabaseError:
        return []
    return [(memory, cpu_rlimit_seconds(cpu_ms)) for memory, cpu_ms in profiles]


def isolate_figures(isolate, cpu_start=0.0):
    """The run's peak memory and the CPU it used (since `cpu_start`, the isolate's CPU
    seconds when it was assigned the run), as BlockRun fields."""
    if isolate is None:
        return {}
    figures = {}
    peak = getattr(isolate, "peak_rss", None)
    if peak:
        figures["peak_memory_bytes"] = int(peak)
    cpu = getattr(isolate, "cpu_seconds", None)
    if cpu is not None:
        figures["cpu_ms"] = max(0, round((float(cpu) - cpu_start) * 1000))
    return figures


def describe_exit(exit_info, policy):
    """The error code and message of a run whose isolate ended without a result."""
    if exit_info.out_of_memory:
        return "MEMORY_LIMIT", f"The block ran out of memory (this tenant's limit is {policy.memory_mb} MB)."
    if exit_info.cpu_limit_hit:
        # The kernel's backstop (RLIMIT_CPU): the supervisor's own check came too late.
        return "CPU_LIMIT", cpu_limit_message(policy)
    if exit_info.returncode == 0:
        # The block ended and said so, but its outcome never reached the run's record.
        return "INTERNAL", "The block finished, but its outcome could not be recorded (the platform's database or message layer failed)."
    return "CRASHED", exit_info.reason


def create_run(tenant, code, *, user=None, name="", input=None, source="runblock", token, server, block=None, version=None,
               context=None):
    """Create a run of the tenant unless it is suspended or at its concurrency limit.

    `context` is ((tenant, policy, run secrets), read at) as isolates.session's
    read_tenant_shared gives it: the policy a new run is held to is at most POLICY_TTL
    old, as the policy of every call is. Without it the tenant is read here.

    Two queries in one transaction: the tenant's is_active, read fresh (a suspension
    stops new runs at once), and the run's insert, made only if the tenant has fewer runs
    in progress than its limit (insert_with_room). The count and the insert are one
    statement, or two servers starting runs for the same tenant at the same moment could
    both see room for one more. On PostgreSQL the first query locks the tenant's row
    (SELECT ... FOR UPDATE) until the commit, which serialises run creation per tenant
    across every server process of the platform, and the insert's count, a statement of
    its own, sees every run committed before the lock was had; on SQLite, which has one
    server process, a lock in the process does it. A refusal reads the count once more,
    for its message."""
    if context is None:
        context = (read_tenant(tenant.pk), time.monotonic())
    (tenant, policy, run_secrets), read_at = context
    run = BlockRun(
        tenant=tenant, user=user, source=source, name=name[:200], code=code, input=input,
        token_hash=token_hash(token), token_used=True, server=server, block=block, version=version,
    )
    with _create_lock, transaction.atomic():
        active = list(Tenant.objects.select_for_update().filter(pk=tenant.pk).order_by().values_list("is_active", flat=True))
        if active != [True]:
            raise RunRefused("PERMISSION_DENIED", "This tenant is suspended; it can start no run.")
        if not insert_with_room(run, policy.concurrent_runs):
            running = BlockRun.objects.filter(tenant_id=tenant.pk, status__in=reaper.UNFINISHED).count()
            raise RunRefused("RATE_LIMITED", f"This tenant already has {running} runs in progress, its limit; retry when one ends.",
                             retry_after=1)
    # The isolate connects back to this process's broker: hand it the run and what it
    # would read from the database again when the isolate says hello. The row is made
    # claimed (token_used): the token is good for this process's broker only, once.
    prepare_connection(run, tenant, policy, run_secrets, read_at)
    return run, policy


def insert_with_room(run, limit):
    """Insert the unsaved `run` (its id is made in Python) if its tenant has fewer than
    `limit` runs in progress, in one statement: INSERT ... SELECT <values> WHERE (SELECT
    COUNT(*) ...) < limit. True if it was inserted. Each value is prepared for the
    database by its field, as Model.save() would."""
    connection = connections[router.db_for_write(BlockRun)]
    quote = connection.ops.quote_name
    fields = BlockRun._meta.local_concrete_fields
    values = [field.get_db_prep_save(field.pre_save(run, True), connection) for field in fields]
    table = quote(BlockRun._meta.db_table)
    statement = (
        f"INSERT INTO {table} ({', '.join(quote(field.column) for field in fields)}) "
        f"SELECT {', '.join(['%s'] * len(fields))} "
        f"WHERE (SELECT COUNT(*) FROM {table} WHERE {quote('tenant_id')} = %s "
        f"AND {quote('status')} IN ({', '.join(['%s'] * len(reaper.UNFINISHED))})) < %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, [*values, run.tenant_id, *reaper.UNFINISHED, limit])
        inserted = cursor.rowcount == 1
    if inserted:
        run._state.adding, run._state.db = False, connection.alias
    return inserted


_services = {}


def service_for_port(port):
    """The run service of this process for isolates connecting back to `port`."""
    loop = asyncio.get_running_loop()
    key = (id(loop), port)
    if key not in _services:
        _services[key] = RunService(port)
    return _services[key]
