"""The isolates' websocket acknowledges each read at once (isolates/quickack.py).

Without it, a call whose frame is over ~1 KB waited 40 ms for the server's delayed ACK
(Deno writes such a frame's header and payload separately, with Nagle on). The figure is
measured by bench/isolates.py (small and large arguments side by side); here, that the
server's isolate connections are the quick-ACK ones.
"""

import time

import pytest

from isolates.quickack import QuickAckWebSocketProtocol

pytestmark = pytest.mark.django_db(transaction=True)

BLOCK = """
const big = "x".repeat(8 * 1024);
for (let i = 0; i < 5; i++) await symposium.realtime.publish("news", big);
await new Promise((resolve) => setTimeout(resolve, 1500));
export default () => "done";
"""


def isolate_and_other_connections(server):
    protocols = [p for p, details in list(server.server.connections.items()) if "disconnected" not in details]
    websockets = [p for p in protocols if isinstance(p, QuickAckWebSocketProtocol)]
    return ([p for p in websockets if p.path.startswith(b"/ws/isolate/")],
            [p for p in websockets if not p.path.startswith(b"/ws/isolate/")])


def test_isolate_connections_acknowledge_at_once_and_others_are_left_alone(server, run_block, acme):
    runner = run_block
    run = runner.start(acme, BLOCK)

    deadline = time.monotonic() + 10
    isolates, others = [], []
    while time.monotonic() < deadline and not isolates:
        isolates, others = isolate_and_other_connections(server)
        time.sleep(0.05)
    assert isolates, "the run's isolate never connected"
    assert all(p.quickack for p in isolates)
    assert not any(p.quickack for p in others)
    assert runner.wait(run.id).status == "succeeded"
