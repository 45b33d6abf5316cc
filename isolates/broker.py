"""The broker: the one door between an isolate and the server.

Each isolate opens one websocket to `IsolateBrokerConsumer` and proves with a one-time
token which run it is. From then on the connection is bound to that run, its tenant and
its policy, all read from the database; nothing in a frame can name another run, tenant
or profile. Every call is checked (operation allow-list, policy decision, rate limit,
calls in flight) before anything executes, dispatched inline or to RQ, audited, and
answered with `{id, ok, ...}` before its deadline.
"""

import asyncio
import functools
import hashlib
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from capabilities import dispatch
from capabilities.base import CallContext
from capabilities.canvas.store import discard_run
from capabilities.network.sealed import PLACEHOLDER_PREFIX, placeholders_in, run_env, run_seals
from capabilities.registry import OPERATION_CAPABILITIES, OPERATIONS
from isolates.errors import error_detail
from isolates.floods import CONSOLE_FLOOD, LineRate, RefusalLog, console_cost
from isolates.packages import link_block_async
from isolates.protocol import LIMITS, LOG_LEVELS, FrameError, decode_value, encode_frame, frame_limit, parse_frame
from tenants import audit
from tenants.models import BlockRun, Tenant
from tenants.policy import decide, effective_policy
from tenants.ratelimit import acheck_rate

logger = logging.getLogger(__name__)

# Arguments that would name a run, tenant or profile are refused outright: a frame can
# never claim them, and silently ignoring them would hide an attack from the audit log.
FORBIDDEN_ARGS = {"run", "runId", "tenant", "tenantId", "tenant_id", "profile", "policy"}
# How long a tenant's policy and state are reused between calls of one run. A
# suspension or a changed limit reaches running blocks within this time.
POLICY_TTL = 1.0
# The platform's database being unreachable (restarting), as opposed to a bug.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
# How long the block's own outcome is retried while the database restarts.
OUTCOME_RETRY_SECONDS = 30


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def run_group(run_id):
    return f"run-{run_id}"


# Runs whose isolates connect to this process's broker, prepared by the run service
# (which has just read the tenant), by token hash; and the connections still open, by
# run id.
_prepared = {}
_open = {}


def prepare_connection(run, tenant, policy, run_secrets):
    """Keep what the broker needs at hello, so it need not read it again."""
    _prepared[run.token_hash] = (run, tenant, policy, run_secrets, time.monotonic())
    if len(_prepared) > 10000:
        # Runs whose isolate never said hello (it died first): forget the oldest.
        for key in sorted(_prepared, key=lambda k: _prepared[k][4])[:1000]:
            _prepared.pop(key, None)


# Runs that must not begin before a moment (Unix time): a schedule's run is prepared a
# little before its due time and its block starts at that time (blocks/schedules.py).
_start_at = {}
# The longest a start is ever held, whatever was asked.
MAX_START_HOLD_SECONDS = 5.0


def hold_start(run_id, at):
    """Send this run's start frame no earlier than `at` (Unix time)."""
    _start_at[run_id] = at
    if len(_start_at) > 10000:
        # Runs whose isolate never said hello: forget the oldest moments.
        for key in sorted(_start_at, key=_start_at.get)[:1000]:
            _start_at.pop(key, None)


async def wait_closed(run_id, timeout):
    """Wait until this process's broker has let go of the run's connection, if it has one."""
    closed = _open.get(run_id)
    if closed is not None:
        try:
            await asyncio.wait_for(closed.wait(), timeout)
        except asyncio.TimeoutError:
            logger.warning("the broker still holds run %s after %s s", run_id, timeout)


def control_group(run_id):
    """The group the run's own broker connection listens on (to be told to stop)."""
    return f"run-control-{run_id}"


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


