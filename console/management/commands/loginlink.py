from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.urls import reverse

from console.login import make_login_token


class Command(BaseCommand):
    help = (
        "Print a one-time link that logs into the admin as a superuser. The user is "
        "created without a password when it does not exist, so no password is ever "
        "written down; the link works once and for 15 minutes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, username, base_url, **options):
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_unusable_password()
            user.save()
        url = base_url.rstrip("/") + reverse("one-time-login", args=[make_login_token(user)])
        self.stdout.write(f"Log in as {username} (one use, 15 minutes): {url}")
