"""What the database capability removes when a tenant is deleted: on PostgreSQL, the
tenant's schema (with everything in it) and its roles.

On SQLite the tenant's database is a file in its storage folder, which tenants/signals.py
removes with the folder. The drop runs after the deletion is committed, so a rolled-back
delete loses nothing. Suspend a tenant instead to keep its data.
"""

import logging

from django.conf import settings
from django.db import transaction

from capabilities.database import postgres

logger = logging.getLogger(__name__)


def drop_tenant_database(sender, instance, **kwargs):
    # settings.USING_POSTGRES is read at each deletion, not once at start-up: the
    # database capability chooses its backend per call the same way.
    if not settings.USING_POSTGRES:
        return
    tenant_id, slug = instance.pk, instance.slug

    def drop():
        try:
            postgres.drop_tenant(tenant_id)
        except Exception:
            logger.exception("dropping the database of deleted tenant %s failed", slug)

    transaction.on_commit(drop)
