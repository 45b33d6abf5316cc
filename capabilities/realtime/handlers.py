"""realtime.publish: a JSON message to whoever listens on one of the tenant's channels.

The message goes to the channel layer's group of (tenant, channel); listeners
(console/realtime.py) are members of it wherever they are connected, so with
Redis any server's listeners receive it. Publishing to a channel nobody listens on costs
one group send and succeeds.
"""

import asyncio
import concurrent.futures
import json
import threading

from channels.layers import InMemoryChannelLayer, get_channel_layer

from capabilities.base import CapabilityError
from capabilities.realtime import limits
from capabilities.realtime.channels import check_channel, group_name

# Listeners connected to this process, by group, and the event loop they run on (the
# server's). Changed only on that loop; read by publishes from handler threads.
listeners = {}
listeners_by_tenant = {}
listener_loop = None


class LayerLoop:
    """One event loop in a thread of its own for channel-layer sends from handler threads
    and RQ workers: the Redis layer's connections are made once and reused."""

    def __init__(self):
        self.loop = None
        self.lock = threading.Lock()

    def run(self, coroutine, timeout):
        with self.lock:
            if self.loop is None or not self.thread.is_alive():
                self.loop = asyncio.new_event_loop()
                self.thread = threading.Thread(target=self.loop.run_forever, name="realtime-publish", daemon=True)
                self.thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


_layer_loop = LayerLoop()


def realtime_publish(ctx, args):
    policy = ctx.policy
    if not policy.realtime_max_message_bytes:
        raise CapabilityError("PERMISSION_DENIED", f"The {policy.profile_name or 'tenant'} profile does not allow realtime channels.")
    channel = check_channel(args.get("channel"))
    if "message" not in args:
        raise CapabilityError("INVALID_ARGUMENT", "A message (any JSON value) is required.")
    message = args["message"]
    try:
        size = len(json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):
        raise CapabilityError("INVALID_ARGUMENT", "The message must be JSON (no NaN, Infinity or Uint8Array).") from None
    if size > policy.realtime_max_message_bytes:
        raise CapabilityError(
            "QUOTA_EXCEEDED", f"The message is {size} bytes of JSON; this tenant's messages are at most {policy.realtime_max_message_bytes} bytes.")
    group = group_name(ctx.tenant_id, channel)
    event = {"type": "realtime.message", "channel": channel, "message": message}
    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer):
        # One process holds every listener: the count is exact, and the send must run on
        # the loop the listeners wait on (the in-memory layer's queues are that loop's).
        count = listeners.get(group, 0)
        loop = listener_loop
        try:
            if count and loop is not None and loop.is_running():
                asyncio.run_coroutine_threadsafe(layer.group_send(group, event), loop).result(limits.PUBLISH_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError:
            raise _slow_layer() from None
        return {"data": {"delivered": count}}
    # Across servers nobody knows how many listen: `delivered` is omitted.
    try:
        _layer_loop.run(layer.group_send(group, event), limits.PUBLISH_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError:
        raise _slow_layer() from None
    return {"data": {}}


def _slow_layer():
    return CapabilityError(
        "TIMEOUT", f"The platform's message layer did not take the message within {limits.PUBLISH_TIMEOUT_SECONDS} s; it may not have been delivered.")
