"""The listener websocket: /ws/realtime/<tenant>/<channel>.

Who may listen, checked at the handshake (a refused one gets HTTP 403, and nothing is
subscribed):
- anyone, on a channel the tenant's administrator made public (Tenant.realtime_public_channels);
- a logged-in member of the tenant (any role), from a page of this site (the Origin is
  checked as for the runner, so another site's page cannot use the member's cookie);
- a client that one of settings.SYMPOSIUM_REALTIME_AUTHORIZERS accepts: each is the
  dotted path of a function `(scope, tenant, channel) -> bool`, run in a thread, for
  credentials other than the session (a run-scoped API token).
The tenant must be active and its profile must allow realtime channels.

A listener only receives: `{"channel": name, "message": value}` per message published.
Anything it sends closes the connection (4400), so a listener cannot use the server's
websocket limits for anything else.
"""

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils.module_loading import import_string

from capabilities.realtime import handlers, limits
from capabilities.realtime.channels import group_name, is_public, valid_channel
from console.runner import origin_allowed
from blocks.api import find_token, mark_used
from tenants.models import Membership, Tenant
from tenants.policy import effective_policy

logger = logging.getLogger(__name__)


def _authorizers():
    return [import_string(path) for path in settings.SYMPOSIUM_REALTIME_AUTHORIZERS]


def api_token_admits(authorization, tenant):
    """Whether `Authorization: Bearer <token>` is a usable API token of this tenant (a
    run token may listen; a deploy token can do what a run token can)."""
    scheme, _, presented = authorization.decode("latin1").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    token = find_token(presented.strip())
    if token is None or token.tenant_id != tenant.pk or not token.usable():
        return False
    mark_used(token)
    return True


@database_sync_to_async
def may_listen(scope, slug, channel):
    """The tenant if this handshake may listen on its channel, else None."""
    tenant = Tenant.objects.select_related("profile").prefetch_related("overrides").filter(slug=slug).first()
    if tenant is None or not tenant.is_active:
        return None
    if not effective_policy(tenant).realtime_max_message_bytes:
        return None
    if is_public(tenant, channel):
        return tenant
    user = scope.get("user")
    headers = dict(scope.get("headers") or [])
    same_site = origin_allowed(headers.get(b"origin", b"").decode("latin1"), headers.get(b"host", b"").decode("latin1"))
    if user is not None and user.is_authenticated and user.is_active and same_site:
        if Membership.objects.filter(tenant=tenant, user=user).exists():
            return tenant
    if api_token_admits(headers.get(b"authorization", b""), tenant):
        return tenant
    for authorizer in _authorizers():
        if authorizer(scope, tenant, channel):
            return tenant
    return None


class RealtimeListenerConsumer(AsyncWebsocketConsumer):
    # The channel-layer messages this consumer handles: an allow-list, never a method
    # picked by a message's type.
    DISPATCH = {
        "websocket.connect": "websocket_connect",
        "websocket.receive": "websocket_receive",
        "websocket.disconnect": "websocket_disconnect",
        "realtime.message": "realtime_message",
    }

    async def dispatch(self, message):
        name = self.DISPATCH.get(message.get("type"))
        if name is None:
            raise ValueError(f"No handler for message type {str(message.get('type'))[:40]}")
        await getattr(self, name)(message)

    async def connect(self):
        self.group = None
        kwargs = self.scope["url_route"]["kwargs"]
        slug, channel = kwargs.get("tenant", ""), kwargs.get("channel", "")
        tenant = await may_listen(self.scope, slug, channel) if valid_channel(channel) else None
        if tenant is None:
            # The same refusal for an unknown tenant, a private channel and a bad name:
            # a stranger learns nothing about which tenants or channels exist.
            await self.close()
            return
        if handlers.listeners_by_tenant.get(tenant.pk, 0) >= limits.MAX_LISTENERS_PER_TENANT:
            logger.warning("tenant %s has %s realtime listeners on this server; refusing more", slug, limits.MAX_LISTENERS_PER_TENANT)
            await self.close()
            return
        self.tenant_id = tenant.pk
        self.group = group_name(tenant.pk, channel)
        handlers.listener_loop = asyncio.get_running_loop()
        handlers.listeners[self.group] = handlers.listeners.get(self.group, 0) + 1
        handlers.listeners_by_tenant[tenant.pk] = handlers.listeners_by_tenant.get(tenant.pk, 0) + 1
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.close(code=4400)

    async def disconnect(self, code):
        if self.group is None:
            return
        group, self.group = self.group, None
        for counts, key in ((handlers.listeners, group), (handlers.listeners_by_tenant, self.tenant_id)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
        try:
            await self.channel_layer.group_discard(group, self.channel_name)
        except Exception:
            # Redis restarting: its group entry expires on its own (group_expiry).
            logger.warning("leaving realtime group %s failed", group)

    async def realtime_message(self, event):
        await self.send(text_data=json.dumps({"channel": event["channel"], "message": event["message"]}, ensure_ascii=False))
