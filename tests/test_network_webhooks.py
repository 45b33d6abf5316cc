"""network.sendWebhook against a real receiver on 127.0.0.1 that checks Standard
Webhooks signatures on its own (tests.support.tls_servers.verify_standard_webhook)."""

import base64
import json
import os
import time

import pytest

from capabilities import network
from capabilities.base import CapabilityError
from capabilities.network import webhooks
from tests.support.tls_servers import LocalServer
from tests.helpers import context_for

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def receiver():
    server = LocalServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def fresh_receiver(receiver, monkeypatch):
    state = receiver.state
    with state.lock:
        state.requests.clear()
        state.fail_next, state.fail_status, state.webhook_key = 0, 500, None
    # Short waits between attempts keep the tests fast; one test checks the real ones.
    monkeypatch.setattr(webhooks, "WEBHOOK_BACKOFF_SECONDS", 0.05)


@pytest.fixture
def signing_tenant(make_tenant, receiver):
    key = os.urandom(32)
    tenant = make_tenant("hooks", "Data", network_allowed_hosts="127.0.0.1")
    tenant.webhook_secret = "whsec_" + base64.b64encode(key).decode()
    tenant.save()
    receiver.state.webhook_key = key
    return tenant


def send(ctx, url, payload, **options):
    return network.send_webhook(ctx, {"url": url, "payload": payload, **options})


def test_it_delivers_a_signed_webhook(signing_tenant, receiver):
    ctx = context_for(signing_tenant)
    payload = {"event": "user_action", "data": {"action": "file_upload", "size": 1024}}  # the seed's
    reply = send(ctx, receiver.url("/webhook"), payload)
    assert reply["ok"] is True and reply["status"] == 200
    assert reply["data"]["delivered"] is True and reply["data"]["attempts"] == 1 and reply["data"]["response"] == "thanks"
    [request] = receiver.state.requests
    assert request["verified"] is True
    assert json.loads(request["body"]) == payload
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["webhook-id"] == reply["data"]["id"] and reply["data"]["id"].startswith("msg_")
    assert abs(int(request["headers"]["webhook-timestamp"]) - time.time()) < 5
    [attempt] = reply["attempts"]
    assert attempt["attempt"] == 1 and attempt["status"] == 200 and attempt["error"] is None and attempt["durationMs"] >= 0


def test_it_signs_with_a_raw_secret_too(make_tenant, receiver):
    tenant = make_tenant("rawhooks", "Data", network_allowed_hosts="127.0.0.1")
    tenant.webhook_secret = "a plain shared secret"
    tenant.save()
    receiver.state.webhook_key = b"a plain shared secret"
    assert send(context_for(tenant), receiver.url("/webhook"), {"n": 1})["ok"] is True
    assert receiver.state.requests[0]["verified"] is True


def test_it_sends_unsigned_webhooks_without_a_secret(make_tenant, receiver):
    ctx = context_for(make_tenant("plain", "Data", network_allowed_hosts="127.0.0.1"))
    reply = send(ctx, receiver.url("/webhook"), [1, 2, 3], headers={"X-Source": "block"})
    assert reply["ok"] is True
    headers = receiver.state.requests[0]["headers"]
    assert "webhook-signature" not in headers and headers["webhook-id"] == reply["data"]["id"]
    assert headers["x-source"] == "block"


def test_a_receiver_rejects_a_forged_signature(signing_tenant, receiver):
    # The receiver's check is real: a signature made with another key fails it.
    ctx = context_for(signing_tenant)
    receiver.state.webhook_key = os.urandom(32)
    reply = send(ctx, receiver.url("/webhook"), {"n": 1})
    assert reply["ok"] is False and reply["status"] == 401 and reply["data"]["delivered"] is False
    # A 401 is the receiver's answer, not an outage: it is not retried.
    assert reply["data"]["attempts"] == 1 and receiver.state.requests[0]["verified"] is False


def test_it_retries_on_server_errors_then_delivers(signing_tenant, receiver):
    receiver.state.fail_next = 2
    reply = send(context_for(signing_tenant), receiver.url("/webhook"), {"n": 1})
    assert reply["ok"] is True and reply["data"]["attempts"] == 3
    assert [a["status"] for a in reply["attempts"]] == [500, 500, 200]
    requests = receiver.state.requests
    # One delivery: the same id on every attempt, each attempt signed anew.
    assert len({r["headers"]["webhook-id"] for r in requests}) == 1
    assert all(r["verified"] for r in requests)
    gaps = [b["time"] - a["time"] for a, b in zip(requests, requests[1:])]
    assert gaps[1] > gaps[0] >= 0.05  # exponential backoff


