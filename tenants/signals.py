"""What happens outside the platform's tables when a tenant is deleted.

Deleting a tenant deletes its data: its storage folder (files, and the SQLite database
kept there) and, on PostgreSQL, its schema and roles. Suspend a tenant instead to keep
them. Both run after the deletion is committed, so a rolled-back delete loses nothing.
"""

import logging
import shutil

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from tenants.models import Tenant

logger = logging.getLogger(__name__)


@receiver(post_delete, sender=Tenant)
def remove_tenant_data(sender, instance, **kwargs):
    tenant_id, root = instance.pk, instance.storage_root()

    def remove():
        if settings.USING_POSTGRES:
            from capabilities.database import postgres

            try:
                postgres.drop_tenant(tenant_id)
            except Exception:
                logger.exception("dropping the database of deleted tenant %s failed", instance.slug)
        shutil.rmtree(root, ignore_errors=True)

    transaction.on_commit(remove)