class IsolateBrokerConsumer(AsyncWebsocketConsumer):
    # The channel-layer messages this consumer handles: an allow-list, never a method
    # picked by a message's type.
    DISPATCH = {
        "websocket.connect": "websocket_connect",
        "websocket.receive": "websocket_receive",
        "websocket.disconnect": "websocket_disconnect",
        "capability.result": "capability_result",
        "run.stop": "run_stop",
    }

    async def __call__(self, scope, receive, send):
        """As Channels' AsyncConsumer.__call__, except that the channel layer's receive
        survives a restart of its Redis: a connection error there would otherwise end
        this consumer, and with it the websocket and the run. Replies of RQ jobs in
        flight may be lost with Redis; the JobWatcher answers those calls."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        if self.channel_layer is None:
            sources = [receive]
        else:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources = [receive, self.resilient_channel_receive]
        try:
            await await_many_dispatch(sources, self.dispatch)
        except StopConsumer:
            pass

    async def resilient_channel_receive(self):
        delay = 0.1
        while True:
            try:
                message = await self.channel_receive()
            except (ConnectionError, OSError) as e:
                await self.channel_layer_failed(e, delay)
            except Exception as e:
                # redis-py's errors are not OSErrors; anything else is not ours to hide.
                if type(e).__module__.split(".")[0] != "redis":
                    raise
                await self.channel_layer_failed(e, delay)
            else:
                if delay > 0.1:
                    await self.rejoin_control_group()
                return message
            delay = min(delay * 2, 2.0)

    async def channel_layer_failed(self, error, delay):
        logger.warning("the channel layer failed (%s); retrying in %.1f s", str(error)[:200], delay)
        await asyncio.sleep(delay)

    async def rejoin_control_group(self):
        """A Redis that restarted forgot the groups: join the run's control group again."""
        if getattr(self, "run", None) is not None:
            try:
                await self.channel_layer.group_add(control_group(self.run.id), self.channel_name)
            except Exception:
                logger.warning("rejoining the control group of run %s failed", self.run.id)

    async def dispatch(self, message):
        # Unlike Channels' default, no database connection sweep per message: it costs
        # a thread hop per frame, and the helpers that use the database
        # (database_sync_to_async) close stale connections themselves.
        name = self.DISPATCH.get(message.get("type"))
        if name is None:
            raise ValueError(f"No handler for message type {str(message.get('type'))[:40]}")
        await getattr(self, name)(message)

    async def connect(self):
        self.run = None
        self.ctx = None
        self.policy_loaded = 0.0
        self.in_flight = {}  # call number -> (call id, operation, target, started, task)
        self.call_seq = 0
        self.console_bytes = 0
        self.console_parts = []
        self.console_times = []  # BlockRun.console_times: ms since the run's start, per entry
        self.console_since = time.time() * 1000  # the run's start (claim_run), epoch ms
        self.console_last = 0  # the last entry's time, ms since the start
        self.console_truncated = False
        self.console_rate = LineRate()
        self.refusals = RefusalLog()
        self.calls = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.finished = False
        self.event_sender = None
        self.prepared = None
        self.closed = None
        # The run's placeholders of its sealed secrets, made once (at hello) and kept.
        self.placeholders = {}
        self.sealed_noted = set()
        await self.accept()

    # -- frames from the isolate ---------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        size = len(text_data or bytes_data or b"")
        self.bytes_in += size
        limit = frame_limit(self.ctx.policy if self.ctx else None)
        if size > limit:
            return await self.refuse_frame(f"The isolate sent a frame of {size} bytes; the limit is {limit}.")
        if bytes_data is not None:
            return await self.refuse_frame("The isolate sent a binary frame; frames are JSON text.")
        try:
            frame = parse_frame(text_data)
        except FrameError as e:
            return await self.refuse_frame(str(e))

        kind = frame["type"]
        if self.finished and kind in ("call", "log"):
            return  # the run is over (ended for flooding, say): nothing more is served
        if self.run is None:
            if kind != "hello":
                return await self.refuse_frame("The isolate spoke before saying which run it is.")
            return await self.hello(frame)
        if kind == "call":
            return await self.call(frame)
        if kind == "log":
            return await self.log(frame)
        if kind == "started":
            return await self.group_event({"event": "started", "t": time.time()})
        if kind == "done":
            return await self.done(frame)
        return await self.refuse_frame("The isolate said hello twice.")

    async def hello(self, frame):
        token = frame.get("token")
        try:
            run = await self.claim_run(token) if isinstance(token, str) and len(token) < 200 else None
        except DATABASE_UNAVAILABLE:
            # The run cannot be looked up: the isolate exits when the connection closes,
            # and its run service records the run as failed once the database is back.
            logger.warning("a run could not be claimed: the database is unavailable")
            await self.close(code=1011)
            return
        if run is None:
            audit.record(tenant=None, tenant_slug="", capability="broker", operation="hello", outcome="denied",
                         error_code="PERMISSION_DENIED", message="A connection presented an unknown or used run token.")
            await self.close(code=4403)
            return
        self.run = run
        self.closed = _open[run.id] = asyncio.Event()
        try:
            await self.load_context()
            # Each npm: import becomes its vetted package's bundle, or a refusal (docs/packages.md).
            code = await link_block_async(self.ctx.tenant_id, run.code)
        except DATABASE_UNAVAILABLE:
            logger.warning("run %s could not start: the database is unavailable", run.id)
            self.run = None
            await self.close(code=1011)
            return
        self.refusals.bind(tenant_id=self.ctx.tenant_id, tenant_slug=self.ctx.tenant_slug, run_id=run.id, user_id=run.user_id)
        hold = min(_start_at.pop(run.id, 0) - time.time(), MAX_START_HOLD_SECONDS)
        if hold > 0:
            await asyncio.sleep(hold)
        await self.send(encode_frame({
            "type": "start",
            "code": code,
            "name": run.name or "block.js",
            "input": run.input,
            # An HTTP request to a block's endpoint calls its default export's fetch()
            # with the request in the input; every other run calls the default export.
            "entry": "fetch" if run.source == "http" else "default",
            "env": self.env,
            "callTimeoutMs": LIMITS["call_timeout_ms"],
            "maxInFlight": LIMITS["max_in_flight"],
            "consoleCap": self.ctx.policy.console_output_cap,
            "maxFrameBytes": frame_limit(self.ctx.policy),
            # The operations a block can call, and their capabilities: the runtime builds
            # the block's `symposium` API from them.
            "operations": OPERATION_CAPABILITIES,
        }))

    async def call(self, frame):
        call_id = frame.get("id")
        if not isinstance(call_id, (int, str)) or isinstance(call_id, bool):
            return await self.refuse_frame("The isolate sent a call without an id.")
        started = time.perf_counter()
        self.calls += 1  # every call the block made, refused ones included
        op_name = frame.get("op")
        op = OPERATIONS.get(op_name) if isinstance(op_name, str) else None
        raw_args = frame.get("args", {})
        capability = op.capability if op else "broker"
        op_label = op_name if isinstance(op_name, str) else "?"

        def refuse(code, message, **extra):
            return self.answer(call_id, {"ok": False, "error": {"code": code, "message": message, **extra}},
                               capability, op_label, "", "denied", started)

        try:
            await self.refresh_context()
        except DATABASE_UNAVAILABLE:
            # The policy cannot be read again: fail closed (a suspension or a lowered
            # limit must not be missed), and say why.
            return await refuse("INTERNAL", f"{op_label[:40]} was not run: the platform's database is unavailable right now; retry shortly.",
                                retryAfter=1)
        if op is None:
            return await refuse("INVALID_ARGUMENT", f"Unknown operation {str(op_name)[:40]!r}.")
        try:
            args = decode_value(raw_args if raw_args is not None else {})
        except FrameError as e:
            return await refuse("INVALID_ARGUMENT", str(e))
        if not isinstance(args, dict):
            return await refuse("INVALID_ARGUMENT", "The call's arguments must be an object.")
        claimed = FORBIDDEN_ARGS & set(args)
        if claimed:
            return await refuse("INVALID_ARGUMENT", f"A call cannot name a {sorted(claimed)[0]}; it always acts for its own run.")
        target = op.audit_target(args)
        if self.ctx.sealed and capability != "network":
            self.note_placeholders(op_label, target, args)
        if len(self.in_flight) >= LIMITS["max_in_flight"]:
            return await self.answer(call_id, {"ok": False, "error": {
                "code": "RATE_LIMITED", "message": f"Too many calls in flight (at most {LIMITS['max_in_flight']}); await some first.",
                "retryAfter": 0.1}}, capability, op_label, target, "denied", started)

        decision = decide(self.ctx.policy, op, args, tenant_active=self.tenant_active)
        if not decision.allowed:
            return await self.answer(call_id, {"ok": False, "error": {"code": decision.code, "message": decision.message}},
                                     capability, op_label, target, "denied", started)
        try:
            rate = await acheck_rate(self.ctx.tenant_id, capability, self.ctx.policy.rate_per_minute(capability))
        except Exception as e:
            if dispatch.unavailable_service(e) is None:
                raise
            # Rate limits live in Redis: while it restarts they cannot be checked, and an
            # unchecked call could exceed them. Refuse, and say when to try again.
            return await self.answer(call_id, {"ok": False, "error": {
                "code": "RATE_LIMITED", "retryAfter": 1,
                "message": f"The rate limit of {capability} calls cannot be checked right now (the platform's Redis is unavailable); retry in 1 s."}},
                capability, op_label, target, "denied", started)
        if not rate.allowed:
            retry = round(rate.retry_after, 3)
            return await self.answer(call_id, {"ok": False, "error": {
                "code": "RATE_LIMITED",
                "message": f"Rate limit of {self.ctx.policy.rate_per_minute(capability)} {capability} calls per minute reached; retry in {retry:g} s.",
                "retryAfter": retry}}, capability, op_label, target, "denied", started)

        ctx = self.ctx_with_deadline(time.time() + LIMITS["call_timeout_ms"] / 1000)
        self.call_seq += 1
        task = asyncio.ensure_future(self.dispatch_call(self.call_seq, op, ctx, args))
        self.in_flight[self.call_seq] = (call_id, op, target, started, task)
        task.add_done_callback(_log_task_error)

    async def dispatch_call(self, key, op, ctx, args):
        """Run the call (capabilities.dispatch owns the path, the tenant's share, retries
        and the deadline) and answer it."""
        reply = await dispatch.dispatch_call(op, ctx, args, reply_channel=self.channel_name)
        entry = self.in_flight.pop(key, None)
        if entry is None:
            return  # the run is over
        call_id, op, target, started, _ = entry
        # RQ attempts lost with their workers are rows of their own, before the call's.
        self.audit_attempts(op, target, reply.get("lost_attempts", ()))
        await self.answer(call_id, reply, op.capability, op.name, target, call_outcome(reply), started, watch_event=op.watch_event)
        if op.attempt_rows is not None:
            self.audit_attempts(op, target, op.attempt_rows(reply))

    async def capability_result(self, event):
        """A reply from an RQ worker, over the channel layer: for the dispatcher."""
        dispatch.deliver_reply(event)

    def audit_attempts(self, op, target, rows):
        """Each attempt a reply reports (a webhook's deliveries) is a row of its own,
        under the call's row."""
        for row in rows:
            audit.record(
                tenant_id=self.ctx.tenant_id, tenant_slug=self.ctx.tenant_slug, run_id=self.ctx.run_id,
                user_id=self.run.user_id, capability=op.capability, operation=f"{op.name}.attempt",
                target=target, **row,
            )

    async def answer(self, call_id, reply, capability, op_name, target, outcome, started, watch_event=None):
        if reply.get("ok"):
            # The envelope's fields travel under "envelope": a field may be named like a
            # frame key (getFileInfo returns a "type", fetch an "ok").
            reply = {"type": "reply", "id": call_id, "ok": True, "envelope": reply.get("envelope") or {}}
        else:
            reply = {"type": "reply", "id": call_id, "ok": False, "error": reply.get("error") or {}}
        error = reply.get("error") or {}
        if error:
            error.setdefault("capability", capability)
        try:
            text = encode_frame(reply)
        except (TypeError, ValueError):
            logger.exception("reply of %s is not serialisable", op_name)
            reply = {"type": "reply", "id": call_id, "ok": False,
                     "error": {"code": "INTERNAL", "message": f"{op_name} returned a value that cannot be sent.", "capability": capability}}
            error, outcome, text = reply["error"], "failed", encode_frame(reply)
        if len(text) > LIMITS["reply_max"]:
            reply = {"type": "reply", "id": call_id, "ok": False, "error": {
                "code": "QUOTA_EXCEEDED", "capability": capability,
                "message": f"The result of {op_name} is {len(text)} bytes encoded; one call can return at most {LIMITS['reply_max']}."}}
            error, outcome, text = reply["error"], "failed", encode_frame(reply)
        duration_ms = (time.perf_counter() - started) * 1000
        self.bytes_out += len(text)
        if not self.finished:
            await self.send_frame_text(text)
        # Refusals past a few of a kind a minute are counted, not rowed (isolates/floods.py).
        if outcome != "denied" or self.refusals.admit(capability, op_name, error.get("code", "")):
            audit.record(
                tenant_id=self.ctx.tenant_id, tenant_slug=self.ctx.tenant_slug, run_id=self.ctx.run_id,
                user_id=self.run.user_id, capability=capability, operation=op_name, target=target, outcome=outcome,
                error_code=error.get("code", ""), message=error.get("message", ""), duration_ms=round(duration_ms, 3),
                bytes_in=0, bytes_out=len(text),
            )
        await self.group_event({"event": "call", "op": op_name, "target": str(target)[:200], "outcome": outcome,
                                "code": error.get("code", ""), "message": error.get("message", ""),
                                "ms": round(duration_ms, 2), "bytes": len(text)})
        if watch_event is not None and reply["ok"]:
            # What the operation shows whoever watches the run (an exported image).
            event = watch_event(reply["envelope"])
            if event is not None:
                await self.group_event(event)
        if self.refusals.flood is not None:
            await self.end_flooded(self.refusals.flood)

    async def send_frame_text(self, text):
        """Send a frame, in parts when it is larger than one websocket message should be."""
        size = LIMITS["part_size"]
        if len(text) <= size:
            return await self.send(text)
        for offset in range(0, len(text), size):
            last = offset + size >= len(text)
            await self.send(encode_frame({"type": "part", "text": text[offset:offset + size], "last": last}))

    async def log(self, frame):
        if not self.console_rate.admit():
            return await self.end_flooded(CONSOLE_FLOOD)
        level = frame.get("level") if frame.get("level") in LOG_LEVELS else "log"
        # The block's text, as the run's record can store it and every consumer can encode
        # it: a lone surrogate or a NUL becomes U+FFFD.
        text = audit.storable(frame.get("text"))
        if self.ctx.sealed and PLACEHOLDER_PREFIX in text:
            self.note_placeholders("console", "", text)
        cap = self.ctx.policy.console_output_cap
        if self.console_truncated:
            return
        # Each line costs its framing too (an empty line is not free; see isolates/floods.py).
        remaining = cap - self.console_bytes
        if console_cost(text) > remaining:
            text = text.encode()[: max(0, remaining - console_cost(""))].decode(errors="ignore")
            self.console_truncated = True
        if text or not self.console_truncated:  # the cap leaves no line of nothing
            self.console_bytes += console_cost(text)
            self.console_parts.append(f"[{level}] {text}" if level not in ("log", "info") else text)
            self.note_console_time(frame.get("t"), text.count("\n") + 1)
            await self.group_event({"event": "log", "level": level, "text": text, "t": frame.get("t")})
        if self.console_truncated:
            await self.group_event({"event": "log", "level": "warn", "t": time.time() * 1000,
                                    "text": f"Console output reached this tenant's cap of {cap} bytes; the rest is dropped."})

    def note_console_time(self, printed, lines):
        """When an entry was printed, as the run's record keeps it: the isolate's clock
        (its frame's `t`, ms) held between the previous entry's time and now, so a block
        cannot date its lines before its start, after their arrival or out of order."""
        now = time.time() * 1000 - self.console_since
        at = printed - self.console_since if isinstance(printed, (int, float)) and math.isfinite(printed) else now
        ms = self.console_last = int(min(max(at, self.console_last), max(now, self.console_last)))
        self.console_times.append(ms if lines == 1 else [ms, lines])

    async def done(self, frame):
        if self.finished:
            return
        self.finished = True
        ok = frame.get("ok") is True
        # Stored and relayed as the other texts of the block are: storable first.
        frame = audit.storable_value(frame)
        self.refusals.close()
        error = frame.get("error") if isinstance(frame.get("error"), dict) else {}
        detail = None if ok else error_detail(error, self.run.code, self.run.name)
        await self.group_event({"event": "done", "ok": ok, "result": frame.get("result") if ok else None,
                                "error": None if ok else {"code": error.get("code"), "message": error.get("message"), **detail}})
        await self.flush_events()
        outcome = dict(
            status="succeeded" if ok else "failed",
            result=frame.get("result") if ok else None,
            error_code="" if ok else str(error.get("code") or error.get("name") or "Error")[:30],
            error=str(error.get("message") or "")[:10000] if not ok else "",
            error_detail=detail,
        )
        # The block's outcome is worth waiting for: retried while the database restarts
        # (the run service waits as long before it records a failure instead).
        give_up = time.monotonic() + OUTCOME_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                await self.save_console()
                await self.finish_run(**outcome)
                return
            except DATABASE_UNAVAILABLE:
                if time.monotonic() + delay > give_up:
                    logger.error("the outcome of run %s could not be recorded", self.run.id)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def refuse_frame(self, message):
        """A frame the runtime would never send: the sandbox is not behaving, end the run."""
        tenant_slug = self.ctx.tenant_slug if self.ctx else ""
        audit.record(tenant_id=self.ctx.tenant_id if self.ctx else None, tenant_slug=tenant_slug,
                     run_id=self.run.id if self.run else None, capability="broker", operation="frame",
                     outcome="denied", error_code="INVALID_ARGUMENT", message=message)
        if self.run and not self.finished:
            self.finished = True
            self.refusals.close()
            await self.save_console()
            await self.finish_run("failed", error_code="INVALID_ARGUMENT", error=f"The run was stopped: {message}")
            await self.group_event({"event": "done", "ok": False, "error": {"code": "INVALID_ARGUMENT", "message": message}})
            await self.flush_events()
            await self.send(encode_frame({"type": "stop", "reason": message}))
        await self.close(code=4400)

    async def end_flooded(self, message):
        """The run floods the platform (refused calls, console lines): end it, saying why
        to its author, as a forged frame is (refuse_frame)."""
        if self.finished:
            return
        self.finished = True
        audit.record(tenant_id=self.ctx.tenant_id, tenant_slug=self.ctx.tenant_slug, run_id=self.run.id,
                     user_id=self.run.user_id, capability="broker", operation="flood", outcome="denied",
                     error_code="RATE_LIMITED", message=message)
        self.refusals.close()
        await self.save_console()
        await self.finish_run("failed", error_code="RATE_LIMITED", error=message)
        await self.group_event({"event": "done", "ok": False, "error": {"code": "RATE_LIMITED", "message": message}})
        await self.flush_events()
        await self.send(encode_frame({"type": "stop", "reason": message}))
        await self.close(code=4429)

    async def disconnect(self, code):
        # Calls nobody will read: those still waiting for their tenant's share never run
        # (a thread or job already running keeps its slot until it ends).
        for _, _, _, _, task in self.in_flight.values():
            task.cancel()
        self.in_flight.clear()
        if self.run:
            self.refusals.close()
            await self.flush_events()
            if self.event_sender is not None:
                self.event_sender.cancel()
            try:
                await self.save_console()
            except DATABASE_UNAVAILABLE:
                logger.warning("the console of run %s could not be saved: the database is unavailable", self.run.id)
            try:
                await self.channel_layer.group_discard(control_group(self.run.id), self.channel_name)
            except Exception:
                logger.warning("leaving the control group of run %s failed", self.run.id)
            if self.closed is not None:
                self.closed.set()
                _open.pop(self.run.id, None)
            if self.ctx is not None:
                # A run's canvases die with it (they would expire on their own later).
                await database_sync_to_async(discard_canvases, thread_sensitive=False)(self.ctx)

    async def run_stop(self, event):
        """Asked to stop the run (the run service, a user's Stop)."""
        await self.send(encode_frame({"type": "stop", "reason": event.get("reason", "stopped")}))
        await self.close()

    # -- state ------------------------------------------------------------------------

    async def group_event(self, event):
        """Publish an event to whoever watches the run, in order, off the reply's path."""
        if self.run is None:
            return
        if self.event_sender is None:
            self.event_queue = asyncio.Queue()
            self.event_sender = asyncio.ensure_future(self.send_events())
        self.event_queue.put_nowait({"type": "run.event", "run": self.run.id, **event})

    async def send_events(self):
        failing = False
        while True:
            event = await self.event_queue.get()
            try:
                await self.channel_layer.group_send(run_group(self.run.id), event)
                failing = False
            except Exception as e:
                # Watchers miss events while the channel layer is down (they read the
                # run's record at the end); one line per outage, not one per event.
                if not failing:
                    logger.warning("publishing events of run %s failed: %s", self.run.id, str(e)[:200])
                failing = True
            finally:
                self.event_queue.task_done()

    async def flush_events(self):
        if self.event_sender is not None:
            await self.event_queue.join()

    @database_sync_to_async
    def claim_run(self, token):
        """The run this token was made for, if it is unused; the token is used up."""
        digest = token_hash(token)
        started = timezone.now()
        claimed = BlockRun.objects.filter(token_hash=digest, token_used=False, status__in=("queued", "running")).update(
            token_used=True, status="running", started=started)
        self.console_since = started.timestamp() * 1000
        if claimed != 1:
            return None
        self.prepared = _prepared.pop(digest, None)
        if self.prepared is not None:
            return self.prepared[0]
        return BlockRun.objects.select_related("tenant").get(token_hash=digest)

    async def load_context(self):
        await self.refresh_context(force=True)
        try:
            await self.channel_layer.group_add(control_group(self.run.id), self.channel_name)
        except Exception:
            # Only stops asked from another server process use the group; the run
            # service of this one stops the isolate directly. Run without it.
            logger.warning("joining the control group of run %s failed", self.run.id)

    async def refresh_context(self, force=False):
        if not force and time.monotonic() - self.policy_loaded < POLICY_TTL:
            return
        if self.prepared is not None:
            _, tenant, policy, run_secrets, read_at = self.prepared
            self.prepared = None
        else:
            (tenant, policy, run_secrets), read_at = await read_tenant_shared(self.run.tenant_id)
        self.tenant_active = tenant.is_active
        # process.env: plain secrets' values, sealed ones' placeholders (sent at hello).
        self.env = run_env(run_secrets, self.placeholders)
        self.ctx = CallContext(
            tenant_id=tenant.pk, tenant_slug=tenant.slug, run_id=self.run.id, policy=policy,
            storage_root=Path(settings.TENANT_STORAGE_ROOT) / tenant.slug,
            allowed_hosts=[h.strip().lower() for h in tenant.network_allowed_hosts.split() if h.strip()],
            webhook_secret=tenant.webhook_secret,
            sealed=run_seals(run_secrets, self.placeholders),
        )
        # The age of the data, not of this copy: no call acts on a policy read more than
        # POLICY_TTL ago, however it was shared.
        self.policy_loaded = read_at

    def note_placeholders(self, where, target, value):
        """An audit row when the block passes a sealed secret's placeholder somewhere other
        than a network request (a file, the database, an email, the console): there it
        stays a placeholder, which is worth nothing outside this run. Once per secret
        and operation per run, so that a loop cannot flood the log."""
        for name in placeholders_in(self.ctx.sealed, value):
            if (name, where) in self.sealed_noted or len(self.sealed_noted) >= 100:
                continue
            self.sealed_noted.add((name, where))
            audit.record(
                tenant_id=self.ctx.tenant_id, tenant_slug=self.ctx.tenant_slug, run_id=self.ctx.run_id,
                user_id=self.run.user_id, capability="broker", operation=f"{where}.sealed", target=str(target)[:200],
                outcome="denied", error_code="PERMISSION_DENIED",
                message=f"The block passed the placeholder of the sealed secret {name} to {where}; it stays a placeholder there "
                        "(the value is sent only by network requests to the secret's hosts).",
            )

    def ctx_with_deadline(self, deadline):
        return replace(self.ctx, deadline=deadline)

    @database_sync_to_async
    def save_console(self):
        BlockRun.objects.filter(pk=self.run.id).update(
            console="\n".join(self.console_parts), console_times=self.console_times, console_truncated=self.console_truncated,
            calls=self.calls, bytes_in=self.bytes_in, bytes_out=self.bytes_out,
        )

    @database_sync_to_async
    def finish_run(self, status, result=None, error_code="", error="", error_detail=None):
        audit.flush()
        BlockRun.objects.filter(pk=self.run.id, status="running").update(
            status=status, result=result, error_code=error_code, error=error, error_detail=error_detail,
            finished=timezone.now())


