import shutil
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from tenants.models import Membership, PermissionProfile, Tenant

EXAMPLE_STORAGE = Path(settings.BASE_DIR) / "examples" / "storage"


class Command(BaseCommand):
    help = (
        "Create one demo tenant per profile (demo-basic, demo-interactive, demo-data, "
        "demo-advanced), owned by the admin user, with the files the seed's examples read. "
        "Existing tenants are left as they are."
    )

    def add_arguments(self, parser):
        parser.add_argument("--owner", default="admin")

    def handle(self, owner, **options):
        User = get_user_model()
        user, created = User.objects.get_or_create(username=owner, defaults={"is_staff": True, "is_superuser": True})
        if created:
            user.set_unusable_password()
            user.save()
        made = []
        for profile in PermissionProfile.objects.filter(name__in=["Basic", "Interactive", "Data", "Advanced"]):
            slug = f"demo-{profile.name.lower()}"
            tenant, new = Tenant.objects.get_or_create(slug=slug, defaults={
                "name": f"Demo ({profile.name})", "profile": profile,
                # Mail of demo blocks goes to the embedded outbox unless a relay is set.
                "email_sender": f"blocks@{slug}.example"})
            Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": "owner"})
            root = tenant.storage_root()
            if new or not root.exists():
                shutil.copytree(EXAMPLE_STORAGE, root, dirs_exist_ok=True)
                made.append(slug)
        self.stdout.write(f"Demo tenants ready ({len(made)} new): demo-basic, demo-interactive, demo-data, demo-advanced.")
