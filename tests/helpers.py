"""Small helpers shared by tests."""

from pathlib import Path

import pytest

from capabilities.base import CallContext, CapabilityError
from tenants.models import PolicyOverride
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


def call(handler, tenant, **args):
    """A handler called directly, as the dispatcher calls it, for the tenant."""
    return handler(context_for(tenant), args)


def refused(handler, tenant, ctx=None, **args):
    """The CapabilityError a handler raises for these arguments (the test fails if none)."""
    with pytest.raises(CapabilityError) as info:
        handler(ctx or context_for(tenant), args)
    return info.value


def override(tenant, setting, value):
    PolicyOverride.objects.create(tenant=tenant, setting=setting, value=str(value))
