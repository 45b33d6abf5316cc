"""Running a capability call: inline in a thread, or as an RQ job.

`execute_operation` is the one place a handler is called, on both paths, so both give
the same results and errors. The broker calls `dispatch_call`, which picks the path per
capability (settings.SYMPOSIUM_RQ_CAPABILITIES) and delivers the reply to a callback.
On the RQ path the job sends its reply to the broker's channel over the channel layer.
"""

import asyncio
import concurrent.futures
import logging
import os
import time

from django.conf import settings

from capabilities.base import CapabilityError
from capabilities.registry import OPERATIONS

logger = logging.getLogger(__name__)

# Inline calls run in this pool. Its size bounds how many handler calls one server
# process runs at once; more wait their turn (their deadline still runs).
_executor = concurrent.futures.ThreadPoolExecutor(
    max_workers=int(os.environ.get("SYMPOSIUM_INLINE_THREADS", "16")), thread_name_prefix="capability"
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
    except Exception:
        # A bug in a handler: the log has the traceback, the block gets no internals.
        logger.exception("capability %s failed", op_name)
        return {"ok": False, "error": {"code": "INTERNAL", "message": f"{op_name} failed because of an internal error."}}


def uses_rq(capability):
    return bool(settings.REDIS_URL) and capability in settings.SYMPOSIUM_RQ_CAPABILITIES


async def run_inline(op_name, ctx, args):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, execute_operation, op_name, ctx, args)


def enqueue(op_name, ctx, args, reply_channel, call_key, timeout):
    """Queue the call as an RQ job; its reply reaches `reply_channel`."""
    import django_rq
    from rq import Callback

    queue = django_rq.get_queue("capabilities")
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
        import threading

        self.loop = None
        self.lock = threading.Lock()

    def _ensure_loop(self):
        import threading

        with self.lock:
            if self.loop is None or not self.thread.is_alive():
                self.loop = asyncio.new_event_loop()
                self.thread = threading.Thread(target=self.loop.run_forever, name="reply-sender", daemon=True)
                self.thread.start()
        return self.loop

    def send(self, channel, message, timeout=10):
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        future = asyncio.run_coroutine_threadsafe(layer.send(channel, message), self._ensure_loop())
        return future.result(timeout)


_reply_sender = ReplySender()


def send_reply(reply_channel, call_key, reply):
    _reply_sender.send(reply_channel, {"type": "capability.result", "key": call_key, "reply": reply})


def report_job_failure(job, connection, exc_type, exc_value, tb):
    """RQ's failure callback: a job that raised or ran past its timeout still answers
    its call at once, instead of leaving the block to wait for its deadline."""
    op_name, ctx, args, reply_channel, call_key = job.args
    from rq.timeouts import JobTimeoutException

    if exc_type is not None and issubclass(exc_type, JobTimeoutException):
        reply = {"ok": False, "error": {"code": "TIMEOUT", "message": f"{op_name} ran past its time limit and was stopped."}}
    else:
        logger.error("job for %s failed: %s", op_name, exc_value)
        reply = {"ok": False, "error": {"code": "INTERNAL", "message": f"{op_name} failed because of an internal error."}}
    send_reply(reply_channel, call_key, reply)


def run_job(op_name, ctx, args, reply_channel, call_key):
    """The RQ job: run the handler, send the reply to the broker that asked."""
    if ctx.deadline and time.time() > ctx.deadline:
        # The block stopped waiting; running it now would only do work nobody reads.
        return
    send_reply(reply_channel, call_key, execute_operation(op_name, ctx, args))
