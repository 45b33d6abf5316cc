"""A websocket consumer whose channel layer may restart under it.

Channels' own consumer ends when its channel layer's receive raises: with a Redis that
restarts, that would end the websocket (an isolate's run, a runner page's view of one).
`ResilientConsumer` keeps receiving, backing off, and tells its subclass when the layer
is back (`channel_layer_back`: groups are forgotten by a restarted Redis). Messages are
dispatched through an allow-list (`DISPATCH`), never to a method picked by their type.
"""

import asyncio
import functools
import logging

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch

logger = logging.getLogger(__name__)


class ResilientConsumer(AsyncWebsocketConsumer):
    DISPATCH = {
        "websocket.connect": "websocket_connect",
        "websocket.receive": "websocket_receive",
        "websocket.disconnect": "websocket_disconnect",
    }

    async def __call__(self, scope, receive, send):
        """As Channels' AsyncConsumer.__call__, except that the channel layer's receive
        survives a restart of its Redis: a connection error there would otherwise end
        this consumer, and with it the websocket and the run. Replies of RQ jobs in
        flight may be lost with Redis; the JobWatcher answers those calls."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        if self.channel_layer is None:
            sources = [receive]
        else:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources = [receive, self.resilient_channel_receive]
        try:
            await await_many_dispatch(sources, self.dispatch)
        except StopConsumer:
            pass

    async def resilient_channel_receive(self):
        delay = 0.1
        while True:
            try:
                message = await self.channel_receive()
            except (ConnectionError, OSError) as e:
                await self.channel_layer_failed(e, delay)
            except Exception as e:
                # redis-py's errors are not OSErrors; anything else is not ours to hide.
                if type(e).__module__.split(".")[0] != "redis":
                    raise
                await self.channel_layer_failed(e, delay)
            else:
                if delay > 0.1:
                    await self.channel_layer_back()
                return message
            delay = min(delay * 2, 2.0)

    async def channel_layer_failed(self, error, delay):
        logger.warning("the channel layer failed (%s); retrying in %.1f s", str(error)[:200], delay)
        await asyncio.sleep(delay)

    async def channel_layer_back(self):
        """The channel layer answers again after failing."""

    async def dispatch(self, message):
        # Unlike Channels' default, no database connection sweep per message: it costs
        # a thread hop per frame, and the helpers that use the database
        # (database_sync_to_async) close stale connections themselves.
        name = self.DISPATCH.get(message.get("type"))
        if name is None:
            raise ValueError(f"No handler for message type {str(message.get('type'))[:40]}")
        await getattr(self, name)(message)
