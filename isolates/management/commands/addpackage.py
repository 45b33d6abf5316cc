"""Fetch a vetted npm package into the package cache, once (docs/packages.md)."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from isolates.models import NpmPackage
from isolates.packages import PackageError, cached_bundle, fetch, parse_specifier
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Fetch npm:NAME@VERSION with its dependencies into the package cache as one bundle, "
        "running none of its install scripts, and record it on the npm packages admin page. "
        "--all-tenants or --tenant SLUG also allows it; a package already in the cache is not fetched again."
    )

    def add_arguments(self, parser):
        parser.add_argument("specifier", help="npm:NAME@VERSION, with one exact version")
        parser.add_argument("--all-tenants", action="store_true", help="allow it for every tenant")
        parser.add_argument("--tenant", action="append", default=[], metavar="SLUG", help="allow it for this tenant (repeatable)")

    def handle(self, specifier, all_tenants, tenant, **options):
        try:
            name, version = parse_specifier(specifier)
        except PackageError as exc:
            raise CommandError(str(exc)) from None
        tenants = []
        for slug in tenant:
            try:
                tenants.append(Tenant.objects.get(slug=slug))
            except Tenant.DoesNotExist:
                raise CommandError(f"there is no tenant {slug!r}") from None
        package, _ = NpmPackage.objects.get_or_create(name=name, version=version)
        if package.sha256 and cached_bundle(package.sha256) is not None:
            fetched = "already in the cache"
        else:
            self.stderr.write(f"fetching {package.specifier} from {self._registry()} ...")
            try:
                sha256, size = fetch(name, version)
            except PackageError as exc:
                raise CommandError(str(exc)) from None
            package.sha256, package.size, package.fetched = sha256, size, timezone.now()
            fetched = f"fetched ({size} bytes, sha256 {sha256[:12]})"
        with transaction.atomic():
            if all_tenants:
                package.all_tenants = True
            package.save()
            package.tenants.add(*tenants)
        if package.all_tenants:
            allowed = "allowed for every tenant"
        else:
            slugs = sorted(package.tenants.values_list("slug", flat=True))
            allowed = f"allowed for {', '.join(slugs)}" if slugs else "allowed for no tenant yet (see the admin page)"
        self.stdout.write(f"{package.specifier}: {fetched}, {allowed}.")

    def _registry(self):
        from django.conf import settings

        return settings.SYMPOSIUM_NPM_REGISTRY
