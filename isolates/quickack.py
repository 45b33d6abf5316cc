"""Isolates' frames without the delayed-ACK stall.

Deno's WebSocket client writes a frame whose payload is over about 1 KB as two writes
(header, then payload) on a socket with Nagle's algorithm on. The payload then waits
for the server to acknowledge the header, and the server's kernel delays that ACK by
up to 40 ms because nothing is sent back until the whole frame has arrived: every call
with more than ~1 KB of arguments (an email with an attachment, a kv.set of a document,
a SQL statement with many parameters) took 40-50 ms longer than a small one.

Nothing in the isolate can switch Nagle off for its WebSocket, so the server side
answers instead: on the isolates' own websocket (and only there) each read is followed
by TCP_QUICKACK, which makes the kernel acknowledge what it has received at once. It
costs one setsockopt per read. Browsers and applications' websockets are left alone.

Installed by symposium/asgi.py, so in every process that serves the broker (Daphne,
runserver, the in-process server of runblock and the tests) and in no other, as the
protocol class of Daphne's websocket factory: the factory's documented way of choosing
its protocol.
"""

import socket

from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

ISOLATE_PATH = b"/ws/isolate/"


class QuickAckWebSocketProtocol(WebSocketProtocol):
    quickack = False

    def onConnect(self, request):
        result = super().onConnect(request)
        self.quickack = getattr(self, "path", b"").startswith(ISOLATE_PATH) and hasattr(socket, "TCP_QUICKACK")
        return result

    def dataReceived(self, data):
        if self.quickack:
            try:
                self.transport.getHandle().setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except (OSError, AttributeError):
                # A transport without a socket (a test's in-memory one) or a closed one.
                self.quickack = False
        super().dataReceived(data)


def install():
    WebSocketFactory.protocol = QuickAckWebSocketProtocol
