from django.apps import AppConfig
from django.db.models.signals import post_delete


class CapabilitiesConfig(AppConfig):
    name = "capabilities"
    verbose_name = "Capabilities"

    def ready(self):
        # Imported here, not at the top: models can be imported only once apps are ready.
        from capabilities.database.signals import drop_tenant_database
        from tenants.models import Tenant

        # The database capability owns the tenant's schema, so it removes it; tenants/
        # (which the capabilities build on) never imports them.
        post_delete.connect(drop_tenant_database, sender=Tenant, dispatch_uid="capabilities.drop_tenant_database")
