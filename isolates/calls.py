"""One call of a block, from its frame to its audit row:

    frame -> decode -> decide -> capabilities.dispatch.dispatch_call -> reply -> record_call

`CallPipeline.receive` decodes the frame and decides (operation allow-list, arguments
that would name another run or tenant, calls in flight, the policy, the rate limit);
a refusal is answered at once. An allowed call becomes a task that awaits
`dispatch_call(op, ctx, args)`, which owns how it runs (inline or RQ, the tenant's
share, retries, the deadline), then `reply` sends the answer and `record_call` writes
the call's audit row (and the rows of attempts the operation reports) and shows the
call to whoever watches the run. docs/architecture.md follows one call through it.
"""

import asyncio
import logging
import time

from capabilities import dispatch
from capabilities.registry import OPERATIONS
from isolates.protocol import LIMITS, FrameError, decode_value, encode_frame
from isolates.session import DATABASE_UNAVAILABLE
from tenants.policy import decide
from tenants.ratelimit import acheck_rate

logger = logging.getLogger(__name__)

# Arguments that would name a run, tenant or profile are refused outright: a frame can
# never claim them, and silently ignoring them would hide an attack from the audit log.
FORBIDDEN_ARGS = {"run", "runId", "tenant", "tenantId", "tenant_id", "profile", "policy"}


def call_outcome(reply):
    """The audit outcome of a handler's reply. A handler refuses some calls for policy
    reasons only it can see (the address a name resolves to, a path on disk, a command's
    arguments): such a PERMISSION_DENIED is a denial like the policy's own, so admins
    filtering on denials see a block probing the network or the disk. Every other error
    is a call that failed."""
    if reply.get("ok"):
        return "allowed"
    error = reply.get("error")
    return "denied" if isinstance(error, dict) and error.get("code") == "PERMISSION_DENIED" else "failed"


def refusal(code, message, **extra):
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


class Call:
    """A call as it travels: its id in the block, what it asks, since when."""

    __slots__ = ("id", "op", "name", "capability", "target", "started", "task")

    def __init__(self, call_id, op, name):
        self.id = call_id
        self.op = op
        self.name = name if isinstance(name, str) else "?"
        self.capability = op.capability if op else "broker"
        self.target = ""
        self.started = time.perf_counter()
        self.task = None


