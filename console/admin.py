"""The console's part of the admin: the panels around a tenant's change form.

The tenant admin itself (tenants/admin.py) knows nothing of the pages; this module
re-registers it with the panels added, so the dependency points from the pages down to
the tenants and never back. The overview page (/admin/overview/) is routed in
symposium/urls.py.
"""

import django_rq.admin  # noqa: F401  (registers its dashboard, which is unregistered below without Redis)
from django.conf import settings
from django.contrib import admin
from django_rq.models import Dashboard

from console.overview import tenant_panels
from tenants.admin import TenantAdmin
from tenants.models import Tenant


class TenantWithPanelsAdmin(TenantAdmin):
    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The tenant's panels (console/overview.py): effective policy against its profile,
        # storage against quota, recent runs and audit trail, shown around the form.
        tenant = self.get_object(request, object_id)
        if tenant is not None:
            extra_context = {**(extra_context or {}), **tenant_panels(tenant)}
        return super().change_view(request, object_id, form_url, extra_context)


# The admin's autodiscovery imports console.admin before tenants.admin (console comes
# first in INSTALLED_APPS); the import above has registered TenantAdmin by now.
admin.site.unregister(Tenant)
admin.site.register(Tenant, TenantWithPanelsAdmin)

# Without Redis, django-rq's dashboard in the admin would show whatever Redis listens on
# its fallback address (or fail): there is no queue, and /django-rq/ says so instead.
if not settings.REDIS_URL and admin.site.is_registered(Dashboard):
    admin.site.unregister(Dashboard)

# The admin is this platform's, not a generic Django site's.
admin.site.site_header = "Symposium administration"
admin.site.site_title = "Symposium admin"
admin.site.index_title = "Tenants, runs and policy"
