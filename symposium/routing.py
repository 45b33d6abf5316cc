from channels.auth import AuthMiddlewareStack
from django.urls import path

from isolates.broker import IsolateBrokerConsumer
from console.runner import BlockRunnerConsumer, SameOriginValidator

websocket_urlpatterns = [
    path("ws/isolate/", IsolateBrokerConsumer.as_asgi()),
    # The runner page's websocket: only from this site's pages, with the session's user.
    path("ws/runner/", SameOriginValidator(AuthMiddlewareStack(BlockRunnerConsumer.as_asgi()))),
]
