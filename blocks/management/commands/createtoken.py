from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from blocks.models import ApiToken
from tenants import audit
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Make an API token for a tenant and print it, alone, on stdout (it is shown this "
        "once: only its hash is kept). Scope run: run blocks; deploy: also create, save "
        "and deploy blocks and manage schedules."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="The tenant's slug")
        parser.add_argument("--scope", choices=["run", "deploy"], required=True)
        parser.add_argument("--name", default="", help="What the token is for (default: cli-<scope>)")
        parser.add_argument("--expires", type=int, default=None, metavar="DAYS", help="Expire after this many days")

    def handle(self, tenant, scope, name, expires, **options):
        try:
            tenant_obj = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist:
            raise CommandError(f"No tenant {tenant!r}.") from None
        if expires is not None and expires < 1:
            raise CommandError("--expires is a number of days, at least 1.")
        expiry = timezone.now() + timedelta(days=expires) if expires else None
        record, token = ApiToken.issue(tenant_obj, name=(name or f"cli-{scope}")[:100], scope=scope, expires=expiry)
        audit.record(tenant_id=tenant_obj.pk, tenant_slug=tenant_obj.slug, capability="blocks", operation="token.create",
                     target=record.prefix, outcome="allowed",
                     message=f"manage.py createtoken made the {scope} token {record.name}.")
        audit.flush()
        self.stdout.write(token)
        self.stderr.write(f"Made the {scope} token {record.name!r} for {tenant_obj.slug}"
                          f"{f', expiring {expiry:%Y-%m-%d}' if expiry else ''}. It is not shown again.")
