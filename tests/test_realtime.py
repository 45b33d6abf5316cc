"""Realtime channels over real websockets against the in-process Daphne server: blocks in
real isolates publish, listeners on /ws/realtime/<tenant>/<channel> receive; who may
listen is checked at the handshake. (Two servers on one Redis: test_realtime_cluster.py.)"""

import asyncio
import json
from datetime import timedelta

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.test import Client
from django.utils import timezone

from blocks.models import ApiToken
from capabilities import realtime
from capabilities.base import CapabilityError
from capabilities.realtime import handlers
from tenants.models import Membership, PolicyOverride
from tenants.ratelimit import limiter, reset_limiter
from tests.helpers import context_for
from tests.support.websocket import connect_local

pytestmark = [pytest.mark.django_db(transaction=True)]

PUBLISH = """
export default async (input) => {
  const replies = [];
  for (const message of input.messages) replies.push((await symposium.realtime.publish(input.channel, message)).data);
  return replies;
};
"""


@pytest.fixture(autouse=True)
def fresh_limits():
    reset_limiter()
    limiter().reset()
    yield
    reset_limiter()


@pytest.fixture
def globex(make_tenant, people):
    tenant = make_tenant("globex", "Interactive")
    Membership.objects.create(tenant=tenant, user=people["mallory"], role="owner")
    return tenant


def session_of(user):
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def listen(server, tenant_slug, channel, session=None, origin="same"):
    """Headers of a listener's handshake, as a browser on this site (or `origin`) sends them."""
    headers = {}
    if origin == "same":
        headers["Origin"] = f"http://127.0.0.1:{server.port}"
    elif origin:
        headers["Origin"] = origin
    if session:
        headers["Cookie"] = f"sessionid={session}"
    return connect_local(server.port, f"/ws/realtime/{tenant_slug}/{channel}", headers)


async def receive(ws, timeout=5):
    text = await asyncio.wait_for(ws.receive(), timeout)
    return json.loads(text) if text is not None else None


async def nothing_arrives(ws, within=0.5):
    try:
        await asyncio.wait_for(ws.receive(), within)
    except asyncio.TimeoutError:
        return True
    return False


def exact_counts():
    return isinstance(get_channel_layer(), InMemoryChannelLayer)


def test_a_member_receives_what_a_block_publishes(server, run_block, acme, people, dispatch_path):
    async def scenario():
        ws = await listen(server, "acme", "orders", session_of_alice)
        run = await run_block._run(acme, PUBLISH, {"channel": "orders", "messages": [{"order": 1, "total": 9.5}, "second"]})
        first, second = await receive(ws), await receive(ws)
        ws.abort()
        return run, first, second

    session_of_alice = session_of(people["alice"])
    run, first, second = server.call(scenario(), 60)
    assert run.status == "succeeded", run.error
    assert first == {"channel": "orders", "message": {"order": 1, "total": 9.5}}
    assert second == {"channel": "orders", "message": "second"}
    # One process holds every listener with the embedded channel layer: the count is
    # exact. Across servers (Redis) it cannot be known, and is omitted.
    assert run.result == ([{"delivered": 1}] * 2 if exact_counts() else [{}, {}])


def test_publishing_with_nobody_listening_succeeds(run_block, acme):
    run = run_block(acme, PUBLISH, {"channel": "empty", "messages": [1]})
    assert run.status == "succeeded" and run.result == ([{"delivered": 0}] if exact_counts() else [{}])


def test_anyone_may_listen_on_a_public_channel(server, run_block, acme):
    acme.realtime_public_channels = "status\nscores:*"
    acme.save()

    async def scenario():
        status = await listen(server, "acme", "status", origin="https://elsewhere.example")
        scores = await listen(server, "acme", "scores:finals", origin=None)
        await run_block._run(acme, PUBLISH, {"channel": "status", "messages": ["up"]})
        await run_block._run(acme, PUBLISH, {"channel": "scores:finals", "messages": [3]})
        got = await receive(status), await receive(scores)
        status.abort()
        scores.abort()
        return got

    assert server.call(scenario(), 60) == ({"channel": "status", "message": "up"}, {"channel": "scores:finals", "message": 3})


def test_listeners_leave_nothing_behind(server, acme, people):
    session = session_of(people["bob"])

    async def scenario():
        sockets = [await listen(server, "acme", "orders", session) for _ in range(3)]
        during = dict(handlers.listeners_by_tenant)
        for ws in sockets:
            ws.abort()
        for _ in range(100):
            if acme.pk not in handlers.listeners_by_tenant:
                break
            await asyncio.sleep(0.02)
        return during, dict(handlers.listeners_by_tenant)

    during, after = server.call(scenario(), 30)
    assert during[acme.pk] == 3 and acme.pk not in after


def test_an_authorizer_admits_other_credentials(server, settings, acme):
    settings.SYMPOSIUM_REALTIME_AUTHORIZERS = ["tests.test_realtime.admit_test_token"]

    async def scenario():
        ws = await connect_local(server.port, "/ws/realtime/acme/orders", {"Authorization": "Bearer test-token-acme"})
        ws.abort()
        with pytest.raises(ConnectionError):
            await connect_local(server.port, "/ws/realtime/acme/orders", {"Authorization": "Bearer wrong"})

    server.call(scenario(), 30)


