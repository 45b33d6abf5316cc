"""Running a capability call: inline in a thread, or as an RQ job.

The broker hands every allowed call to `dispatch_call(op, ctx, args)` and sends back the
reply it returns; everything between is here: the tenant's fair share of the executors
(`capabilities/fairness.py`), the path (inline, or RQ for the capabilities in
settings.SYMPOSIUM_RQ_CAPABILITIES when Redis is configured), the call's deadline, and on
the RQ path the job watcher and retries. `execute_operation` is the one place a handler
is called, on both paths, so both give the same results and errors.

On the RQ path the job pushes its reply onto its broker's reply list in the same Redis
(`symposium:replies:<id>`, one per event loop of a server process, see `JobWatcher`), in
one MULTI/EXEC with its "done" mark; the broker's reader takes it off with BLPOP and
`deliver_reply` wakes the `dispatch_call` waiting for it. A reply that finds no reader
(its server stopped) expires with the list, REPLY_TTL after the last push.

A worker can die in the middle of a call (SIGKILL, out of memory, its machine lost), and
RQ itself only notices minutes later. So every job marks its progress in Redis, and the
`JobWatcher` of the broker's process looks at those marks twice a second:

    symposium:call:<job>:claim   "worker" once a worker starts the job, "done" once its
                                 reply is sent, "abandoned" once the broker gave up on it
    symposium:call:<job>:alive   refreshed every JOB_HEARTBEAT_SECONDS by a thread of the
                                 job, expires JOB_HEARTBEAT_TTL_MS after the worker stops

The claim is taken with SET NX by whichever comes first, the worker starting the job or
the broker abandoning it, so a job the broker gave up on never runs afterwards. What
`dispatch_call` then does (queue it again, or fail the call with a clear error) is
decided by the operation's `idempotent` flag (`may_retry`); each lost attempt is reported
with the reply (`lost_attempts`) for the audit log.
"""

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import threading
import time
import uuid

import django_rq
import msgpack
import redis
import redis.asyncio
from django.conf import settings
from django.db import InterfaceError, OperationalError
from rq import Callback, get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from capabilities import fairness
from capabilities.base import CapabilityError
from capabilities.registry import OPERATIONS

logger = logging.getLogger(__name__)

# Inline calls run in this pool. Its size bounds how many handler calls one server
# process runs at once; a tenant holds at most its share of it (capabilities/fairness.py),
# and its calls beyond the share wait in its own queue (their deadline still runs).
_executor = concurrent.futures.ThreadPoolExecutor(
    max_workers=settings.SYMPOSIUM_INLINE_THREADS, thread_name_prefix="capability"
)


def execute_operation(op_name, ctx, args):
    """Run one call's handler. Returns {"ok": True, "envelope": {...}} or
    {"ok": False, "error": {...}}. Never raises."""
    op = OPERATIONS[op_name]
    try:
        result = op.handler(ctx, args)
        if not isinstance(result, dict):
            raise TypeError(f"{op_name} handler returned {type(result).__name__}")
        return {"ok": True, "envelope": result}
    except CapabilityError as e:
        reply = {"ok": False, "error": e.as_error()}
        if getattr(e, "attempts", None) is not None:
            reply["attempts"] = e.attempts  # webhook deliveries, for the audit log
        return reply
    except Exception as e:
        unavailable = unavailable_service(e)
        if unavailable:
            # Not a bug: a part of the platform is restarting. Say which, and that a
            # retry can work.
            logger.warning("capability %s failed: %s unavailable: %s", op_name, unavailable, str(e)[:200])
            return unavailable_reply(op_name, unavailable)
        # A bug in a handler: the log has the traceback, the block gets no internals.
        logger.exception("capability %s failed", op_name)
        return {"ok": False, "error": {"code": "INTERNAL", "message": f"{op_name} failed because of an internal error."}}


def unavailable_service(error):
    """Which part of the platform an exception says is unreachable ("database", "Redis"),
    or None when it is something else (a bug)."""
    if isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return "Redis"
    if isinstance(error, (OperationalError, InterfaceError)):
        return "database"
    return None


