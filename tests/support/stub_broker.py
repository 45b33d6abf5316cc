"""A tiny broker that speaks the isolate frame protocol, for the isolate tests.

It is a real websocket server on 127.0.0.1 (tests/support/websocket.py), so the isolates
under test connect to it exactly as they will connect to the platform's
IsolateBrokerConsumer:

    async with StubBroker() as broker:
        run = broker.add_run("export default (x) => x * 2", input=21)
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        await isolate.assign(broker.url, run.token)
        done = await run.finished()           # the "done" frame
        assert done["result"] == 42

Calls are answered by the run's `answer(op, args)` function (plain or async): it returns
the reply's fields (`{"ok": True, "data": ...}` or `{"ok": False, "error": {...}}`), or
None for a call that is never answered. Frames are read and written by isolates.protocol,
as the platform's broker does: bytes travel as {"$bytes": base64} both ways.
"""

import asyncio
import secrets
import time

from isolates.protocol import FrameError, decode_value, encode_frame, parse_frame
from tests.support.websocket import serve


def echo(op, args):
    """The default answer: every call succeeds and echoes its arguments as data."""
    return {"ok": True, "data": args}


def registry_operations():
    """The platform's operations and their capabilities, as its broker sends them."""
    # Imported here, not at the top: the registry imports the capabilities' handlers,
    # which need Django's settings, and a script that runs this broker without Django
    # (a server killed outright, in test_pool) passes a table of its own instead.
    from capabilities.registry import OPERATION_CAPABILITIES

    return OPERATION_CAPABILITIES


class StubRun:
    def __init__(self, broker, code, name, input, env, call_timeout_ms, max_in_flight, console_cap, answer, extra):
        self.broker = broker
        self.token = secrets.token_urlsafe(24)
        self.start_frame = {
            "type": "start",
            "code": code,
            "name": name,
            "input": input,
            "env": env or {},
            "callTimeoutMs": call_timeout_ms,
            "maxInFlight": max_in_flight,
            "consoleCap": console_cap,
            # As the platform's broker does: the runtime builds the block's API from it.
            "operations": extra["operations"] if "operations" in extra else registry_operations(),
            **extra,
        }
        self.answer = answer
        self.frames = []  # every frame received, decoded, in order
        self.logs = []  # log frames
        self.calls = []  # call frames
        self.answer_errors = []  # exceptions raised by `answer`
        self.frame_errors = []  # frames isolates.protocol refused (FrameError)
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.started_at = None  # time.monotonic() when "started" arrived
        self.connected_at = None
        self.done = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.protocol = None

    @property
    def console_text(self):
        return "\n".join(frame["text"] for frame in self.logs)

    async def finished(self, timeout=15):
        """The run's "done" frame (raises TimeoutError if it never comes)."""
        return await asyncio.wait_for(asyncio.shield(self.done), timeout)

    async def disconnected(self, timeout=15):
        await asyncio.wait_for(self.closed.wait(), timeout)

    def stop(self, reason="stopped by the test"):
        self.protocol.send(encode_frame({"type": "stop", "reason": reason}))

    def _receive(self, frame):
        self.frames.append(frame)
        kind = frame.get("type")
        if kind == "started" and self.started_at is None:
            self.started_at = time.monotonic()
        elif kind == "log":
            self.logs.append(frame)
        elif kind == "call":
            self.calls.append(frame)
            asyncio.ensure_future(self._answer(frame))
        elif kind == "done" and not self.done.done():
            self.done.set_result(frame)

    async def _answer(self, frame):
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            reply = self.answer(frame["op"], frame.get("args", {}))
            if asyncio.iscoroutine(reply):
                reply = await reply
        except Exception as exc:
            # A bug in a test's answer function: the block sees INTERNAL, the test sees why.
            self.answer_errors.append(exc)
            reply = {"ok": False, "error": {"code": "INTERNAL", "message": "The stub broker's answer failed."}}
        finally:
            self.in_flight -= 1
        if reply is None or self.protocol is None or self.closed.is_set():
            return
        self.protocol.send(encode_frame({"type": "reply", "id": frame["id"], **reply}))


class StubBroker:
    def __init__(self, max_message_bytes=256 * 1024 * 1024):
        self.runs = {}
        self.refused = 0
        self.max_message_bytes = max_message_bytes
        self.server = None
        self.port = None
        self.connections = set()

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws/isolate/"

    async def start(self):
        self.server = await serve(self._serve, max_message_bytes=self.max_message_bytes)
        self.port = self.server.port
        return self

    async def close(self):
        self.server.close()
        for connection in list(self.connections):
            connection.abort()
        await self.server.wait_closed()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.close()

    async def _serve(self, connection):
        self.connections.add(connection)
        run = None
        try:
            while True:
                hello = await connection.receive()
                try:
                    frame = parse_frame(hello) if hello else {}
                except FrameError:
                    frame = {}
                # A warm isolate says it waits on its connection: this broker binds no
                # run to one (the platform's does, isolates/waiting.py), and waits for
                # the hello that follows the isolate's assignment on stdin.
                if frame.get("type") != "wait":
                    break
            run = self.runs.get(frame.get("token")) if frame.get("type") == "hello" else None
            if run is None or run.protocol is not None:
                self.refused += 1
                await connection.close(4403, "unknown token")
                return
            run.protocol = connection
            run.connected_at = time.monotonic()
            connection.send(encode_frame(run.start_frame))
            while (text := await connection.receive()) is not None:
                try:
                    frame = decode_value(parse_frame(text))
                except FrameError as error:
                    # The platform's broker would end the run; the test sees why.
                    run.frame_errors.append(error)
                    connection.abort()
                    break
                run._receive(frame)
        finally:
            self.connections.discard(connection)
            if run is not None and run.protocol is connection:
                run.closed.set()
            if not connection.closed:
                connection.abort()

    def add_run(
        self,
        code,
        name="block.js",
        input=None,
        env=None,
        call_timeout_ms=5000,
        max_in_flight=16,
        console_cap=1024 * 1024,
        answer=echo,
        **extra,
    ):
        run = StubRun(self, code, name, input, env, call_timeout_ms, max_in_flight, console_cap, answer, extra)
        self.runs[run.token] = run
        return run


async def run_block(pool, broker, code, memory_mb=64, cpu_seconds=10, wall_seconds=15, **run_options):
    """Run one block on an isolate from `pool` against `broker`, as the run manager does:
    acquire, assign, wait up to `wall_seconds` (then kill). Returns (run, done frame or
    None, IsolateExit)."""
    run = broker.add_run(code, **run_options)
    isolate = await pool.acquire(memory_mb=memory_mb, cpu_seconds=cpu_seconds)
    run.isolate = isolate
    await isolate.assign(broker.url, run.token)
    try:
        exit = await asyncio.wait_for(isolate.wait(), wall_seconds)
    except asyncio.TimeoutError:
        isolate.kill()
        exit = await isolate.wait()
    done = run.done.result() if run.done.done() else None
    return run, done, exit
