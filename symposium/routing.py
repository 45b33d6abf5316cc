from channels.auth import AuthMiddlewareStack
from django.urls import path, re_path

from console.realtime import RealtimeListenerConsumer

from isolates.broker import IsolateBrokerConsumer
from console.runner import BlockRunnerConsumer, SameOriginValidator

websocket_urlpatterns = [
    path("ws/isolate/", IsolateBrokerConsumer.as_asgi()),
    # The runner page's websocket: only from this site's pages, with the session's user.
    path("ws/runner/", SameOriginValidator(AuthMiddlewareStack(BlockRunnerConsumer.as_asgi()))),
    # Listeners of realtime channels: any origin (public channels); the consumer checks
    # the Origin itself when the session is what admits the listener.
    re_path(r"^ws/realtime/(?P<tenant>[^/]{1,50})/(?P<channel>[^/]{1,100})/?$", AuthMiddlewareStack(RealtimeListenerConsumer.as_asgi())),
]
