"""The tests' one websocket client and server, on the `websockets` package.

    async with await connect(url, headers={"Origin": ..., "Cookie": ...}) as peer:
        peer.send(text)                  # queued, sent in order
        text = await peer.receive()      # None once the connection is closed

    server = await serve(handle, max_message_bytes=...)   # handle(peer) per connection
    server.port; server.close(); await server.wait_closed()

`websockets` runs on asyncio alone, so it loads in the test process although Daphne has
chosen Twisted there (autobahn's asyncio flavour cannot). Both ends leave out what the
platform's peers do not use: no proxy (nothing leaves 127.0.0.1), no compression, no
keepalive pings (a test decides itself how long it waits).
"""

import asyncio

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed, InvalidStatus


class Peer:
    """One end of a websocket: text messages in and out.

    send() does not wait: it queues the message for a writer task, so code that is not a
    coroutine (a test's run.stop()) can send, and messages leave in the order sent."""

    def __init__(self, connection):
        self.connection = connection
        self.outbox = asyncio.Queue()
        self.writer = asyncio.ensure_future(self._write())

    @property
    def closed(self):
        return self.connection.close_code is not None or self.writer.done()

    async def _write(self):
        while True:
            text = await self.outbox.get()
            try:
                await self.connection.send(text)
            except ConnectionClosed:
                return
            finally:
                self.outbox.task_done()

    def send(self, text):
        if not self.closed:
            self.outbox.put_nowait(text)

    async def receive(self):
        """The next message as text; None once the connection has closed."""
        try:
            message = await self.connection.recv()
        except ConnectionClosed:
            return None
        return message.decode() if isinstance(message, bytes) else message

    async def drain(self):
        """Wait until every queued message has been handed to the connection."""
        sent = asyncio.ensure_future(self.outbox.join())
        await asyncio.wait({sent, self.writer}, return_when=asyncio.FIRST_COMPLETED)
        sent.cancel()

    async def close(self, code=1000, reason=""):
        await self.drain()
        self.writer.cancel()
        await self.connection.close(code, reason)

    def abort(self):
        """Drop the connection without a closing handshake, as a crashed peer would."""
        self.writer.cancel()
        self.connection.transport.abort()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


async def connect(url, headers=None, max_message_bytes=None):
    """A client Peer. A refused handshake raises ConnectionError with the status line."""
    headers = dict(headers or {})
    origin = headers.pop("Origin", None)
    try:
        connection = await ws_connect(url, origin=origin, additional_headers=headers, proxy=None, compression=None,
                                      ping_interval=None, max_size=max_message_bytes)
    except InvalidStatus as refused:
        raise ConnectionError(f"the websocket handshake was refused: {refused.response.status_code}") from None
    return Peer(connection)


def connect_local(port, path, headers=None):
    """A client Peer of a server of this machine's: ws://127.0.0.1:PORT/PATH."""
    return connect(f"ws://127.0.0.1:{port}{path}", headers)


class Server:
    def __init__(self, server):
        self.server = server
        self.port = server.sockets[0].getsockname()[1]

    def close(self):
        self.server.close(close_connections=False)

    async def wait_closed(self):
        await self.server.wait_closed()


async def serve(handle, max_message_bytes=None):
    """A server on a free port of 127.0.0.1 that calls `await handle(peer)` for each
    connection. A message larger than `max_message_bytes` closes that connection."""

    async def handler(connection):
        peer = Peer(connection)
        try:
            await handle(peer)
        finally:
            peer.writer.cancel()

    server = await ws_serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=max_message_bytes)
    return Server(server)
