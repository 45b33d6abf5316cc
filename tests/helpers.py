"""Small helpers shared by tests."""

from pathlib import Path

from capabilities.base import CallContext
from tenants.policy import effective_policy


def context_for(tenant, run_id="testrun"):
    """The call context the broker would build for a call of this tenant."""
    from tenants.models import Tenant

    tenant = Tenant.objects.get(pk=tenant.pk)
    return CallContext(
        tenant_id=tenant.pk,
        tenant_slug=tenant.slug,
        run_id=run_id,
        policy=effective_policy(tenant),
        storage_root=Path(tenant.storage_root()),
        allowed_hosts=[h for h in tenant.network_allowed_hosts.split()],
        webhook_secret=tenant.webhook_secret,
    )
