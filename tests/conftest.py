"""Shared fixtures: people and tenants built in code.

Alice owns the "acme" tenant, Bob is a member of it, and Mallory is an outsider who
should have no access to Acme's stuff. Each test gets its own storage root.
"""

import time

import pytest
from django.contrib.auth import get_user_model

from tenants.models import Membership, PermissionProfile, Tenant
from tenants.profiles import PROFILES
from tests.blocks import dispatch_path, rq_dispatch, run_block, seeded, server  # noqa: F401  (fixtures)


@pytest.fixture(scope="session", autouse=True)
def close_other_sessions_at_the_end(django_db_setup, django_db_blocker):
    """Threads of the broker and the audit writer keep database connections open; on
    PostgreSQL those sessions would stop the test database from being dropped."""
    yield
    from django.db import connection

    if connection.vendor == "postgresql":
        # Tenant databases are PostgreSQL schemas with roles of their own, which live
        # on the server beyond the test database: remove what the tests made.
        from capabilities.database import postgres

        with django_db_blocker.unblock():
            postgres.close_pools()
            postgres.drop_all_tenants()
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(scope="session", autouse=True)
def flush_waits_for_background_writers():
    """Transactional tests empty the database with TRUNCATE after each test. A row the
    audit writer or a server thread of the test is still writing holds locks on the
    tables it refers to, and PostgreSQL may end the TRUNCATE as a deadlock: the writer's
    queue is flushed first, and a deadlocked TRUNCATE is tried again."""
    from django.core.management.base import CommandError
    from django.test.testcases import TransactionTestCase

    from tenants import audit

    original = TransactionTestCase._fixture_teardown

    def teardown(self):
        for attempt in range(5):
            audit.flush()
            try:
                return original(self)
            except CommandError as error:
                if "deadlock" not in str(error.__cause__ or "") or attempt == 4:
                    raise
                time.sleep(0.2)

    TransactionTestCase._fixture_teardown = teardown
    yield
    TransactionTestCase._fixture_teardown = original


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    # Real hashing takes most of a second per user; tests make many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def storage_root(settings, tmp_path):
    settings.TENANT_STORAGE_ROOT = tmp_path / "storage"
    settings.TENANT_STORAGE_ROOT.mkdir()
    return settings.TENANT_STORAGE_ROOT


@pytest.fixture
def profiles(db):
    # Transactional tests flush the database after each test, data migrations' rows
    # included: put the seed profiles back when they are gone.
    if not PermissionProfile.objects.exists():
        for values in PROFILES:
            PermissionProfile.objects.create(**values)
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
