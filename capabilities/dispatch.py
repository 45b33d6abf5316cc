"""Running a capability call: inline in a thread, or as an RQ job.

`execute_operation` is the one place a handler is called, on both paths, so both give
the same results and errors. The broker calls `dispatch_call`, which picks the path per
capability (settings.SYMPOSIUM_RQ_CAPABILITIES) and delivers the reply to a callback.
On the RQ path the job sends its reply to the broker's channel over the channel layer.

A worker can die in the middle of a call (SIGKILL, out of memory, its machine lost), and
RQ itself only notices minutes later. So every job marks its progress in Redis, and the
broker's `JobWatcher` looks at those marks twice a second:

    symposium:call:<job>:claim   "worker" once a worker starts the job, "done" once its
                                 reply is sent, "abandoned" once the broker gave up on it
    symposium:call:<job>:alive   refreshed every JOB_HEARTBEAT_SECONDS by a thread of the
                                 job, expires JOB_HEARTBEAT_TTL_MS after the worker stops

The claim is taken with SET NX by whichever comes first, the worker starting the job or
the broker abandoning it, so a job the broker gave up on never runs afterwards. What the
broker then does (retry on another worker, or fail the call with a clear error) is
decided in `isolates/broker.py` by the operation's `idempotent` flag.
"""

import asyncio
import concurrent.futures
import logging
import threading
import time

import django_rq
import redis
import redis.asyncio
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import InterfaceError, OperationalError
from rq import Callback, get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from capabilities.base import CapabilityError
from capabilities.registry import OPERATIONS

logger = logging.getLogger(__name__)

# Inline calls run in this pool. Its size bounds how many handler calls one server
# process runs at once; more wait their turn (their deadline still runs).
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


async def run_inline(op_name, ctx, args):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, execute_operation, op_name, ctx, args)


def enqueue(op_name, ctx, args, reply_channel, call_key, timeout):
    """Queue the call as an RQ job; its reply reaches `reply_channel`."""
    queue = django_rq.get_queue("capabilities")
    # A failed connection is retried by redis-py on the next command; a Redis that is
    # down fails at once with ConnectionError (the broker says so to the block).
    return queue.enqueue(
        "capabilities.dispatch.run_job",
        op_name, ctx, args, reply_channel, call_key,
        job_timeout=max(1, int(timeout) + 5),
        ttl=max(1, int(timeout)),  # a job nobody took before the deadline is dropped
        result_ttl=0,
        failure_ttl=3600,
        description=f"{op_name} for {ctx.tenant_slug} run {ctx.run_id}",
        on_failure=Callback(report_job_failure),
    )


class ReplySender:
    """Sends replies from a worker process to brokers over the channel layer.

    One event loop in one thread for the life of the worker, so that the channel
    layer's Redis connections are made once and reused; async_to_sync would make a new
    loop, and with it new connections, for every reply."""

    def __init__(self):
        self.loop = None
        self.lock = threading.Lock()

    def _ensure_loop(self):
        with self.lock:
            if self.loop is None or not self.thread.is_alive():
                self.loop = asyncio.new_event_loop()
                self.thread = threading.Thread(target=self.loop.run_forever, name="reply-sender", daemon=True)
                self.thread.start()
        return self.loop

    def send(self, channel, message, timeout=10):
        layer = get_channel_layer()
        future = asyncio.run_coroutine_threadsafe(layer.send(channel, message), self._ensure_loop())
        return future.result(timeout)


_reply_sender = ReplySender()


def send_reply(reply_channel, call_key, reply, job_id=None):
    _reply_sender.send(reply_channel, {"type": "capability.result", "key": call_key, "reply": reply, "job": job_id})


def report_job_failure(job, connection, exc_type, exc_value, tb):
    """RQ's failure callback: a job that raised or ran past its timeout still answers
    its call at once, instead of leaving the block to wait for its deadline."""
    op_name, ctx, args, reply_channel, call_key = job.args
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
    send_reply(reply_channel, call_key, reply, job.id)


def run_job(op_name, ctx, args, reply_channel, call_key):
    """The RQ job: claim the call, run the handler while a heartbeat says the worker
    lives, send the reply to the broker that asked."""
    if ctx.expired():
        # The block stopped waiting; running it now would only do work nobody reads.
        return
    job = get_current_job()
    if job is None:  # called directly, outside a worker: no claim, no heartbeat
        return send_reply(reply_channel, call_key, execute_operation(op_name, ctx, args))
    connection = job.connection
    marks_ttl = max(60, int(ctx.time_left() or 0) + 60)
    # Alive before claimed: a claim without an alive mark means a dead worker.
    heartbeat = JobHeartbeat(connection, job.id)
    heartbeat.start()
    if not connection.set(claim_key(job.id), "worker", nx=True, ex=marks_ttl):
        # The broker abandoned this job (its first worker died before starting it) and
        # answered or retried the call: running it now could do it twice.
        heartbeat.stop()
        return
    try:
        reply = execute_operation(op_name, ctx, args)
        send_reply(reply_channel, call_key, reply, job.id)
        connection.set(claim_key(job.id), "done", xx=True, ex=marks_ttl)
    finally:
        heartbeat.stop()


# -- knowing when a worker died with a call --------------------------------------------

CALL_KEY_PREFIX = "symposium:call:"
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
# lost on the way (the channel layer's Redis restarted).
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
        self._beat()
        self.thread.start()

    def stop(self):
        self.stopped.set()
        self.thread.join(2)
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
                f"{op_name} ran, but its reply was lost on the way back (the platform's message layer restarted)."}}
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


class JobWatcher:
    """Watches the RQ jobs of this process's calls in flight, in one Redis pipeline every
    WATCH_INTERVAL, and resolves a job's future with the reason when it is lost."""

    def __init__(self, url, queue_key):
        self.loop = asyncio.get_running_loop()
        self.client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.queue_key = queue_key
        self.jobs = {}  # job id -> [future, time watched, time first seen done or None, deadline]
        self.task = None

    def watch(self, job_id, deadline):
        """A future resolved with a reason (see above) if the job is lost; call forget()
        once the call is answered. `deadline`: time.time() by which RQ drops the job."""
        future = self.loop.create_future()
        self.jobs[job_id] = [future, time.monotonic(), None, deadline]
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._watch())
        return future

    def forget(self, job_id):
        entry = self.jobs.pop(job_id, None)
        if entry is not None and not entry[0].done():
            entry[0].cancel()

    async def _watch(self):
        while self.jobs:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                await self.check()
            except Exception:
                logger.exception("watching RQ jobs failed")

    def _lose(self, job_id, reason):
        entry = self.jobs.pop(job_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(reason)

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
            if claim == b"worker":
                if not alive:
                    await self._abandon(job_id, force=True)
                    self._lose(job_id, WORKER_DIED)
            elif claim == b"done":
                entry[2] = entry[2] or now
                if now - entry[2] > DONE_GRACE:
                    self._lose(job_id, REPLY_LOST)
            elif claim is None:
                if not exists:
                    self._lose(job_id, EXPIRED if time.time() >= entry[3] - 1.5 else VANISHED)
                elif now - entry[1] > TAKEN_GRACE:
                    unclaimed.append(job_id)
        if unclaimed:
            await self._check_taken(unclaimed)

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
        queue = django_rq.get_queue("capabilities")
        watcher = _watchers[id(loop)] = JobWatcher(settings.RQ_QUEUES["capabilities"]["URL"], queue.key)
    return watcher
