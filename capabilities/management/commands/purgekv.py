from django.core.management.base import BaseCommand

from capabilities.kv.handlers import purge_expired


class Command(BaseCommand):
    help = (
        "Remove the expired rows of every tenant's key-value store. Expired keys are invisible "
        "at once and a tenant's own writes remove its expired rows; run this from cron or a timer "
        "for tenants that stopped writing."
    )

    def handle(self, **options):
        total = 0
        while True:
            removed = purge_expired(batch=10_000)
            total += removed
            if not removed:
                break
        self.stdout.write(f"Removed {total} expired key(s).")
