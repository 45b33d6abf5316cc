from django.urls import path

from isolates.broker import IsolateBrokerConsumer

websocket_urlpatterns = [
    path("ws/isolate/", IsolateBrokerConsumer.as_asgi()),
]
