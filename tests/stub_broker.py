"""A tiny broker that speaks the isolate frame protocol, for the isolate tests.

It is a real websocket server on 127.0.0.1 (a small RFC 6455 server on asyncio streams:
autobahn's asyncio flavour cannot load in a process where Daphne chose Twisted), so the
isolates under test connect to it exactly as they will connect to the platform's
IsolateBrokerConsumer:

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
import hashlib
import json
import secrets
import struct
import time

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


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
            "input": encode_bytes(input),
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
        self.protocol.send(json.dumps({"type": "stop", "reason": reason}))

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
        reply = {"type": "reply", "id": frame["id"], **encode_bytes(reply)}
        self.protocol.send(json.dumps(reply))


class WebSocketConnection:
    """The server side of one websocket: text messages in, text messages out."""

    def __init__(self, reader, writer, max_message_bytes):
        self.reader = reader
        self.writer = writer
        self.max_message_bytes = max_message_bytes
        self.closed = False

    async def handshake(self):
        request = await self.reader.readuntil(b"\r\n\r\n")
        headers = {}
        for line in request.decode("latin-1").split("\r\n")[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
        self.writer.write(
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        await self.writer.drain()

    async def _frame(self):
        head = await self.reader.readexactly(2)
        fin, opcode = head[0] & 0x80, head[0] & 0x0F
        masked, length = head[1] & 0x80, head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        if length > self.max_message_bytes:
            raise ValueError("frame too large")
        mask = await self.reader.readexactly(4) if masked else b"\0\0\0\0"
        payload = bytearray(await self.reader.readexactly(length))
        if masked:
            # XOR with the repeating 4-byte mask, a machine word at a time.
            whole = mask * (length // 4 + 1)
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(whole[:length], "big")).to_bytes(length, "big")
        return bool(fin), opcode, bytes(payload)

    async def receive(self):
        """The next text message, or None when the connection has closed."""
        parts = []
        while True:
            try:
                fin, opcode, payload = await self._frame()
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                self.closed = True
                return None
            if opcode == OP_CLOSE:
                await self.close()
                return None
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
                continue
            if opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode()

    def _send(self, opcode, payload):
        if self.closed:
            return
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
        self.writer.write(header + payload)

    def send(self, text):
        self._send(OP_TEXT, text.encode())

    async def close(self, code=1000, reason=""):
        if not self.closed:
            self._send(OP_CLOSE, struct.pack("!H", code) + reason.encode())
            self.closed = True
        self.writer.close()

    def abort(self):
        self.closed = True
        self.writer.transport.abort()


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
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
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

    async def _serve(self, reader, writer):
        connection = WebSocketConnection(reader, writer, self.max_message_bytes)
        self.connections.add(connection)
        run = None
        try:
            await connection.handshake()
            hello = await connection.receive()
            frame = json.loads(hello) if hello else {}
            run = self.runs.get(frame.get("token")) if frame.get("type") == "hello" else None
            if run is None or run.protocol is not None:
                self.refused += 1
                await connection.close(4403, "unknown token")
                return
            run.protocol = connection
            run.connected_at = time.monotonic()
            connection.send(json.dumps(run.start_frame))
            while (text := await connection.receive()) is not None:
                run._receive(decode_bytes(json.loads(text)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
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