def test_an_api_token_of_the_tenant_may_listen(server, acme, globex):
    _, run_token = ApiToken.issue(acme, name="dashboard", scope="run")
    _, deploy_token = ApiToken.issue(acme, name="ci", scope="deploy")
    _, other_tenants = ApiToken.issue(globex, name="theirs", scope="run")
    revoked, revoked_token = ApiToken.issue(acme, name="old", scope="run")
    revoked.revoked = timezone.now()
    revoked.save()
    expired, expired_token = ApiToken.issue(acme, name="expired", scope="run", expires=timezone.now() - timedelta(days=1))

    async def attempt(token):
        try:
            ws = await connect_local(server.port, "/ws/realtime/acme/orders", {"Authorization": f"Bearer {token}"})
        except ConnectionError:
            return "refused"
        ws.abort()
        return "admitted"

    async def scenario():
        return [await attempt(t) for t in (run_token, deploy_token, other_tenants, revoked_token, expired_token, "sym_made-up")]

    assert server.call(scenario(), 30) == ["admitted", "admitted", "refused", "refused", "refused", "refused"]


def admit_test_token(scope, tenant, channel):
    """A test authorizer: a bearer token naming the tenant."""
    return dict(scope["headers"]).get(b"authorization") == f"Bearer test-token-{tenant.slug}".encode()


# -- containment ----------------------------------------------------------------------


def test_cant_hear_another_tenants_channel(server, run_block, acme, globex, people):
    async def scenario():
        theirs = await listen(server, "globex", "orders", session_of_mallory)
        ours = await listen(server, "acme", "orders", session_of_alice)
        await run_block._run(acme, PUBLISH, {"channel": "orders", "messages": ["acme's secret"]})
        received = await receive(ours)
        silent = await nothing_arrives(theirs)
        theirs.abort()
        ours.abort()
        return received, silent

    session_of_mallory, session_of_alice = session_of(people["mallory"]), session_of(people["alice"])
    received, silent = server.call(scenario(), 60)
    assert received["message"] == "acme's secret" and silent


@pytest.mark.parametrize("who, origin", [
    (None, "same"),                           # logged out
    ("mallory", "same"),                      # logged in, not a member of acme
    ("alice", "https://evil.example"),        # a member's cookie, sent by another site's page
    ("alice", None),                          # a member's cookie without an Origin
])
def test_cant_listen_to_a_private_channel_without_being_admitted(server, acme, people, who, origin):
    session = session_of(people[who]) if who else None

    async def scenario():
        with pytest.raises(ConnectionError) as info:
            await listen(server, "acme", "orders", session, origin)
        return str(info.value)

    assert "403" in server.call(scenario(), 30)


@pytest.mark.parametrize("path", ["/ws/realtime/acme/bad%20name", "/ws/realtime/acme/-dash", "/ws/realtime/nosuch/orders",
                                  "/ws/realtime/acme/" + "x" * 101])
def test_cant_listen_on_bad_names_or_unknown_tenants(server, acme, people, path):
    session = session_of(people["alice"])

    async def scenario():
        with pytest.raises(ConnectionError):
            await connect_local(server.port, path, {"Origin": f"http://127.0.0.1:{server.port}", "Cookie": f"sessionid={session}"})

    server.call(scenario(), 30)


def test_cant_listen_on_a_profile_without_realtime(server, make_tenant, people):
    basic = make_tenant("plain", "Basic", realtime_public_channels="*")

    async def scenario():
        with pytest.raises(ConnectionError):
            await listen(server, "plain", "news")

    server.call(scenario(), 30)
    with pytest.raises(CapabilityError) as info:
        realtime.realtime_publish(context_for(basic), {"channel": "news", "message": 1})
    assert info.value.code == "PERMISSION_DENIED" and "does not allow realtime channels" in info.value.message


def test_cant_send_through_a_listener(server, acme):
    acme.realtime_public_channels = "status"
    acme.save()

    async def scenario():
        ws = await listen(server, "acme", "status")
        ws.send("x" * 1000)
        return await receive(ws)

    assert server.call(scenario(), 30) is None  # closed (4400)


def test_cant_publish_past_the_size_limit(acme):
    PolicyOverride.objects.create(tenant=acme, setting="realtime_max_message_bytes", value="20")
    realtime.realtime_publish(context_for(acme), {"channel": "c", "message": "x" * 18})
    with pytest.raises(CapabilityError) as info:
        realtime.realtime_publish(context_for(acme), {"channel": "c", "message": "x" * 19})
    assert info.value.code == "QUOTA_EXCEEDED" and "21 bytes" in info.value.message and "at most 20" in info.value.message


def test_cant_publish_past_the_rate_limit(run_block, acme):
    PolicyOverride.objects.create(tenant=acme, setting="realtime_rate_per_minute", value="2")
    code = """export default async () => { const out = [];
      for (let i = 0; i < 3; i++) { try { await symposium.realtime.publish('c', i); out.push('ok'); }
      catch (e) { out.push(e.code); } } return out; };"""
    assert run_block(acme, code).result == ["ok", "ok", "RATE_LIMITED"]


@pytest.mark.parametrize("args", [
    {"channel": "", "message": 1},
    {"channel": "a/b", "message": 1},
    {"channel": "x" * 101, "message": 1},
    {"channel": 7, "message": 1},
    {"channel": "ok"},
    {"channel": "ok", "message": float("nan")},
    {"channel": "ok", "message": {"raw": b"\x00"}},
])
def test_cant_publish_malformed_calls(acme, args):
    with pytest.raises(CapabilityError) as info:
        realtime.realtime_publish(context_for(acme), args)
    assert info.value.code == "INVALID_ARGUMENT"
