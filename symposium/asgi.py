"""ASGI entry point: Django for HTTP, Channels consumers for the websockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "symposium.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402

from isolates.containment import check_at_start  # noqa: E402

# Before the server listens: the sandbox's layers are logged, and with DEBUG off a
# missing required layer stops the server here (settings.SYMPOSIUM_REQUIRED_LAYERS),
# with the reason alone on stderr rather than a traceback.
try:
    check_at_start()
except ImproperlyConfigured as refusal:
    raise SystemExit(str(refusal)) from None

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from blocks.endpoints import EndpointHandler  # noqa: E402
from isolates import quickack  # noqa: E402
from symposium.routing import websocket_urlpatterns  # noqa: E402

# Only servers import this module, so only they pay for importing Daphne's websocket
# protocol: the isolates' websocket acknowledges each read at once (isolates/quickack.py).
quickack.install()

# A block's endpoint (/b/...) is served without the site's session, authentication, CSRF
# and messages middleware, which it does not use (blocks/endpoints.py, EndpointHandler).
endpoint_asgi_app = EndpointHandler()
ENDPOINT_PREFIX = "/b/"


async def http_application(scope, receive, send):
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    handler = endpoint_asgi_app if path.startswith(ENDPOINT_PREFIX) else django_asgi_app
    await handler(scope, receive, send)


application = ProtocolTypeRouter({"http": http_application, "websocket": URLRouter(websocket_urlpatterns)})
