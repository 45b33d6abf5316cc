"""Containment of the embedded database: a tenant's SQLite file and nothing else.

These run on the SQLite backend whatever the platform's own database is.
"""

import os
import sqlite3
import uuid

import pytest

from capabilities import database, files
from capabilities.base import CapabilityError
from capabilities.database.sqlite import database_path
from capabilities.files import quota
from tenants.models import PolicyOverride
from tests.helpers import context_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def embedded(settings):
    settings.USING_POSTGRES = False


@pytest.fixture
def alpha(make_tenant):
    ctx = context_for(make_tenant("alpha", "Data"))
    q(ctx, "CREATE TABLE secrets (value TEXT)")
    q(ctx, "INSERT INTO secrets (value) VALUES (?)", ["alpha's secret"])
    return ctx


@pytest.fixture
def mallory(make_tenant):
    return context_for(make_tenant("mallory", "Advanced"))


def q(ctx, sql, params=None):
    return database.query(ctx, {"sql": sql, "params": params or []})


def refused(call, code="PERMISSION_DENIED"):
    with pytest.raises(CapabilityError) as caught:
        call()
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def test_it_keeps_the_database_in_the_tenants_platform_folder(alpha):
    path = database_path(alpha)
    assert path == alpha.storage_root / ".symposium" / "database.sqlite3"
    assert path.is_file()
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    # It is a plain SQLite file the platform's tools can open.
    assert sqlite3.connect(path).execute("SELECT value FROM secrets").fetchall() == [("alpha's secret",)]


def test_cant_attach_another_tenants_database(alpha, mallory):
    q(mallory, "SELECT 1")  # mallory's own database exists
    target = str(database_path(alpha))
    for sql in [
        f"ATTACH DATABASE '{target}' AS stolen",
        f"/* hidden */ attach '{target}' as stolen",
        f"ATTACH 'file:{target}?mode=ro' AS stolen",
        "ATTACH ':memory:' AS scratch",
        "DETACH DATABASE main",
    ]:
        message = refused(lambda: q(mallory, sql))
        assert "a tenant has one database, its own" in message
    refused(lambda: q(mallory, "SELECT * FROM stolen.secrets"), "INVALID_ARGUMENT")
    refused(lambda: q(mallory, "SELECT * FROM secrets"), "INVALID_ARGUMENT")


def test_cant_copy_the_database_elsewhere(alpha, tmp_path):
    # VACUUM INTO writes a copy anywhere the server may write.
    outside = tmp_path / "copy.sqlite3"
    refused(lambda: q(alpha, f"VACUUM INTO '{outside}'"))
    assert not outside.exists()


def test_cant_reach_the_engine_through_pragmas(alpha):
    for pragma in [
        "PRAGMA database_list",  # names the file's server path
        "SELECT file FROM pragma_database_list",
        "PRAGMA writable_schema = ON",
        "PRAGMA journal_mode = OFF",
        "PRAGMA temp_store_directory = '/tmp'",
        "PRAGMA max_page_count = 99999999",
        "PRAGMA mmap_size = 1000000000",
        "PRAGMA trusted_schema = ON",
        "PRAGMA page_size = 512",
        "PRAGMA cache_size = -2000000",
    ]:
        assert "is not available to blocks" in refused(lambda: q(alpha, pragma)), pragma
    # Reading the tenant's own schema is fine.
    columns = q(alpha, "PRAGMA table_info(secrets)")["data"]["rows"]
    assert [c["name"] for c in columns] == ["value"]
    assert [r["name"] for r in q(alpha, "SELECT name FROM pragma_table_info('secrets')")["data"]["rows"]] == ["value"]
    q(alpha, "PRAGMA user_version = 7")
    assert q(alpha, "PRAGMA user_version")["data"]["rows"] == [{"user_version": 7}]


def test_cant_load_native_code(alpha):
    assert "load_extension() is not available" in refused(lambda: q(alpha, "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libc.so.6')"))
    refused(lambda: q(alpha, "SELECT fts3_tokenizer('simple')"))
    refused(lambda: q(alpha, "SELECT readfile('/etc/passwd')"), "INVALID_ARGUMENT")


def test_cant_follow_a_planted_link_to_another_tenants_file(alpha, mallory):
    # A process of mallory's could try to put a link where its database should be.
    folder = mallory.storage_root / ".symposium"
    folder.mkdir(parents=True)
    os.symlink(database_path(alpha), folder / "database.sqlite3")
    message = refused(lambda: q(mallory, "SELECT * FROM secrets"), "UPSTREAM_ERROR")
    assert "replaced" in message and str(alpha.storage_root) not in message
    os.unlink(folder / "database.sqlite3")
    os.rmdir(folder)
    os.symlink(alpha.storage_root / ".symposium", folder)
    refused(lambda: q(mallory, "SELECT * FROM secrets"), "UPSTREAM_ERROR")
    assert q(alpha, "SELECT count(*) AS n FROM secrets")["data"]["rows"] == [{"n": 1}]


