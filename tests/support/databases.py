"""What the database capability's tests share: the backends they run on, table
definitions that mean the same on both, and the clean-up of PostgreSQL tenants.

Tests on the "postgres" backend run when the platform itself runs on PostgreSQL
(DATABASE_URL=postgres://...), against pytest-django's test database; they are skipped
otherwise. Tests on "sqlite" always run: the backend is chosen per call from
settings.USING_POSTGRES, which a test may switch.
"""

import pytest
from django.conf import settings

from capabilities.database import postgres

BACKENDS = ["sqlite", "postgres"]


def postgres_configured():
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def use_backend(name, test_settings):
    """Switch the capability to backend `name` for one test (`settings` fixture)."""
    if name == "postgres":
        if not postgres_configured():
            pytest.skip("PostgreSQL is not configured (run with DATABASE_URL=postgres://...)")
        test_settings.USING_POSTGRES = True
    else:
        test_settings.USING_POSTGRES = False
    return name


def drop_postgres_tenants(tenant_ids):
    """Drop the schemas and roles the tests' tenants got. Roles belong to the whole
    database server, not to the test database that goes away after the run."""
    if not postgres_configured():
        return
    for tenant_id in tenant_ids:
        postgres.drop_tenant(tenant_id)


def close_postgres_pools():
    """Close the connections to the test database, which is dropped after the run, and
    drop what is left of tenants' roles there (other tests' blocks may have made some)."""
    postgres.close_pools()
    if postgres_configured():
        postgres.drop_all_tenants()


# Table definitions for the tests, per backend: SQLite's INTEGER PRIMARY KEY numbers rows
# itself, PostgreSQL needs SERIAL; the rest is the same SQL.
DDL = {
    "sqlite": {
        "users": "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, active BOOLEAN NOT NULL DEFAULT 0, last_activity BIGINT)",
        "logs": "CREATE TABLE logs (id INTEGER PRIMARY KEY, action TEXT, user_id INTEGER, timestamp BIGINT)",
        "file_logs": "CREATE TABLE file_logs (id INTEGER PRIMARY KEY, file_path TEXT, processed_at BIGINT, record_count INTEGER)",
        "kinds": "CREATE TABLE kinds (id INTEGER PRIMARY KEY, small INTEGER, big INTEGER, real_number REAL, words TEXT, "
        "missing TEXT, raw BLOB, doc TEXT, flag BOOLEAN)",
        "notes": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
    },
    "postgres": {
        "users": "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, active BOOLEAN NOT NULL DEFAULT false, last_activity BIGINT)",
        "logs": "CREATE TABLE logs (id SERIAL PRIMARY KEY, action TEXT, user_id INTEGER, timestamp BIGINT)",
        "file_logs": "CREATE TABLE file_logs (id SERIAL PRIMARY KEY, file_path TEXT, processed_at BIGINT, record_count INTEGER)",
        "kinds": "CREATE TABLE kinds (id INTEGER PRIMARY KEY, small INTEGER, big BIGINT, real_number DOUBLE PRECISION, "
        "words TEXT, missing TEXT, raw BYTEA, doc JSONB, flag BOOLEAN)",
        "notes": "CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT)",
    },
}