class CallPipeline:
    """The calls of one run. `send(text)` sends a frame to the isolate, `publish(event)`
    shows an event to the run's watchers, `flooded(message)` ends a run that floods
    the platform with refusals."""

    def __init__(self, session, send, publish, flooded):
        self.session = session
        self.send = send
        self.publish = publish
        self.flooded = flooded
        self.in_flight = {}  # key -> Call
        self.seq = 0

    async def receive(self, frame):
        """Decode and decide: a refusal is answered now, an allowed call is started."""
        session = self.session
        session.calls += 1  # every call the block made, refused ones included
        op_name = frame.get("op")
        call = Call(frame["id"], OPERATIONS.get(op_name) if isinstance(op_name, str) else None, op_name)
        try:
            await session.refresh()
        except DATABASE_UNAVAILABLE:
            # The policy cannot be read again: fail closed (a suspension or a lowered
            # limit must not be missed), and say why.
            return await self.refuse(call, "INTERNAL", f"{call.name[:40]} was not run: the platform's database is unavailable "
                                     "right now; retry shortly.", retryAfter=1)
        if call.op is None:
            return await self.refuse(call, "INVALID_ARGUMENT", f"Unknown operation {str(op_name)[:40]!r}.")
        raw_args = frame.get("args", {})
        try:
            args = decode_value(raw_args if raw_args is not None else {})
        except FrameError as e:
            return await self.refuse(call, "INVALID_ARGUMENT", str(e))
        if not isinstance(args, dict):
            return await self.refuse(call, "INVALID_ARGUMENT", "The call's arguments must be an object.")
        claimed = FORBIDDEN_ARGS & set(args)
        if claimed:
            return await self.refuse(call, "INVALID_ARGUMENT",
                                     f"A call cannot name a {sorted(claimed)[0]}; it always acts for its own run.")
        call.target = call.op.audit_target(args)
        if session.ctx.sealed and call.capability != "network":
            session.note_placeholders(call.name, call.target, args)
        if len(self.in_flight) >= LIMITS["max_in_flight"]:
            return await self.refuse(call, "RATE_LIMITED", f"Too many calls in flight (at most {LIMITS['max_in_flight']}); "
                                     "await some first.", retryAfter=0.1)
        decision = decide(session.ctx.policy, call.op, args, tenant_active=session.tenant_active)
        if not decision.allowed:
            return await self.refuse(call, decision.code, decision.message)
        per_minute = session.ctx.policy.rate_per_minute(call.capability)
        try:
            rate = await acheck_rate(session.ctx.tenant_id, call.capability, per_minute)
        except Exception as e:
            if dispatch.unavailable_service(e) is None:
                raise
            # Rate limits live in Redis: while it restarts they cannot be checked, and an
            # unchecked call could exceed them. Refuse, and say when to try again.
            return await self.refuse(call, "RATE_LIMITED", f"The rate limit of {call.capability} calls cannot be checked right "
                                     "now (the platform's Redis is unavailable); retry in 1 s.", retryAfter=1)
        if not rate.allowed:
            retry = round(rate.retry_after, 3)
            return await self.refuse(call, "RATE_LIMITED", f"Rate limit of {per_minute} {call.capability} calls per minute "
                                     f"reached; retry in {retry:g} s.", retryAfter=retry)
        ctx = session.ctx_with_deadline(time.time() + LIMITS["call_timeout_ms"] / 1000)
        self.seq += 1
        self.in_flight[self.seq] = call
        call.task = asyncio.ensure_future(self.run(self.seq, call, ctx, args))
        call.task.add_done_callback(_log_task_error)

    async def refuse(self, call, code, message, **extra):
        await self.reply(call, refusal(code, message, **extra), "denied")

    async def run(self, key, call, ctx, args):
        reply = await dispatch.dispatch_call(call.op, ctx, args)
        if self.in_flight.pop(key, None) is None:
            return  # the run is over
        await self.reply(call, reply, call_outcome(reply), dispatched=True)

    async def reply(self, call, reply, outcome, dispatched=False):
        """Send the answer (bounded, always serialisable), then record the call."""
        if reply.get("ok"):
            # The envelope's fields travel under "envelope": a field may be named like a
            # frame key (getFileInfo returns a "type", fetch an "ok").
            frame = {"type": "reply", "id": call.id, "ok": True, "envelope": reply.get("envelope") or {}}
        else:
            frame = {"type": "reply", "id": call.id, "ok": False, "error": reply.get("error") or {}}
            frame["error"].setdefault("capability", call.capability)
        try:
            text = encode_frame(frame)
        except (TypeError, ValueError):
            logger.exception("reply of %s is not serialisable", call.name)
            frame, outcome = self.failed(call, "INTERNAL", f"{call.name} returned a value that cannot be sent.")
            text = encode_frame(frame)
        if len(text) > LIMITS["reply_max"]:
            frame, outcome = self.failed(call, "QUOTA_EXCEEDED", f"The result of {call.name} is {len(text)} bytes encoded; "
                                         f"one call can return at most {LIMITS['reply_max']}.")
            text = encode_frame(frame)
        duration_ms = (time.perf_counter() - call.started) * 1000
        self.session.bytes_out += len(text)
        if not self.session.finished:
            await self.send(text)
        self.record_call(call, reply if dispatched else {}, frame, outcome, len(text), duration_ms)
        if self.session.refusals.flood is not None:
            await self.flooded(self.session.refusals.flood)

    @staticmethod
    def failed(call, code, message):
        return {"type": "reply", "id": call.id, "ok": False,
                "error": {"code": code, "message": message, "capability": call.capability}}, "failed"

    def record_call(self, call, reply, frame, outcome, size, duration_ms):
        """The call's audit row, the rows of its attempts (`reply` is the dispatcher's, or
        {} for a refusal), and its event for watchers."""
        session = self.session
        error = frame.get("error") or {}
        # RQ attempts lost with their workers are rows of their own, before the call's.
        for row in reply.get("lost_attempts", ()):
            session.record(capability=call.capability, operation=f"{call.name}.attempt", target=call.target, **row)
        # Refusals past a few of a kind a minute are counted, not rowed (isolates/floods.py).
        if outcome != "denied" or session.refusals.admit(call.capability, call.name, error.get("code", "")):
            session.record(capability=call.capability, operation=call.name, target=call.target, outcome=outcome,
                           error_code=error.get("code", ""), message=error.get("message", ""),
                           duration_ms=round(duration_ms, 3), bytes_in=0, bytes_out=size)
        # Each attempt the reply reports (a webhook's deliveries), under the call's row.
        if reply and call.op.attempt_rows is not None:
            for row in call.op.attempt_rows(reply):
                session.record(capability=call.capability, operation=f"{call.name}.attempt", target=call.target, **row)
        self.publish({"event": "call", "op": call.name, "target": str(call.target)[:200], "outcome": outcome,
                      "code": error.get("code", ""), "message": error.get("message", ""),
                      "ms": round(duration_ms, 2), "bytes": size})
        if call.op is not None and call.op.watch_event is not None and frame["ok"]:
            # What the operation shows whoever watches the run (an exported image).
            event = call.op.watch_event(frame["envelope"])
            if event is not None:
                self.publish(event)

    def cancel_all(self):
        """Calls nobody will read: those still waiting for their tenant's share never run
        (a thread or job already running keeps its slot until it ends)."""
        for call in self.in_flight.values():
            call.task.cancel()
        self.in_flight.clear()


def _log_task_error(task):
    if not task.cancelled() and task.exception():
        logger.error("broker task failed", exc_info=task.exception())