@pytest.fixture
def fresh_usage_cache(settings):
    """A run-state cache of this test's own: the storage usage figure is cached per
    tenant id, and ids are reused between tests."""
    settings.CACHES = {
        **settings.CACHES,
        "runstate": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"test-{uuid.uuid4()}"},
    }


def test_it_stops_the_database_at_the_storage_quota(make_tenant, fresh_usage_cache):
    tenant = make_tenant("small", "Data")
    PolicyOverride.objects.create(tenant=tenant, setting="storage_quota", value=str(256 * 1024))
    ctx = context_for(tenant)
    q(ctx, "CREATE TABLE blobs (data BLOB)")
    message = refused(
        lambda: [q(ctx, "INSERT INTO blobs (data) VALUES (?)", [os.urandom(32 * 1024)]) for _ in range(20)], "QUOTA_EXCEEDED"
    )
    assert "storage quota" in message
    assert database_path(ctx).stat().st_size <= 256 * 1024


def small_tenant(make_tenant, slug, quota):
    tenant = make_tenant(slug, "Data")
    PolicyOverride.objects.create(tenant=tenant, setting="storage_quota", value=str(quota))
    return context_for(tenant)


def test_cant_fill_temp_tables_past_the_quota(make_tenant, fresh_usage_cache):
    # 400 MB of TEMP table for a 2 MB quota: a temporary database lives in a file of its
    # own, outside the tenant's storage.
    ctx = small_tenant(make_tenant, "tempfill", 2 * 1024 * 1024)
    message = refused(
        lambda: q(
            ctx,
            "CREATE TEMP TABLE fill AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 400000) "
            "SELECT i, randomblob(1000) AS b FROM r",
        ),
        "QUOTA_EXCEEDED",
    )
    assert "storage quota" in message
    # Nor a step at a time in one transaction, beside the tenant's own tables.
    steps = [{"query": "CREATE TEMP TABLE fill (b BLOB)"}]
    steps += [{"query": "INSERT INTO fill (b) VALUES (randomblob(?))", "params": [256 * 1024]} for _ in range(12)]
    with pytest.raises(CapabilityError) as caught:
        database.transaction(ctx, {"steps": steps})
    assert caught.value.code == "QUOTA_EXCEEDED"


def test_cant_hold_more_than_the_quota_in_files_and_database_together(make_tenant, fresh_usage_cache):
    ctx = small_tenant(make_tenant, "both", 2 * 1024 * 1024)
    files.write_file(ctx, {"path": "big.txt", "data": "f" * (1536 * 1024)})
    q(ctx, "CREATE TABLE blobs (data BLOB)")
    refused(lambda: [q(ctx, "INSERT INTO blobs (data) VALUES (randomblob(?))", [64 * 1024]) for _ in range(16)], "QUOTA_EXCEEDED")
    root = os.open(ctx.storage_root, os.O_RDONLY)
    try:
        assert quota.measure_usage(root) <= 2 * 1024 * 1024
    finally:
        os.close(root)

    # And the other way round: a database that fills the quota leaves no room for files.
    other = small_tenant(make_tenant, "dbfirst", 2 * 1024 * 1024)
    q(other, "CREATE TABLE blobs (data BLOB)")
    for _ in range(24):
        q(other, "INSERT INTO blobs (data) VALUES (randomblob(?))", [64 * 1024])
    with pytest.raises(CapabilityError) as caught:
        files.write_file(other, {"path": "more.txt", "data": "m" * (1024 * 1024)})
    assert caught.value.code == "QUOTA_EXCEEDED"


def test_cant_make_a_value_larger_than_a_reply(make_tenant):
    # A gigabyte made in SQL would be a gigabyte of the worker's memory: no single value
    # may be larger than the tenant's whole reply.
    tenant = make_tenant("greedy", "Data")
    PolicyOverride.objects.create(tenant=tenant, setting="database_max_result_bytes", value=str(1024 * 1024))
    ctx = context_for(tenant)
    message = refused(lambda: q(ctx, "SELECT length(zeroblob(1000000000)) AS n"), "INVALID_ARGUMENT")
    assert "too big" in message
    assert q(ctx, "SELECT length(zeroblob(1000)) AS n")["data"]["rows"] == [{"n": 1000}]


def test_it_keeps_the_connection_unable_to_load_extensions(alpha):
    # load_extension is refused by the authorizer and never enabled on the connection:
    # even a statement the authorizer let through would find it off.
    from capabilities.database.sqlite import Session

    session = Session(alpha)
    try:
        session.conn.set_authorizer(None)
        with pytest.raises(sqlite3.OperationalError, match="not authorized"):
            session.conn.execute("SELECT load_extension('nothing')")
        assert session.conn.getlimit(sqlite3.SQLITE_LIMIT_ATTACHED) == 0
    finally:
        session.close()
