"""Realtime channels across servers: two Daphne processes on one (private) Redis. A
listener on one server hears what a block run on the other publishes; another tenant's
listener hears nothing; a logged-out browser cannot listen to a private channel.
(tests/support/platform.py starts the processes; nothing here touches the suite's services.)"""

import asyncio
import json

import pytest

from tests.support.platform import Platform, RunnerClient, services_available
from tests.support.websocket import connect_local

pytestmark = [pytest.mark.slow]

PUBLISH = """
export default async () => (await symposium.realtime.publish('orders', { order: 42 })).data;
"""


@pytest.fixture(scope="module")
def cluster():
    reason = services_available()
    if reason:
        pytest.skip(reason)
    platform = Platform.shared()
    platform.realtime_session = platform.prepare(
        {"rt-acme": ("Interactive", {}), "rt-globex": ("Interactive", {})}, username="rita")
    platform.realtime_servers = [platform.start_server(), platform.start_server()]
    yield platform
    for server in platform.realtime_servers:
        server.kill()


def listener(server, session, tenant, channel="orders"):
    headers = {"Origin": f"http://127.0.0.1:{server.port}"}
    if session:
        headers["Cookie"] = f"sessionid={session}"
    return connect_local(server.port, f"/ws/realtime/{tenant}/{channel}", headers)


async def test_a_listener_on_one_server_hears_a_block_on_the_other(cluster):
    first, second = cluster.realtime_servers
    session = cluster.realtime_session
    ours = await listener(first, session, "rt-acme")
    theirs = await listener(first, session, "rt-globex")
    try:
        async with RunnerClient(second.port, session) as page:
            run = await page.start("rt-acme", PUBLISH)
            assert isinstance(run, str), run
            finished = await page.finished(run)
        assert finished["status"] == "succeeded", finished
        assert finished["result"] == {}  # across servers the number of listeners is not known
        heard = json.loads(await asyncio.wait_for(ours.receive(), 10))
        assert heard == {"channel": "orders", "message": {"order": 42}}
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(theirs.receive(), 1)
    finally:
        ours.abort()
        theirs.abort()


async def test_a_logged_out_browser_cannot_listen_on_either_server(cluster):
    for server in cluster.realtime_servers:
        with pytest.raises(ConnectionError) as info:
            await listener(server, None, "rt-acme")
        assert "403" in str(info.value)
