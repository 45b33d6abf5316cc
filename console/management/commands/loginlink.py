import os
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.urls import reverse

from console.login import make_login_token


class Command(BaseCommand):
    help = (
        "Print a one-time link that logs into the admin as a superuser. The user is "
        "created without a password when it does not exist, so no password is ever "
        "written down; the link works once and for 15 minutes. The link points at "
        "--base-url; by default at this machine on the port the server listens on "
        "($PORT, as the Procfile's server uses, else SYMPOSIUM_BROKER_PORT)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--base-url", default="", help="The server's address, e.g. https://symposium.example.org")
        parser.add_argument("--port", type=int, default=None, help="The local server's port (default: $PORT or SYMPOSIUM_BROKER_PORT)")

    def handle(self, username, base_url, port, **options):
        if not base_url:
            port = port or int(os.environ.get("PORT") or settings.SYMPOSIUM_BROKER_PORT)
            base_url = f"http://127.0.0.1:{port}"
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_unusable_password()
            user.save()
        url = base_url.rstrip("/") + reverse("one-time-login", args=[make_login_token(user)])
        self.stdout.write(f"Log in as {username} (one use, 15 minutes): {url}")
        if not answers(base_url):
            self.stderr.write(f"Nothing answers at {base_url} yet: the link works once the server listens there "
                              "(give its port with --port, or --base-url for another host).")


def answers(base_url):
    """Whether something listens at the link's host and port (a TCP connection is enough)."""
    parts = urlsplit(base_url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=2):
            return True
    except (OSError, ValueError):
        return False
