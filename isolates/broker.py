"""The broker: the one door between an isolate and the server.

Each isolate opens one websocket to `IsolateBrokerConsumer` and proves with a one-time
token which run it is. From then on the connection is bound to that run, its tenant and
its policy, all read from the database (`isolates.session.RunSession`); nothing in a
frame can name another run, tenant or profile. The consumer is the transport: it bounds
and parses frames, sends the run's start, and hands each call to the run's
`isolates.calls.CallPipeline` (decode, decide, dispatch, reply, record), each console
line to its `isolates.runevents.Console`, and the block's outcome to the run's record.
"""

import asyncio
import logging
import time

from capabilities.canvas.store import discard_run
from capabilities.registry import OPERATION_CAPABILITIES
from isolates import waiting
from isolates.calls import CallPipeline
from isolates.errors import error_detail
from isolates.floods import CONSOLE_FLOOD
from isolates.packages import link_block_async
from isolates.protocol import LIMITS, FrameError, encode_frame, frame_limit, parse_frame
from isolates.runevents import Console, RunEvents, control_group
from isolates.session import DATABASE_UNAVAILABLE, RunSession, on_pool_thread
from isolates.transport import ResilientConsumer
from tenants import audit

logger = logging.getLogger(__name__)

# How long the block's own outcome is retried while the database restarts.
OUTCOME_RETRY_SECONDS = 30

# The connections still open, by run id.
_open = {}


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


