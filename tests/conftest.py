"""Shared fixtures: people and tenants built in code.

Alice owns the "acme" tenant, Bob is a member of it, and Mallory is an outsider who
should have no access to Acme's stuff. Each test gets its own storage root.
"""

import pytest
from django.contrib.auth import get_user_model

from tenants.models import Membership, PermissionProfile, Tenant


@pytest.fixture(autouse=True)
def storage_root(settings, tmp_path):
    settings.TENANT_STORAGE_ROOT = tmp_path / "storage"
    settings.TENANT_STORAGE_ROOT.mkdir()
    return settings.TENANT_STORAGE_ROOT


@pytest.fixture
def profiles(db):
    return {p.name: p for p in PermissionProfile.objects.all()}


@pytest.fixture
def people(db):
    User = get_user_model()
    return {
        "alice": User.objects.create_user("alice", "alice@example.org", "alice-password-123"),
        "bob": User.objects.create_user("bob", "bob@example.org", "bob-password-123"),
        "mallory": User.objects.create_user("mallory", "mallory@example.org", "mallory-password-123"),
    }


@pytest.fixture
def make_tenant(db, profiles):
    def make(slug, profile="Interactive", **kwargs):
        tenant = Tenant.objects.create(slug=slug, name=slug.title(), profile=profiles[profile], **kwargs)
        tenant.storage_root().mkdir(parents=True, exist_ok=True)
        return tenant

    return make


@pytest.fixture
def acme(make_tenant, people):
    tenant = make_tenant("acme", "Interactive")
    Membership.objects.create(tenant=tenant, user=people["alice"], role="owner")
    Membership.objects.create(tenant=tenant, user=people["bob"], role="member")
    return tenant