def unavailable_reply(op_name, service):
    what = {"Redis": "the platform's job queue and shared state (Redis)", "database": "the platform's database"}[service]
    return {"ok": False, "error": {"code": "INTERNAL", "retryAfter": 1,
                                   "message": f"{op_name} could not run: {what} is unavailable right now; retry shortly."}}


def uses_rq(capability):
    return bool(settings.REDIS_URL) and capability in settings.SYMPOSIUM_RQ_CAPABILITIES


# -- one call: dispatch_call -------------------------------------------------------------


async def dispatch_call(op, ctx, args):
    """Run one allowed call of `op` and return its reply ({"ok": True, "envelope": ...}
    or {"ok": False, "error": ...}, plus `lost_attempts` when RQ jobs of it were lost).
    Never raises but for cancellation.

    `ctx.deadline` bounds everything, waiting for the tenant's share included: past it
    the reply is TIMEOUT (a handler thread or a job still running keeps its tenant's slot
    until it ends)."""
    left = ctx.time_left()
    try:
        # One timer for the whole call, whichever path it takes.
        async with asyncio.timeout(None if left is None else max(0.0, left)):
            if uses_rq(op.capability):
                return await _call_rq(op, ctx, args)
            return await _call_inline(op, ctx, args)
    except TimeoutError:
        return timeout_reply(op.name, left)


def timeout_reply(op_name, seconds):
    within = f" within {max(1, round(seconds))} s" if seconds is not None else ""
    return {"ok": False, "error": {"code": "TIMEOUT", "message": f"{op_name} got no reply{within}."}}


async def _call_inline(op, ctx, args):
    """On this process's thread pool, within the tenant's share of its threads; an
    operation marked `on_loop` right here (it holds no thread, so no share either)."""
    if op.on_loop and settings.SYMPOSIUM_CALLS_ON_LOOP:
        return execute_operation(op.name, ctx, args)
    slots = fairness.slots_for("inline", ctx.tenant_id)
    await slots.acquire(fairness.share(ctx.policy.concurrent_calls, settings.SYMPOSIUM_INLINE_THREADS))
    # Submitted only with a slot in hand, so the pool's own queue never holds more than a
    # share of any tenant. The slot is given back when the thread is done with the
    # handler, not when the block stops waiting for it.
    future = _executor.submit(execute_operation, op.name, ctx, args)
    future.add_done_callback(lambda _: slots.release_threadsafe())
    return await asyncio.wrap_future(future)


# Replies of RQ jobs this process waits for: call key -> (future, ids of the call's jobs
# given up on). Registered before the job is queued: a fast worker's reply can be on the
# reply list, and read, before the thread that queued the job is back on the loop. A
# late reply of an attempt given up on (its worker taken for dead) is ignored.
_awaiting = {}
_call_keys = itertools.count(1)


def deliver_reply(event):
    """A worker's reply, {"key", "reply", "job"}, taken off this loop's reply list."""
    if not isinstance(event, dict) or not isinstance(event.get("key"), int):
        return
    entry = _awaiting.get(event["key"])
    if entry is None:
        return  # answered already (timed out), or the run is over
    future, given_up = entry
    if isinstance(event.get("job"), str) and event["job"] in given_up:
        return  # from an attempt given up on
    if not future.done():
        future.set_result(event.get("reply") or {})


