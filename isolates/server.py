"""A Daphne server inside the current process, for `runblock` and tests.

It listens on a free loopback port and serves the same ASGI application as the real
server, so isolates started here talk to the real broker. Everything asynchronous (the
run service, its isolate pool, the channel layer) runs on the server's event loop; the
calling thread hands it coroutines with `call`.
"""

import asyncio
import threading

# daphne.server installs the asyncio reactor when imported, so it must come before
# twisted's reactor is imported.
from daphne.server import Server
from django.conf import settings
from twisted.internet import reactor


class LocalServer:
    def __init__(self, application=None, port=0):
        if application is None:
            # The project's application, imported when a server is made rather than
            # with this module: it routes to every app of the project, the pages
            # included, which the isolates package itself never imports.
            from symposium.asgi import application
        self.application = application
        self.requested_port = port
        self.port = None
        self.loop = None
        self.thread = None
        self.ready = threading.Event()
        self.failed = None

    def start(self, timeout=10):
        self.server = Server(
            self.application,
            endpoints=[f"tcp:port={self.requested_port}:interface=127.0.0.1"],
            signal_handlers=False,
            verbosity=0,
            websocket_max_message_size=settings.DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE,
            websocket_max_frame_size=settings.DAPHNE_WEBSOCKET_MAX_FRAME_SIZE,
        )
        self.thread = threading.Thread(target=self._run, name="local-daphne", daemon=True)
        self.thread.start()
        if not self.ready.wait(timeout):
            raise RuntimeError("The in-process server did not start listening.")
        if self.failed:
            raise RuntimeError(self.failed)
        return self

    def _run(self):
        def check_listening():
            if self.server.listening_addresses:
                self.port = self.server.listening_addresses[0][1]
                self.loop = asyncio.get_event_loop()
                self.ready.set()
            else:
                reactor.callLater(0.01, check_listening)

        reactor.callLater(0, check_listening)
        try:
            self.server.run()
        except Exception as e:  # pragma: no cover - reported to the starting thread
            self.failed = f"The in-process server failed: {e}"
            self.ready.set()

    def call(self, coro, timeout=None):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        if self.thread and self.thread.is_alive():
            reactor.callFromThread(reactor.stop)
            self.thread.join(10)


_local = None
_local_lock = threading.Lock()


def local_server():
    """The process's one in-process server (Twisted's reactor cannot start twice)."""
    global _local
    with _local_lock:
        if _local is None:
            _local = LocalServer().start()
        return _local