def test_it_gives_up_after_the_retries(signing_tenant, receiver):
    receiver.state.fail_next, receiver.state.fail_status = 100, 503
    reply = send(context_for(signing_tenant), receiver.url("/webhook"), {"n": 1}, retries=2)
    assert reply["ok"] is False and reply["status"] == 503 and reply["data"]["delivered"] is False
    assert [a["status"] for a in reply["attempts"]] == [503, 503, 503]
    reply = send(context_for(signing_tenant), receiver.url("/webhook"), {"n": 1}, retries=0)
    assert len(reply["attempts"]) == 1


def test_it_retries_when_the_receiver_cannot_be_reached(make_tenant):
    closed = LocalServer()
    url = closed.url("/webhook")
    closed.close()
    ctx = context_for(make_tenant("down", "Data", network_allowed_hosts="127.0.0.1"))
    with pytest.raises(CapabilityError) as caught:
        send(ctx, url, {"n": 1}, retries=2)
    assert caught.value.code == "UPSTREAM_ERROR"
    assert caught.value.message.startswith("The webhook was not delivered after 3 attempt(s): Could not connect to 127.0.0.1")
    # The attempts travel with the error, for the audit log.
    assert [a["error"] is not None for a in caught.value.attempts] == [True, True, True]


def test_it_waits_with_exponential_backoff_within_the_calls_deadline(signing_tenant, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "WEBHOOK_BACKOFF_SECONDS", 0.5)
    receiver.state.fail_next = 100
    ctx = context_for(signing_tenant)
    ctx.deadline = time.time() + 2.0
    started = time.monotonic()
    reply = send(ctx, receiver.url("/webhook"), {"n": 1}, retries=5)
    elapsed = time.monotonic() - started
    # Attempts at about 0 s, 0.5 s and 1.5 s; the next would start after 3.5 s, past
    # the deadline, so the call ends instead of waiting for it.
    assert len(reply["attempts"]) == 3 and reply["ok"] is False
    assert 1.4 < elapsed < 2.0, elapsed


def test_cant_send_webhooks_to_private_addresses(make_tenant, receiver):
    ctx = context_for(make_tenant("nolist", "Data"))
    with pytest.raises(CapabilityError) as caught:
        send(ctx, receiver.url("/webhook"), {"n": 1})
    assert caught.value.code == "PERMISSION_DENIED" and len(caught.value.attempts) == 1
    for url in ["http://169.254.169.254/hook", "http://[::1]/hook", "file:///tmp/hook"]:
        with pytest.raises(CapabilityError):
            send(ctx, url, {"n": 1})
    assert receiver.state.requests == []


def test_cant_forge_the_signature_headers(signing_tenant, receiver):
    ctx = context_for(signing_tenant)
    for name in ["webhook-signature", "Webhook-Id", "webhook-timestamp", "Content-Type"]:
        with pytest.raises(CapabilityError) as caught:
            send(ctx, receiver.url("/webhook"), {"n": 1}, headers={name: "v1,forged"})
        assert caught.value.code == "INVALID_ARGUMENT"
    for options in [{"retries": -1}, {"retries": 99}, {"retries": True}, {"timeout": 0}]:
        with pytest.raises(CapabilityError):
            send(ctx, receiver.url("/webhook"), {"n": 1}, **options)
    with pytest.raises(CapabilityError):
        send(ctx, receiver.url("/webhook"), float("nan"))
    assert receiver.state.requests == []


def test_it_refuses_a_malformed_whsec_secret(make_tenant, receiver):
    tenant = make_tenant("broken", "Data", network_allowed_hosts="127.0.0.1")
    tenant.webhook_secret = "whsec_not base64!"
    tenant.save()
    with pytest.raises(CapabilityError) as caught:
        send(context_for(tenant), receiver.url("/webhook"), {"n": 1})
    assert "webhook secret" in caught.value.message and "not base64!" not in caught.value.message
