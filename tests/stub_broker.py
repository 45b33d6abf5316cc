"""A tiny broker that speaks the isolate frame protocol, for the isolate tests.

It is a real websocket server on 127.0.0.1 (autobahn's asyncio server, already installed
with Daphne), so the isolates under test connect to it exactly as they will connect to
the platform's IsolateBrokerConsumer:

    async with StubBroker() as broker:
        run = broker.add_run("export default (x) => x * 2", input=21)
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        await isolate.assign(broker.url, run.token)
        done = await run.finished()           # the "done" frame
        assert done["result"] == 42

Calls are answered by the run's `answer(op, args)` function (plain or async): it returns
the reply's fields (`{"ok": True, "data": ...}` or `{"ok": False, "error": {...}}`), or
None for a call that is never answered. Bytes travel as {"$bytes": base64} both ways.
"""

import asyncio
import base64
import json
import secrets
import time

from autobahn.asyncio.websocket import WebSocketServerFactory, WebSocketServerProtocol


def decode_bytes(value):
    if isinstance(value, dict):
        if set(value) == {"$bytes"} and isinstance(value["$bytes"], str):
            return base64.b64decode(value["$bytes"])
        return {k: decode_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_bytes(v) for v in value]
    return value


def encode_bytes(value):
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: encode_bytes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_bytes(v) for v in value]
    return value


def echo(op, args):
    """The default answer: every call succeeds and echoes its arguments as data."""
    return {"ok": True, "data": args}


class StubRun:
    def __init__(self, broker, code, name, input, env, call_timeout_ms, max_in_flight, console_cap, answer, extra):
        self.broker = broker
        self.token = secrets.token_urlsafe(24)
        self.start_frame = {
            "type": "start",
            "code": code,
            "name": name,
            "input": encode_bytes(input),
            "env": env or {},
            "callTimeoutMs": call_timeout_ms,
            "maxInFlight": max_in_flight,
            "consoleCap": console_cap,
            **extra,
        }
        self.answer = answer
        self.frames = []  # every frame received, decoded, in order
        self.logs = []  # log frames
        self.calls = []  # call frames
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
        self.protocol.sendMessage(json.dumps({"type": "stop", "reason": reason}).encode())

    async def _answer(self, frame):
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            reply = self.answer(frame["op"], decode_bytes(frame.get("args", {})))
            if asyncio.iscoroutine(reply):
                reply = await reply
        finally:
            self.in_flight -= 1
        if reply is None or self.protocol is None or self.closed.is_set():
            return
        reply = {"type": "reply", "id": frame["id"], **encode_bytes(reply)}
        self.protocol.sendMessage(json.dumps(reply).encode())


class StubBrokerProtocol(WebSocketServerProtocol):
    broker = None

    def onOpen(self):
        self.run = None

    def onMessage(self, payload, is_binary):
        frame = json.loads(payload)
        if self.run is None:
            run = self.broker.runs.get(frame.get("token")) if frame.get("type") == "hello" else None
            if run is None or run.protocol is not None:
                self.broker.refused += 1
                self.sendClose(4403, "unknown token")
                return
            self.run = run
            run.protocol = self
            run.connected_at = time.monotonic()
            self.sendMessage(json.dumps(run.start_frame).encode())
            return
        run = self.run
        frame = decode_bytes(frame)
        run.frames.append(frame)
        kind = frame.get("type")
        if kind == "started" and run.started_at is None:
            run.started_at = time.monotonic()
        elif kind == "log":
            run.logs.append(frame)
        elif kind == "call":
            run.calls.append(frame)
            asyncio.ensure_future(run._answer(frame))
        elif kind == "done" and not run.done.done():
            run.done.set_result(frame)

    def onClose(self, was_clean, code, reason):
        if self.run is not None:
            self.run.closed.set()


class StubBroker:
    def __init__(self, max_message_bytes=256 * 1024 * 1024):
        self.runs = {}
        self.refused = 0
        self.max_message_bytes = max_message_bytes
        self.server = None
        self.port = None

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws/isolate/"

    async def start(self):
        factory = WebSocketServerFactory("ws://127.0.0.1")
        factory.setProtocolOptions(maxMessagePayloadSize=self.max_message_bytes, maxFramePayloadSize=self.max_message_bytes)
        broker = self

        class Protocol(StubBrokerProtocol):
            pass

        Protocol.broker = broker
        factory.protocol = Protocol
        self.server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self):
        self.server.close()
        for run in self.runs.values():
            if run.protocol is not None and not run.closed.is_set():
                run.protocol.dropConnection(abort=True)
        await self.server.wait_closed()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.close()

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
