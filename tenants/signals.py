"""What happens outside the platform's tables when a tenant is deleted.

Deleting a tenant deletes its storage folder (files, and the SQLite database kept
there). On PostgreSQL the database capability drops the tenant's schema and roles as
well (capabilities/database/signals.py). The removal runs after the deletion is
committed, so a rolled-back delete loses nothing. Suspend a tenant instead to keep its
data.
"""

import shutil

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from tenants.models import Tenant


@receiver(post_delete, sender=Tenant)
def remove_tenant_data(sender, instance, **kwargs):
    root = instance.storage_root()
    transaction.on_commit(lambda: shutil.rmtree(root, ignore_errors=True))