class IsolateBrokerConsumer(ResilientConsumer):
    DISPATCH = {**ResilientConsumer.DISPATCH, "run.stop": "run_stop"}

    async def channel_layer_back(self):
        """A Redis that restarted forgot the groups: join the run's control group again."""
        if getattr(self, "session", None) is not None and self.run is not None:
            await self.join_control_group()

    async def connect(self):
        self.session = RunSession()
        self.events = self.calls = self.console = self.closed = self.waiting_key = None
        await self.accept()

    @property
    def run(self):
        return self.session.run

    # -- frames from the isolate ---------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        session = self.session
        size = len(text_data or bytes_data or b"")
        session.bytes_in += size
        limit = frame_limit(session.ctx.policy if session.ctx else None)
        if size > limit:
            return await self.refuse_frame(f"The isolate sent a frame of {size} bytes; the limit is {limit}.")
        if bytes_data is not None:
            return await self.refuse_frame("The isolate sent a binary frame; frames are JSON text.")
        try:
            frame = parse_frame(text_data)
        except FrameError as e:
            return await self.refuse_frame(str(e))

        kind = frame["type"]
        if session.finished and kind in ("call", "log"):
            return  # the run is over (ended for flooding, say): nothing more is served
        if session.run is None:
            if kind == "wait":
                return self.wait_for_run(frame)
            if kind != "hello":
                return await self.refuse_frame("The isolate spoke before saying which run it is.")
            return await self.hello(frame)
        if kind == "call":
            call_id = frame.get("id")
            if not isinstance(call_id, (int, str)) or isinstance(call_id, bool):
                return await self.refuse_frame("The isolate sent a call without an id.")
            return await self.calls.receive(frame)
        if kind == "log":
            return await self.log(frame)
        if kind == "started":
            return self.events.publish({"event": "started", "t": time.time()})
        if kind == "done":
            return await self.done(frame)
        return await self.refuse_frame("The isolate said hello twice.")

    def wait_for_run(self, frame):
        """A warm isolate's connection, open before its run is known: the pool binds a
        run to it (bind) when it assigns the isolate one. A key the pool did not issue, or
        one already waiting, is ignored: the connection can still say hello."""
        if self.waiting_key is None and waiting.connection_waits(frame.get("key"), self.bind):
            self.waiting_key = frame["key"]

    async def bind(self, token):
        """The run of `token`, assigned to this connection's isolate by the pool of this
        process (isolates/pool.py, Isolate.assign): claimed and started as at a hello."""
        self.waiting_key = None
        if self.session.run is None:
            await self.hello({"type": "hello", "token": token})

    async def hello(self, frame):
        token = frame.get("token")
        session = self.session
        try:
            run = await session.claim(token, self.ended_before_start) if isinstance(token, str) and len(token) < 200 else None
            if run is not None:
                self.closed = _open[run.id] = asyncio.Event()
                self.events = RunEvents(self.channel_layer, run.id)
                self.calls = CallPipeline(session, self.send_frame_text, self.events.publish, self.end_flooded)
                self.console = Console(session.started_ms)
                await self.join_control_group()
                # Each npm: import becomes its vetted package's bundle, or a refusal (docs/packages.md).
                code = await link_block_async(session.ctx.tenant_id, run.code)
        except DATABASE_UNAVAILABLE:
            # The run cannot be looked up or started: the isolate exits when the
            # connection closes, and its run service records the run as failed once the
            # database is back.
            logger.warning("a run could not start: the database is unavailable")
            if session.run is not None:
                _open.pop(session.run.id, None)
                session.run = None
            await self.close(code=1011)
            return
        if run is None:
            session.record(capability="broker", operation="hello", outcome="denied", error_code="PERMISSION_DENIED",
                           message="A connection presented an unknown or used run token.")
            await self.close(code=4403)
            return
        hold = min(_start_at.pop(run.id, 0) - time.time(), MAX_START_HOLD_SECONDS)
        if hold > 0:
            await asyncio.sleep(hold)
        if session.finished:
            return  # ended before its start (ended_before_start): the block never starts
        await self.send(encode_frame({
            "type": "start",
            "code": code,
            "name": run.name or "block.js",
            "input": run.input,
            # An HTTP request to a block's endpoint calls its default export's fetch()
            # with the request in the input; every other run calls the default export.
            "entry": "fetch" if run.source == "http" else "default",
            "env": session.env,
            "callTimeoutMs": LIMITS["call_timeout_ms"],
            "maxInFlight": LIMITS["max_in_flight"],
            "consoleCap": session.ctx.policy.console_output_cap,
            "maxFrameBytes": frame_limit(session.ctx.policy),
            # The operations a block can call, and their capabilities: the runtime builds
            # the block's `symposium` API from them.
            "operations": OPERATION_CAPABILITIES,
        }))

    async def ended_before_start(self):
        """The run was ended (stopped, reaped) between its creation and its claim."""
        self.session.finished = True
        await self.run_stop({"reason": "The run was ended before its block started."})

    async def log(self, frame):
        if not self.console.rate.admit():
            return await self.end_flooded(CONSOLE_FLOOD)
        if self.session.ctx.sealed:
            self.session.note_placeholders("console", "", audit.storable(frame.get("text")))
        for event in self.console.add(frame, self.session.ctx.policy.console_output_cap):
            self.events.publish(event)

    async def done(self, frame):
        session = self.session
        if session.finished:
            return
        session.finished = True
        ok = frame.get("ok") is True
        # Stored and relayed as the other texts of the block are: storable first.
        frame = audit.storable_value(frame)
        session.refusals.close()
        error = frame.get("error") if isinstance(frame.get("error"), dict) else {}
        detail = None if ok else error_detail(error, session.run.code, session.run.name)
        self.events.publish({"event": "done", "ok": ok, "result": frame.get("result") if ok else None,
                             "error": None if ok else {"code": error.get("code"), "message": error.get("message"), **detail}})
        await self.events.flush()
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
                await session.save(self.console)
                await session.finish(**outcome)
                return
            except DATABASE_UNAVAILABLE:
                if time.monotonic() + delay > give_up:
                    logger.error("the outcome of run %s could not be recorded", session.run.id)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def refuse_frame(self, message):
        """A frame the runtime would never send: the sandbox is not behaving, end the run."""
        self.session.record(capability="broker", operation="frame", outcome="denied", error_code="INVALID_ARGUMENT",
                            message=message)
        if self.session.run and not self.session.finished:
            await self.end_run("INVALID_ARGUMENT", message, f"The run was stopped: {message}")
        await self.close(code=4400)

    async def end_flooded(self, message):
        """The run floods the platform (refused calls, console lines): end it, saying why
        to its author, as a forged frame is (refuse_frame)."""
        if self.session.finished:
            return
        self.session.record(capability="broker", operation="flood", outcome="denied", error_code="RATE_LIMITED",
                            message=message)
        await self.end_run("RATE_LIMITED", message, message)
        await self.close(code=4429)

    async def end_run(self, code, message, recorded):
        """End the run for the platform's reasons: its record, its watchers, its isolate."""
        self.session.finished = True
        self.session.refusals.close()
        await self.session.save(self.console)
        await self.session.finish("failed", error_code=code, error=recorded)
        self.events.publish({"event": "done", "ok": False, "error": {"code": code, "message": message}})
        await self.events.flush()
        await self.send(encode_frame({"type": "stop", "reason": message}))

    async def send_frame_text(self, text):
        """Send a frame, in parts when it is larger than one websocket message should be."""
        size = LIMITS["part_size"]
        if len(text) <= size:
            return await self.send(text)
        for offset in range(0, len(text), size):
            last = offset + size >= len(text)
            await self.send(encode_frame({"type": "part", "text": text[offset:offset + size], "last": last}))

    # -- the channel layer and the end -------------------------------------------------

    async def run_stop(self, event):
        """Asked to stop the run (the run service, a user's Stop)."""
        await self.send(encode_frame({"type": "stop", "reason": event.get("reason", "stopped")}))
        await self.close()

    async def join_control_group(self):
        try:
            await self.channel_layer.group_add(control_group(self.run.id), self.channel_name)
        except Exception:
            # Only stops asked from another server process use the group; the run
            # service of this one stops the isolate directly. Run without it.
            logger.warning("joining the control group of run %s failed", self.run.id)

    async def disconnect(self, code):
        if self.waiting_key is not None:
            waiting.connection_gone(self.waiting_key, self.bind)
        if self.calls is not None:
            self.calls.cancel_all()
        if not self.run:
            return
        self.session.refusals.close()
        await self.events.flush()
        self.events.close()
        try:
            await self.session.save(self.console)
        except DATABASE_UNAVAILABLE:
            logger.warning("the console of run %s could not be saved: the database is unavailable", self.run.id)
        try:
            await self.channel_layer.group_discard(control_group(self.run.id), self.channel_name)
        except Exception:
            logger.warning("leaving the control group of run %s failed", self.run.id)
        self.closed.set()
        _open.pop(self.run.id, None)
        # A run's canvases die with it (they would expire on their own later).
        await on_pool_thread(discard_canvases)(self.session.ctx)


def discard_canvases(ctx):
    try:
        discard_run(ctx)
    except Exception:
        logger.exception("forgetting the canvases of run %s failed", ctx.run_id)