def read_tenant(tenant_id):
    tenant = Tenant.objects.select_related("profile").prefetch_related("overrides").get(pk=tenant_id)
    return tenant, effective_policy(tenant), [s.for_run() for s in tenant.secrets.all()]


# Tenant reads in progress or recent, per event loop and tenant: (started, future). The
# runs of one tenant on one server share one read per POLICY_TTL, instead of each making
# its own (100 runs in flight re-read their policy 100 times a second otherwise, the
# largest share of the server's database work under load).
_tenant_reads = {}


async def read_tenant_shared(tenant_id):
    """The tenant, its effective policy and secrets, and when they were read (monotonic):
    a read started less than POLICY_TTL ago is shared, else a new one is made."""
    now = time.monotonic()
    loop = asyncio.get_running_loop()
    key = (id(loop), tenant_id)
    entry = _tenant_reads.get(key)
    if (entry is None or entry[2] is not loop or now - entry[0] >= POLICY_TTL
            or (entry[1].done() and entry[1].exception() is not None)):
        if len(_tenant_reads) > 10000:
            for stale in [k for k, (started, _, _) in _tenant_reads.items() if now - started >= POLICY_TTL]:
                del _tenant_reads[stale]
        entry = _tenant_reads[key] = (now, asyncio.ensure_future(database_sync_to_async(read_tenant)(tenant_id)), loop)
    return await asyncio.shield(entry[1]), entry[0]


def discard_canvases(ctx):
    try:
        discard_run(ctx)
    except Exception:
        logger.exception("forgetting the canvases of run %s failed", ctx.run_id)


def _log_task_error(task):
    if not task.cancelled() and task.exception():
        logger.error("broker task failed", exc_info=task.exception())
