from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenants.models import Membership, PermissionProfile, Tenant


class Command(BaseCommand):
    help = "Create a tenant with a permission profile (for scripts and demos)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--profile", required=True, help="Basic, Interactive, Data or Advanced (or any profile's name)")
        parser.add_argument("--name", help="Display name (default: the slug, capitalised)")
        parser.add_argument("--owner", action="append", default=[], help="Username to add as owner (repeatable)")
        parser.add_argument("--allow-host", action="append", default=[], help="Host on the network allow-list (repeatable)")
        parser.add_argument("--secret", action="append", default=[], help="NAME=VALUE for process.env (repeatable)")

    @transaction.atomic
    def handle(self, slug, profile, name, owner, allow_host, secret, **options):
        try:
            profile_obj = PermissionProfile.objects.get(name__iexact=profile)
        except PermissionProfile.DoesNotExist:
            names = ", ".join(PermissionProfile.objects.values_list("name", flat=True))
            raise CommandError(f"No profile named {profile!r}. Profiles: {names}.") from None
        if Tenant.objects.filter(slug=slug).exists():
            raise CommandError(f"A tenant {slug!r} exists already.")
        tenant = Tenant(slug=slug, name=name or slug.replace("-", " ").title(), profile=profile_obj,
                        network_allowed_hosts="\n".join(allow_host))
        tenant.full_clean()
        tenant.save()
        tenant.storage_root().mkdir(parents=True, exist_ok=True)
        User = get_user_model()
        for username in owner:
            try:
                user = User.objects.get(username=username)
            except User.DoesNotExist:
                raise CommandError(f"No user named {username!r}.") from None
            Membership.objects.create(tenant=tenant, user=user, role="owner")
        for item in secret:
            key, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--secret takes NAME=VALUE, not {item!r}.")
            s = tenant.secrets.model(tenant=tenant, name=key)
            s.value = value
            s.full_clean()
            s.save()
        self.stdout.write(f"Created tenant {slug} with the {profile_obj.name} profile.")