async def _call_rq(op, ctx, args):
    """Queue the call as an RQ job within the tenant's share of the workers, and wait for
    its reply while watching the job: a job whose worker died is queued again when that
    is safe, or answered at once with what happened, instead of leaving the block to wait
    for its deadline."""
    ctx = ctx.bounded(settings.RQ_QUEUES["capabilities"]["DEFAULT_TIMEOUT"])
    watcher = job_watcher()
    slots = fairness.slots_for("rq", ctx.tenant_id)
    await slots.acquire(fairness.share(ctx.policy.concurrent_calls, await watcher.worker_count()))
    key = next(_call_keys)
    loop = asyncio.get_running_loop()
    lost = []  # one audit row's worth per attempt lost with its worker
    given_up = set()  # the ids of those attempts' jobs
    job_id = None  # the job in flight, if any: its slot is held until it ends
    slot_passed_on = False
    try:
        for attempt in range(settings.SYMPOSIUM_RQ_RETRIES + 1):
            reply = loop.create_future()
            _awaiting[key] = (reply, given_up)
            enqueuing = asyncio.ensure_future(asyncio.to_thread(enqueue, op.name, ctx, args, watcher.inbox, key, ctx.time_left()))
            try:
                job = await asyncio.shield(enqueuing)
            except asyncio.CancelledError:
                # The job may still be queued by the thread: the slot goes with it.
                enqueuing.add_done_callback(functools.partial(_linger_queued, watcher, ctx.deadline, slots.release))
                slot_passed_on = True
                raise
            except Exception as e:
                if unavailable_service(e) is None:
                    logger.exception("enqueueing %s failed", op.name)
                return with_lost({"ok": False, "error": {
                    "code": "INTERNAL", "retryAfter": 1,
                    "message": f"{op.name} could not be queued: the platform's job queue (Redis) is unavailable; retry shortly."}}, lost)
            job_id = job.id
            gone = watcher.watch(job_id, ctx.deadline)
            try:
                await asyncio.wait((reply, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.forget(job_id)
            if reply.done():
                job_id = None  # the worker sent its reply: it is done with the job
                return with_lost(reply.result(), lost)
            reason = gone.result()
            given_up.add(job_id)
            job_id = None  # lost: no worker runs it any more (its claim says abandoned)
            retry = may_retry(reason, op.idempotent) and attempt < settings.SYMPOSIUM_RQ_RETRIES and ctx.timeout(2) > 1
            message = lost_reply(op.name, reason)["error"]["message"]
            lost.append({"outcome": "failed", "error_code": "INTERNAL",
                         "message": message + (" It was queued again." if retry else "")})
            if not retry:
                break
        return with_lost(lost_reply(op.name, reason), lost)
    finally:
        _awaiting.pop(key, None)
        if slot_passed_on:
            pass
        elif job_id is None:
            slots.release()
        else:
            # Timed out or cancelled with the job queued or running: the tenant's slot
            # stays held until the job is off the workers.
            watcher.linger(job_id, ctx.deadline, slots.release)


def _linger_queued(watcher, deadline, release, enqueuing):
    """A job queued after its call gave up keeps the slot until it is off the workers."""
    if enqueuing.cancelled() or enqueuing.exception() is not None:
        release()
    else:
        watcher.linger(enqueuing.result().id, deadline, release)


def with_lost(reply, lost):
    if lost:
        reply = {**reply, "lost_attempts": lost}
    return reply


_queues = {}


def capabilities_queue():
    """The RQ queue calls are enqueued on, made once per process: its Redis client (and
    with it a pool of kept connections) is shared by every enqueue, instead of a new
    connection for each."""
    url = settings.RQ_QUEUES["capabilities"]["URL"]
    queue = _queues.get(url)
    if queue is None:
        queue = _queues[url] = django_rq.get_queue("capabilities")
    return queue


def enqueue(op_name, ctx, args, inbox, call_key, timeout):
    """Queue the call as an RQ job; its reply is pushed onto the list `inbox`."""
    queue = capabilities_queue()
    # A failed connection is retried by redis-py on the next command; a Redis that is
    # down fails at once with ConnectionError (the call is answered so). RQ's writes
    # (the queue's name in its set, the job, its id on the queue) go in one MULTI/EXEC
    # of ours, one round trip, where RQ alone makes two.
    with queue.connection.pipeline() as pipe:
        job = queue.enqueue(
            "capabilities.dispatch.run_job",
            op_name, ctx, args, inbox, call_key,
            job_timeout=max(1, int(timeout) + 5),
            ttl=max(1, int(timeout)),  # a job nobody took before the deadline is dropped
            result_ttl=0,
            failure_ttl=3600,
            description=f"{op_name} for {ctx.tenant_slug} run {ctx.run_id}",
            on_failure=Callback(report_job_failure),
            pipeline=pipe,
        )
        pipe.execute()
    return job


INTERNAL_REPLY = {"ok": False, "error": {"code": "INTERNAL", "message": "The call failed because of an internal error."}}
# A reply list outlives its last push by this long: replies that find no reader (their
# server stopped) are gone after it, and a reader reads a reply within milliseconds.
REPLY_TTL = 60


def reply_payload(call_key, reply, job_id):
    """The reply as it travels (msgpack, bytes kept as bytes). A reply that cannot be
    packed (a handler's bug) travels as an INTERNAL error, never as nothing."""
    try:
        return msgpack.packb({"key": call_key, "reply": reply, "job": job_id}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        logger.exception("a reply could not be packed")
        return reply_payload(call_key, INTERNAL_REPLY, job_id)


def push_reply(pipe, inbox, call_key, reply, job_id):
    """Queue the reply's push onto `inbox` on a Redis pipeline."""
    pipe.rpush(inbox, reply_payload(call_key, reply, job_id))
    pipe.expire(inbox, REPLY_TTL)


def send_reply(connection, inbox, call_key, reply, job_id=None):
    pipe = connection.pipeline(transaction=False)
    push_reply(pipe, inbox, call_key, reply, job_id)
    pipe.execute()


def report_job_failure(job, connection, exc_type, exc_value, tb):
    """RQ's failure callback: a job that raised or ran past its timeout still answers
    its call at once, instead of leaving the block to wait for its deadline."""
    op_name, ctx, args, inbox, call_key = job.args
    try:
        if connection.get(claim_key(job.id)) == b"abandoned":
            return  # the broker gave up on this job already and answered the call
    except Exception:
        pass
    if exc_type is not None and issubclass(exc_type, JobTimeoutException):
        reply = {"ok": False, "error": {"code": "TIMEOUT", "message": f"{op_name} ran past its time limit and was stopped."}}
    elif exc_type is not None and exc_type.__name__ in ("AbandonedJobError", "WorkHorseTerminated"):
        reply = worker_stopped_reply(op_name)
    else:
        logger.error("job for %s failed: %s", op_name, exc_value)
        reply = {"ok": False, "error": {"code": "INTERNAL", "message": f"{op_name} failed because of an internal error."}}
    send_reply(connection, inbox, call_key, reply, job.id)


def run_job(op_name, ctx, args, inbox, call_key):
    """The RQ job: claim the call, run the handler while a heartbeat says the worker
    lives, send the reply to the broker that asked."""
    if ctx.expired():
        # The block stopped waiting; running it now would only do work nobody reads.
        return
    job = get_current_job()
    if job is None:  # called directly, outside a worker: no claim, no heartbeat
        return execute_operation(op_name, ctx, args)
    connection = job.connection
    marks_ttl = max(60, int(ctx.time_left() or 0) + 60)
    # Alive before claimed (a claim without an alive mark means a dead worker), both in
    # one round trip: MULTI/EXEC applies them in this order, at one instant.
    pipe = connection.pipeline(transaction=True)
    pipe.set(alive_key(job.id), "1", px=JOB_HEARTBEAT_TTL_MS)
    pipe.set(claim_key(job.id), "worker", nx=True, ex=marks_ttl)
    _, claimed = pipe.execute()
    if not claimed:
        # The broker abandoned this job (its first worker died before starting it) and
        # answered or retried the call: running it now could do it twice.
        connection.delete(alive_key(job.id))
        return
    heartbeat = JobHeartbeat(connection, job.id)
    heartbeat.start()
    try:
        reply = execute_operation(op_name, ctx, args)
    except BaseException:
        heartbeat.stop()
        raise
    # The reply, done, and no longer alive, in one round trip and at one instant: the
    # watcher never sees a job done whose reply is not on its list.
    heartbeat.stop(delete=False)
    pipe = connection.pipeline(transaction=True)
    push_reply(pipe, inbox, call_key, reply, job.id)
    pipe.set(claim_key(job.id), "done", xx=True, ex=marks_ttl)
    pipe.delete(alive_key(job.id))
    pipe.execute()


# -- knowing when a worker died with a call --------------------------------------------

CALL_KEY_PREFIX = "symposium:call:"
# The reply list of one event loop of a server process is REPLY_LIST_PREFIX + a uuid.
REPLY_LIST_PREFIX = "symposium:replies:"
# A running job refreshes its "alive" mark this often; the mark lasts JOB_HEARTBEAT_TTL_MS.
# A worker that dies is noticed JOB_HEARTBEAT_TTL_MS (+ one WATCH_INTERVAL) later. The
# margin is wide because the heartbeat is a thread: a handler inside a long C call that
# holds the GIL (a large canvas export), or a starved machine, delays it, and a worker
# taken for dead when it is not fails a call that would have succeeded.
JOB_HEARTBEAT_SECONDS = 0.5
JOB_HEARTBEAT_TTL_MS = 5000
# How often the broker looks at the marks of its calls in flight (one pipeline for all).
WATCH_INTERVAL = 0.5
# A job off the queue but never claimed this long after: the worker that took it died
# before it started it (a worker claims a job within milliseconds of taking it).
TAKEN_GRACE = 3.0
# A job that says "done" but whose reply has not arrived this long after: the reply was
# lost on the way (its Redis restarted, and the reply list with it).
DONE_GRACE = 5.0


def claim_key(job_id):
    return f"{CALL_KEY_PREFIX}{job_id}:claim"


def alive_key(job_id):
    return f"{CALL_KEY_PREFIX}{job_id}:alive"


class JobHeartbeat:
    """A thread of the job that keeps its "alive" mark fresh while the handler runs. It
    dies with the worker's process, which is the point."""

    def __init__(self, connection, job_id):
        self.connection = connection
        self.key = alive_key(job_id)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def start(self):
        """Keep the mark fresh from now on (the job wrote it first, with its claim)."""
        self.thread.start()

    def stop(self, delete=True):
        self.stopped.set()
        self.thread.join(2)
        if delete:
            try:
                self.connection.delete(self.key)
            except Exception:
                pass

    def _beat(self):
        try:
            self.connection.set(self.key, "1", px=JOB_HEARTBEAT_TTL_MS)
        except Exception:
            logger.warning("a job's heartbeat could not be written")

    def _run(self):
        while not self.stopped.wait(JOB_HEARTBEAT_SECONDS):
            self._beat()


# Why the broker stopped waiting for a job.
UNAVAILABLE = "unavailable"  # Redis cannot be reached
VANISHED = "vanished"  # the job is gone from Redis (restarted, flushed) without a reply
WORKER_DIED = "worker_died"  # claimed by a worker that stopped while running it
NEVER_STARTED = "never_started"  # taken by a worker that died before it started it
REPLY_LOST = "reply_lost"  # ran to the end, but its reply never arrived
EXPIRED = "expired"  # no worker took it before its deadline (RQ dropped it: its ttl)


def worker_stopped_reply(op_name):
    return {"ok": False, "error": {"code": "INTERNAL", "message":
            f"{op_name} was interrupted: the worker running it stopped. It may or may not have taken effect."}}


def lost_reply(op_name, reason):
    """The reply to a call whose job was lost and is not retried."""
    if reason == WORKER_DIED:
        return worker_stopped_reply(op_name)
    if reason == UNAVAILABLE:
        return unavailable_reply(op_name, "Redis")
    if reason == REPLY_LOST:
        return {"ok": False, "error": {"code": "INTERNAL", "message":
                f"{op_name} ran, but its reply was lost on the way back (the platform's Redis restarted)."}}
    if reason == NEVER_STARTED:
        return {"ok": False, "error": {"code": "INTERNAL", "message":
                f"{op_name} was not run: the worker that took it stopped before starting it."}}
    if reason == EXPIRED:
        return {"ok": False, "error": {"code": "TIMEOUT", "message":
                f"{op_name} was not run: no worker took it before its deadline (the platform's workers are busy or down)."}}
    return {"ok": False, "error": {"code": "INTERNAL", "message":
            f"{op_name} was lost by the job queue (its Redis restarted) and may or may not have run."}}


def may_retry(reason, idempotent):
    """Whether a lost job can be queued again: always when it never started (its claim
    makes sure it never will), otherwise only for an operation that is safe to run twice."""
    if reason in (UNAVAILABLE, EXPIRED):
        return False
    return reason == NEVER_STARTED or idempotent


# How long a job the broker stopped waiting for (its call timed out) may keep its
# tenant's slot at most: past RQ's own job timeout (the call's time + 5 s) and the heartbeat's.
LINGER_GRACE = 30.0
# How often the number of workers listening on the queue is read again (it sizes every
# tenant's share of them).
WORKER_COUNT_INTERVAL = 5.0
# The longest one BLPOP of the reply reader blocks: it stops within this once no job is
# watched (and is started again with the next one).
REPLY_WAIT_SECONDS = 1


class WatchedJob:
    __slots__ = ("future", "watched", "done_seen", "deadline", "on_end")

    def __init__(self, future, deadline, on_end=None):
        self.future = future  # resolved with a reason when the job is lost (None: lingering)
        self.watched = time.monotonic()
        self.done_seen = None  # when its claim was first seen "done"
        self.deadline = deadline  # time.time() by which RQ drops the job if nobody took it
        self.on_end = on_end  # lingering: called once the job is off the workers


class JobWatcher:
    """Watches the RQ jobs of this process's calls in flight, in one Redis pipeline every
    WATCH_INTERVAL, and resolves a job's future with the reason when it is lost. A call
    forgets its job as soon as its reply arrives. Jobs whose calls stopped waiting
    (`linger`) are watched until they are off the workers, to give their tenant's slot
    back then.

    It also reads the replies of its calls: the jobs push them onto `inbox`, a Redis list
    of this event loop's own, which a reader task empties with BLPOP (on a connection of
    its own) for as long as any job is watched. A reply is taken once, by this loop only:
    no channel layer, no message per consumer, one round trip back."""

    def __init__(self, url, queue):
        self.loop = asyncio.get_running_loop()
        self.client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.queue_key = queue.key
        self.workers_key = WORKERS_BY_QUEUE_KEY % queue.name
        self.workers = None
        self.workers_counted = 0.0
        self.jobs = {}  # job id -> WatchedJob
        self.task = None
        self.inbox = f"{REPLY_LIST_PREFIX}{uuid.uuid4().hex}"
        self.reader = None

    def watch(self, job_id, deadline):
        """A future resolved with a reason (see above) if the job is lost; call forget()
        once the call is answered. `deadline`: time.time() by which RQ drops the job."""
        future = self.loop.create_future()
        self.jobs[job_id] = WatchedJob(future, deadline)
        self._ensure_task()
        if self.reader is None or self.reader.done():
            self.reader = asyncio.ensure_future(self._read_replies())
        return future

    async def _read_replies(self):
        """Deliver the replies pushed onto this loop's inbox while jobs are watched. Redis
        unreachable: tried again every half second (the watcher's check fails the calls
        meanwhile, with UNAVAILABLE)."""
        while self.jobs:
            try:
                item = await self.client.blpop([self.inbox], timeout=REPLY_WAIT_SECONDS)
            except (redis.exceptions.RedisError, OSError):
                await asyncio.sleep(0.5)
                continue
            if item is None:
                continue
            try:
                event = msgpack.unpackb(item[1], raw=False, strict_map_key=False)
            except (ValueError, TypeError, msgpack.UnpackException):
                logger.warning("a reply on %s could not be read", self.inbox)
                continue
            deliver_reply(event)

    def forget(self, job_id):
        entry = self.jobs.pop(job_id, None)
        if entry is not None and entry.future is not None and not entry.future.done():
            entry.future.cancel()

    def linger(self, job_id, deadline, on_end):
        """Watch a job nobody waits for any more until it is off the workers (done, dead,
        abandoned before it started, or gone), then call `on_end`."""
        self.jobs[job_id] = WatchedJob(None, deadline, on_end)
        self._ensure_task()

    async def worker_count(self):
        """How many RQ workers listen on the queue (read again every WORKER_COUNT_INTERVAL;
        0 when Redis cannot say)."""
        now = time.monotonic()
        if self.workers is None or now - self.workers_counted > WORKER_COUNT_INTERVAL:
            self.workers_counted = now
            try:
                self.workers = await self.client.scard(self.workers_key)
            except (redis.exceptions.RedisError, OSError):
                self.workers = self.workers or 0
        return self.workers

    def _ensure_task(self):
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._watch())

    async def _watch(self):
        while self.jobs:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                await self.check()
            except Exception:
                logger.exception("watching RQ jobs failed")

    def _lose(self, job_id, reason):
        entry = self.jobs.pop(job_id, None)
        if entry is None:
            return
        if entry.on_end is not None:
            entry.on_end()
        elif not entry.future.done():
            entry.future.set_result(reason)

    async def check(self):
        ids = list(self.jobs)
        if not ids:
            return
        try:
            # MULTI/EXEC: the marks of a job are read at one instant. Read one by one, a
            # job finishing in between ("done" set, "alive" deleted) would look like a
            # job whose worker died.
            pipe = self.client.pipeline(transaction=True)
            for job_id in ids:
                pipe.get(claim_key(job_id))
                pipe.exists(alive_key(job_id))
                pipe.exists(Job.key_for(job_id))
            marks = await pipe.execute()
        except (redis.exceptions.RedisError, OSError):
            # Lingering jobs give their slots back too: a slot is never held on a guess.
            for job_id in ids:
                self._lose(job_id, UNAVAILABLE)
            return
        now = time.monotonic()
        unclaimed = []
        for i, job_id in enumerate(ids):
            claim, alive, exists = marks[3 * i:3 * i + 3]
            entry = self.jobs.get(job_id)
            if entry is None:
                continue
            if entry.on_end is not None:
                self._check_lingering(job_id, entry, claim, alive, exists, now)
            elif claim == b"worker":
                if not alive:
                    await self._abandon(job_id, force=True)
                    self._lose(job_id, WORKER_DIED)
            elif claim == b"done":
                entry.done_seen = entry.done_seen or now
                if now - entry.done_seen > DONE_GRACE:
                    self._lose(job_id, REPLY_LOST)
            elif claim is None:
                if not exists:
                    self._lose(job_id, EXPIRED if time.time() >= entry.deadline - 1.5 else VANISHED)
                elif now - entry.watched > TAKEN_GRACE:
                    unclaimed.append(job_id)
        if unclaimed:
            await self._check_taken(unclaimed)

    def _check_lingering(self, job_id, entry, claim, alive, exists, now):
        off_the_workers = (
            claim in (b"done", b"abandoned")
            or (claim == b"worker" and not alive)
            or (claim is None and not exists)
            or now - entry.watched > LINGER_GRACE + max(0.0, entry.deadline - time.time())
        )
        if off_the_workers:
            self._lose(job_id, None)

    async def _check_taken(self, job_ids):
        """Unclaimed jobs that are no longer waiting in the queue were taken by a worker
        that never started them: abandon them (unless a worker claims them first)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.lpos(self.queue_key, job_id)
            positions = await pipe.execute()
        except (redis.exceptions.RedisError, OSError):
            return  # the next check sees Redis down
        for job_id, position in zip(job_ids, positions):
            if position is None and await self._abandon(job_id):
                self._lose(job_id, NEVER_STARTED)

    async def _abandon(self, job_id, force=False):
        """Mark the job abandoned: a worker that has not claimed it yet never will, and
        RQ's late failure callback for it stays silent. True if the mark was set."""
        try:
            if force:
                return bool(await self.client.set(claim_key(job_id), "abandoned", xx=True, ex=3600))
            return bool(await self.client.set(claim_key(job_id), "abandoned", nx=True, ex=3600))
        except (redis.exceptions.RedisError, OSError):
            return False


_watchers = {}


def job_watcher():
    """This event loop's JobWatcher (one Redis client per loop)."""
    loop = asyncio.get_running_loop()
    watcher = _watchers.get(id(loop))
    if watcher is None or watcher.loop is not loop:
        watcher = _watchers[id(loop)] = JobWatcher(settings.RQ_QUEUES["capabilities"]["URL"], capabilities_queue())
    return watcher
