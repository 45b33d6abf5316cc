"""Containment of tenants' databases on PostgreSQL: a schema and roles per tenant.

Run when the platform runs on PostgreSQL (DATABASE_URL=postgres://...), against
pytest-django's test database, whose platform tables (auth_user, tenants_tenantsecret,
...) are the real ones. Skipped otherwise.
"""

import dataclasses
import os
import re
import threading
import time

import psycopg
import pytest

from capabilities import database
from capabilities.base import CapabilityError
from capabilities.database import postgres, values
from capabilities.database.limits import PG_POOL_MAX_SIZE
from capabilities.database.sqltext import POSTGRES, parse_statement
from tests.support.databases import close_postgres_pools, drop_postgres_tenants, postgres_configured
from tenants.models import Tenant
from tests.helpers import context_for

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not postgres_configured(), reason="PostgreSQL is not configured (run with DATABASE_URL=postgres://...)"),
]


@pytest.fixture(scope="module", autouse=True)
def postgres_connections():
    yield
    close_postgres_pools()


@pytest.fixture(autouse=True)
def on_postgres(settings):
    settings.USING_POSTGRES = True
    yield
    drop_postgres_tenants(Tenant.objects.values_list("id", flat=True))


@pytest.fixture
def alpha(make_tenant):
    ctx = context_for(make_tenant("alpha", "Data"))
    q(ctx, "CREATE TABLE a_secret_table (value TEXT)")
    q(ctx, "INSERT INTO a_secret_table (value) VALUES (?)", ["alpha's secret"])
    q(ctx, "CREATE FUNCTION alpha_function() RETURNS int LANGUAGE sql AS 'SELECT 42'")
    q(ctx, "CREATE VIEW alpha_view AS SELECT value FROM a_secret_table")
    q(ctx, "CREATE SEQUENCE alpha_seq")
    return ctx


@pytest.fixture
def mallory(make_tenant):
    ctx = context_for(make_tenant("mallory", "Advanced"))
    q(ctx, "CREATE TABLE mallory_table (x INT)")
    return ctx


def q(ctx, sql, params=None):
    return database.query(ctx, {"sql": sql, "params": params or []})


def refused(call, code="PERMISSION_DENIED"):
    with pytest.raises(CapabilityError) as caught:
        call()
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def names_of(ctx):
    target = postgres.Target.from_settings()
    return target, postgres.TenantDatabase.of(target, ctx.tenant_id)


def admin():
    return psycopg.connect(postgres.Target.from_settings().conninfo(), autocommit=True)


def past_the_guard(ctx, sql):
    """Run a statement without the statement guard, as if the guard had a hole: what
    the database itself allows the tenant's role."""
    return postgres.run(ctx, [(parse_statement(sql, POSTGRES), [])])[0]


def test_it_gives_each_tenant_a_schema_and_locked_down_roles(alpha):
    target, tenant = names_of(alpha)
    with admin() as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner), nspacl FROM pg_namespace WHERE nspname = %s", [tenant.schema]
        ).fetchone()
        assert owner[0] == tenant.owner
        # Nobody but the owner has any right on the schema.
        assert all(entry.startswith(f"{tenant.owner}=") for entry in (owner[1] or []))
        roles = dict(
            (r[0], r[1:])
            for r in conn.execute(
                "SELECT rolname, rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolconnlimit "
                "FROM pg_roles WHERE rolname = ANY(%s)",
                [[tenant.owner, tenant.login]],
            )
        )
        assert roles[tenant.owner] == (False, False, False, False, False, False, -1)
        assert roles[tenant.login][:6] == (True, False, False, False, False, False)
        memberships = conn.execute(
            "SELECT pg_get_userbyid(roleid) FROM pg_auth_members WHERE member = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            [tenant.login],
        ).fetchall()
        assert memberships == [(tenant.owner,)]
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'a_secret_table'").fetchone() == (tenant.owner,)
    # The names carry the tenant's id, never its slug.
    assert tenant.schema == f"tenant_{alpha.tenant_id}" and "alpha" not in tenant.owner


def test_it_makes_a_tenants_roles_once_even_when_workers_race(make_tenant):
    ctx = context_for(make_tenant("racer", "Data"))
    target, tenant = names_of(ctx)
    errors = []
    barrier = threading.Barrier(4)

    def provision():
        # Each thread plays a separate worker process: its own connection, no shared
        # in-process cache; the advisory lock serialises them in the database.
        try:
            with admin() as conn:
                barrier.wait()
                with conn.transaction():
                    postgres._provision(conn, target, tenant)
        except Exception as error:  # noqa: BLE001 - the test reports any failure
            errors.append(error)

    threads = [threading.Thread(target=provision) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    q(ctx, "CREATE TABLE t (x INT)")
    assert q(ctx, "SELECT count(*) AS n FROM t")["data"]["rows"] == [{"n": 0}]


def test_cant_read_the_platforms_tables(alpha):
    for sql in [
        "SELECT * FROM auth_user",
        "SELECT * FROM tenants_tenantsecret",
    ]:
        assert "does not exist" in refused(lambda: q(alpha, sql), "INVALID_ARGUMENT")
    for sql in [
        "SELECT * FROM public.auth_user",
        'SELECT * FROM "public"."tenants_tenantsecret"',
        "SELECT * FROM public /* x */ . auth_user",
        "CREATE TABLE public.trojan (x INT)",
        "SELECT NULL::public.auth_user",
    ]:
        assert "public schema belongs to the platform" in refused(lambda: q(alpha, sql))
    # Past the guard, the database itself says no.
    assert "permission denied" in refused(lambda: past_the_guard(alpha, "SELECT * FROM public.tenants_tenantsecret")).lower()
    assert "permission denied" in refused(lambda: past_the_guard(alpha, "CREATE TABLE public.trojan (x INT)")).lower()


def test_cant_read_platform_tables_opened_to_public_by_mistake(make_tenant):
    # An administrator granted PUBLIC a platform table: every tenant role is a member of
    # PUBLIC. The platform takes the grant back when it prepares tenants.
    with admin() as conn:
        conn.execute("GRANT SELECT ON public.auth_user TO PUBLIC")
    try:
        postgres._hardened.clear()
        ctx = context_for(make_tenant("late", "Data"))
        q(ctx, "SELECT 1")
        with admin() as conn:
            assert not conn.execute("SELECT has_table_privilege('public', 'public.auth_user', 'SELECT')").fetchone()[0]
        assert "permission denied" in refused(lambda: past_the_guard(ctx, "SELECT * FROM public.auth_user")).lower()
    finally:
        with admin() as conn:
            conn.execute("REVOKE SELECT ON public.auth_user FROM PUBLIC")


def test_cant_see_another_tenants_tables(alpha, mallory):
    _, a = names_of(alpha)
    # The statement guard refuses the catalogs and the tricks outright.
    for sql in [
        "SELECT relname FROM pg_class",
        "SELECT relname FROM pg_catalog.pg_class",
        'SELECT relname FROM "pg_catalog"."pg_class"',
        "SELECT tablename FROM pg_tables",
        "SELECT nspname FROM pg_namespace",
        "SELECT prosrc FROM pg_proc",
        "SELECT relname, n_live_tup FROM pg_stat_user_tables",
        "SELECT definition FROM pg_views",
        "SELECT pg_get_viewdef(16400)",
        "SELECT 16400::regclass",
        "SELECT CAST(16400 AS regclass)",
        "SELECT to_regclass('a_secret_table')",
        "SELECT format_type(16402, NULL)",
        "SELECT has_table_privilege(16400, 'SELECT')",
        f"SET search_path = {a.schema}",
        f"SET ROLE {a.owner}",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION postgres",
        f"SELECT set_config('search_path', '{a.schema}', true)",
        f"SELECT set_config('role', '{a.owner}', true)",
        "SELECT query_to_xml('select * from a_secret_table', true, true, '')",
        "SELECT * FROM ts_stat('select 1')",
        "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$",
        "CREATE FUNCTION f() RETURNS SETOF name LANGUAGE sql AS $$ SELECT relname FROM pg_class $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = public AS 'SELECT 1'",
        'SELECT * FROM U&"\\0070g_class"',
        "GRANT SELECT ON mallory_table TO PUBLIC",
        "LISTEN alpha_channel",
        "SELECT pg_notify('alpha_channel', 'x')",
        "CREATE SCHEMA other",
        "ALTER SCHEMA x RENAME TO y",
        "CREATE ROLE helper",
    ]:
        refused(lambda: q(mallory, sql))
    # Schema-qualified names reach nothing: the schema is not mallory's.
    for sql in [f"SELECT * FROM {a.schema}.a_secret_table", f'TABLE "{a.schema}".alpha_view', f"SELECT {a.schema}.alpha_function()"]:
        message = refused(lambda: q(mallory, sql))
        assert a.schema not in message and "outside this tenant's own schema" in message
    # information_schema shows mallory's own objects only.
    # (The system's own catalogs are listed there too, as on any PostgreSQL.)
    system = "('information_schema', 'pg_catalog')"
    tables = q(mallory, f"SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema NOT IN {system}")
    assert [r["table_name"] for r in tables["data"]["rows"]] == ["mallory_table"]
    columns = q(mallory, f"SELECT DISTINCT table_name FROM information_schema.columns WHERE table_schema NOT IN {system}")
    assert columns["data"]["rows"] == [{"table_name": "mallory_table"}]
    routines = q(mallory, f"SELECT routine_name FROM information_schema.routines WHERE routine_schema NOT IN {system}")
    assert routines["data"]["rows"] == []
    schemata = q(mallory, "SELECT schema_name FROM information_schema.schemata")
    assert a.schema not in [r["schema_name"] for r in schemata["data"]["rows"]]
    views = q(mallory, f"SELECT table_name FROM information_schema.views WHERE table_schema NOT IN {system}")
    assert views["data"]["rows"] == []


def test_cant_learn_another_tenants_names_from_errors(alpha, mallory):
    # Functions that take an object's number answer with its name in their errors.
    with admin() as conn:
        sequence, table = conn.execute(
            "SELECT (SELECT oid FROM pg_class WHERE relname = 'alpha_seq'), (SELECT oid FROM pg_class WHERE relname = 'a_secret_table')"
        ).fetchone()
    for sql, params in [
        (f"SELECT nextval({sequence})", []),
        (f"SELECT currval({sequence}::oid)", []),
        (f"SELECT satisfies_hash_partition({table}, 1, 0, 1)", []),
        ("SELECT satisfies_hash_partition(?, 1, 0, 1)", [table]),
        ("SELECT nextval(?::text)", [str(sequence)]),
    ]:
        with pytest.raises(CapabilityError) as caught:
            q(mallory, sql, params)
        assert "alpha_seq" not in caught.value.message and "a_secret_table" not in caught.value.message
        assert "outside this tenant's own schema" in caught.value.message
    # The tenant's own objects are named as usual, even when the statement did not name them.
    message = refused(lambda: q(mallory, "INSERT INTO mallory_table (x) VALUES (?), (?)", [1, "x"]), "INVALID_ARGUMENT")
    assert "integer" in message
    q(mallory, "CREATE TABLE keyed (id INT PRIMARY KEY)")
    q(mallory, "INSERT INTO keyed VALUES (1)")
    assert "keyed_pkey" in refused(lambda: q(mallory, "INSERT INTO keyed VALUES (1)"), "INVALID_ARGUMENT")


def test_cant_escape_the_tenants_role_even_past_the_guard(alpha, mallory):
    # The statement guard is the second line. These go straight to the database, as the
    # tenant's login role inside SET LOCAL ROLE: the database itself must refuse them.
    _, a = names_of(alpha)
    for sql in [
        "SET ROLE postgres",
        f"SET ROLE {a.owner}",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'postgres', false)",
        f"SELECT set_config('role', '{a.owner}', false)",
        f"DO $$ BEGIN EXECUTE 'SET ROLE {a.owner}'; END $$",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "COPY (SELECT 1) TO '/tmp/symposium-copy-test'",
        "SELECT pg_read_file('/etc/passwd')",
        "CREATE FUNCTION f() RETURNS int LANGUAGE internal AS 'int4in'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'libc', 'getpid'",
        "CREATE EXTENSION IF NOT EXISTS dblink",
        "CREATE SCHEMA escape_hatch",
        "ALTER ROLE CURRENT_USER SUPERUSER",
        f"SELECT * FROM {a.schema}.a_secret_table",
        "SELECT * FROM public.auth_user",
    ]:
        with pytest.raises(CapabilityError) as caught:
            past_the_guard(mallory, sql)
        assert caught.value.code in ("PERMISSION_DENIED", "INVALID_ARGUMENT"), (sql, caught.value.message)
        assert re.search(
            r"permission denied|must be superuser|does not exist|outside this tenant's own schema", caught.value.message, re.I
        ), (sql, caught.value.message)
    # RESET ROLE only drops the tenant to its login role, which can do nothing at all.
    reset = postgres.run(
        mallory,
        [
            (parse_statement("RESET ROLE", POSTGRES), []),
            (parse_statement("SELECT current_user AS who, session_user AS login", POSTGRES), []),
        ],
    )[1]["rows"][0]
    _, m = names_of(mallory)
    assert reset == {"who": m.login, "login": m.login}
    with pytest.raises(CapabilityError):
        postgres.run(mallory, [(parse_statement("RESET ROLE", POSTGRES), []), (parse_statement("SELECT * FROM mallory_table", POSTGRES), [])])
    assert not os.path.exists("/tmp/symposium-copy-test")


def test_cant_copy_to_a_program_or_a_file(mallory):
    for sql in ["COPY (SELECT 1) TO PROGRAM 'id'", "COPY mallory_table FROM PROGRAM 'cat /etc/passwd'", "copy mallory_table to '/tmp/x'"]:
        assert "COPY is not available" in refused(lambda: q(mallory, sql))
    # And the database refuses it too, should the guard ever let one through.
    message = refused(lambda: past_the_guard(mallory, "COPY (SELECT 1) TO PROGRAM 'touch /tmp/symposium-pwned'"))
    assert "pg_execute_server_program" in message
    assert not os.path.exists("/tmp/symposium-pwned")


def test_it_discards_session_state_between_calls(mallory):
    # Calls share pooled connections: nothing of one call may be there for the next.
    q(mallory, "CREATE TEMP TABLE scratch AS SELECT 1 AS x")
    for _ in range(3):
        assert "scratch" in refused(lambda: q(mallory, "SELECT * FROM scratch"), "INVALID_ARGUMENT")
    _, m = names_of(mallory)
    # And the role and search path are back to the platform's at every call.
    who = q(mallory, "SELECT current_user AS who, current_schema() AS schema")["data"]["rows"][0]
    assert who == {"who": m.owner, "schema": m.schema}


def test_it_reuses_pooled_connections(mallory):
    for _ in range(10):
        q(mallory, "SELECT 1")
    target, tenant = names_of(mallory)
    stats = postgres._pools[(target, tenant.login)].get_stats()
    # Ten calls, at most PG_POOL_MAX_SIZE connections ever opened.
    assert stats["requests_num"] >= 10
    assert stats["connections_num"] <= PG_POOL_MAX_SIZE


def test_it_translates_placeholders_only_where_they_are_code(mallory):
    reply = q(
        mallory,
        "SELECT ?::int AS v, '?' AS plain, E'\\'?' AS escaped, $$?%$$ AS dollar, $tag$ ? $tag$ AS tagged, "
        '\'x\' AS "q?", 5 % 3 AS modulo -- ? in a comment\n /* ? */',
        [7],
    )
    assert reply["data"]["rows"] == [{"v": 7, "plain": "?", "escaped": "'?", "dollar": "?%", "tagged": " ? ", "q?": "x", "modulo": 2}]


def test_it_returns_postgres_types_as_a_block_expects(mallory):
    row = q(
        mallory,
        "SELECT DATE '2024-02-29' AS d, TIMESTAMPTZ '2024-02-29 12:30:00+00' AS ts, 1.5::numeric AS half, "
        "12345678901234567890.5::numeric AS huge, '00000000-0000-0000-0000-000000000001'::uuid AS id, "
        "ARRAY[1, 2, 3] AS arr, '{\"a\": 1}'::jsonb AS doc, INTERVAL '1 day 2 hours' AS span, 2::bigint ^ 62 AS pow, "
        "(2::bigint ^ 62)::bigint AS big, '192.168.0.1'::inet AS addr",
    )["data"]["rows"][0]
    assert row["d"] == "2024-02-29"
    assert row["ts"] == "2024-02-29T12:30:00+00:00"
    assert row["half"] == 1.5
    assert row["huge"] == "12345678901234567890.5"
    assert row["id"] == "00000000-0000-0000-0000-000000000001"
    assert row["arr"] == [1, 2, 3]
    assert row["doc"] == {"a": 1}
    assert row["span"] == "P1DT2H"
    assert row["big"] == str(2**62)
    assert row["addr"] == "192.168.0.1"


def test_it_bounds_a_slow_result_read_in_several_fetches(mallory, monkeypatch):
    # Rows of a SELECT are read through a server-side cursor, FETCH after FETCH. Each
    # FETCH here takes 0.2 s, well under the timeout, but together they are bounded by
    # it: the statement timeout is the whole statement's.
    monkeypatch.setattr(values, "FETCH_BATCH", 10)
    mallory.policy = dataclasses.replace(mallory.policy, database_statement_timeout_ms=600)
    started = time.monotonic()
    message = refused(lambda: q(mallory, "SELECT x, pg_sleep(0.02) FROM generate_series(1, 100) AS x"), "TIMEOUT")
    assert "longer than 600 ms" in message
    assert time.monotonic() - started < 1.0


def test_it_refuses_nul_in_text(mallory):
    message = refused(lambda: q(mallory, "SELECT ?::text AS t", ["a\x00b"]), "INVALID_ARGUMENT")
    assert "NUL" in message


def test_it_drops_a_tenants_database(make_tenant):
    ctx = context_for(make_tenant("leaving", "Data"))
    q(ctx, "CREATE TABLE t (x INT)")
    target, tenant = names_of(ctx)
    postgres.drop_tenant(ctx.tenant_id)
    with admin() as conn:
        assert not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [tenant.schema]).fetchone()
        assert not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = ANY(%s)", [[tenant.owner, tenant.login]]).fetchone()
    # A later call makes a fresh, empty database.
    refused(lambda: q(ctx, "SELECT * FROM t"), "INVALID_ARGUMENT")


def test_deleting_a_tenant_drops_its_schema_and_roles(make_tenant, django_capture_on_commit_callbacks):
    # The database capability's receiver (capabilities/database/signals.py) runs once
    # the deletion is committed.
    doomed = make_tenant("doomed", "Data")
    ctx = context_for(doomed)
    q(ctx, "CREATE TABLE notes (body TEXT)")
    target, tenant = names_of(ctx)
    with django_capture_on_commit_callbacks(execute=True):
        doomed.delete()
    with admin() as conn:
        assert not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [tenant.schema]).fetchone()
        assert not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = ANY(%s)", [[tenant.owner, tenant.login]]).fetchone()


def test_it_drops_every_tenant_of_a_database(make_tenant):
    contexts = [context_for(make_tenant(f"gone{i}", "Data")) for i in range(2)]
    for ctx in contexts:
        q(ctx, "SELECT 1")
    assert postgres.drop_all_tenants() >= 2
    with admin() as conn:
        target = postgres.Target.from_settings()
        assert not conn.execute("SELECT 1 FROM pg_roles WHERE rolname LIKE %s", [f"symposium_{target.tag}_t%"]).fetchone()


def test_it_never_logs_in_as_the_platform_for_tenant_sql(mallory):
    target, tenant = names_of(mallory)
    pool = postgres._pools[(target, tenant.login)]
    with pool.connection() as conn:
        assert conn.info.user == tenant.login
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = session_user").fetchone() == (False,)


def test_cant_turn_another_tenants_object_numbers_into_names(alpha, mallory):
    """The whole family of functions and types that turn an object's number into its
    name (or a name into its number), tried with the numbers of another tenant's table,
    view, function, sequence, type, schema and roles."""
    _, a = names_of(alpha)
    with admin() as conn:
        numbers = dict(
            conn.execute(
                """
                SELECT 'table', oid FROM pg_class WHERE relname = 'a_secret_table'
                UNION ALL SELECT 'view', oid FROM pg_class WHERE relname = 'alpha_view'
                UNION ALL SELECT 'function', oid FROM pg_proc WHERE proname = 'alpha_function'
                UNION ALL SELECT 'type', reltype FROM pg_class WHERE relname = 'a_secret_table'
                UNION ALL SELECT 'schema', oid FROM pg_namespace WHERE nspname = %(schema)s
                UNION ALL SELECT 'role', oid FROM pg_roles WHERE rolname = %(owner)s
                """,
                {"schema": a.schema, "owner": a.owner},
            ).fetchall()
        )
    assert len(numbers) == 6
    secrets = ["a_secret_table", "alpha_view", "alpha_function", a.schema, a.owner, a.login, "auth_user", "tenants_"]
    t, v, f, ty, n, r = (numbers[k] for k in ("table", "view", "function", "type", "schema", "role"))
    attempts = [
        f"SELECT regclassout({t})", f"SELECT regprocout({f})", f"SELECT regprocedureout({f})",
        f"SELECT regtypeout({ty})", f"SELECT regoperout({f})", f"SELECT regoperatorout({f})",
        f"SELECT regnamespaceout({n})", f"SELECT regroleout({r})", f"SELECT regconfigout({t})",
        f"SELECT regdictionaryout({t})", f"SELECT regcollationout({t})", f"SELECT regclasssend({t})",
        f"SELECT regclassin('{a.schema}.a_secret_table')", f"SELECT {t}::oid::regclass::text",
        f"SELECT CAST({v} AS regclass)", f"SELECT ARRAY[{t}]::_regclass", f"SELECT '{{{t}}}'::regclass[]",
        f"SELECT {r}::regrole", f"SELECT {n}::regnamespace", f"SELECT {ty}::regtype", f"SELECT {f}::regprocedure",
        f"SELECT oidvectortypes('{ty} {ty}')", f"SELECT oidvectortypes(?::oidvector)",
        f"SELECT format_type({ty}, NULL)", f"SELECT obj_description({t})", f"SELECT col_description({t}, 1)",
        f"SELECT shobj_description({r}, 'pg_authid')", f"SELECT pg_describe_object(1259, {t}, 0)",
        f"SELECT * FROM pg_identify_object(1259, {t}, 0)", f"SELECT * FROM pg_identify_object_as_address(1259, {t}, 0)",
        f"SELECT pg_get_functiondef({f})", f"SELECT pg_get_viewdef({v})", f"SELECT pg_get_userbyid({r})",
        "SELECT current_schemas(true)", f"SELECT to_regclass('{a.schema}.a_secret_table')",
        f"SELECT to_regrole('{a.owner}')", f"SELECT has_table_privilege({t}, 'SELECT')",
        f"SELECT has_schema_privilege({n}, 'USAGE')", f"SELECT row_security_active({t})",
        f"SELECT acldefault('r', {r})::text", f"SELECT makeaclitem({r}, {r}, 'SELECT', false)::text",
        f"SELECT '{r}=r/{r}'::aclitem", f"SELECT information_schema._pg_truetypid(NULL, NULL)",
        f"CREATE FUNCTION leak(oid) RETURNS text LANGUAGE sql AS 'SELECT regclassout($1)::text'",
        f"CREATE VIEW leak AS SELECT {t}::regclass AS name",
    ]
    for sql in attempts:
        params = [f"{ty} {ty}"] if "?" in sql else []
        message = refused(lambda: q(mallory, sql, params))
        assert not any(secret in message for secret in secrets), (sql, message)
    # Ordinary SQL that merely resembles them still runs.
    q(mallory, "CREATE TABLE registry (regular TEXT)")
    q(mallory, "INSERT INTO registry VALUES (regexp_replace('a-b', '-', '+'))")
    assert q(mallory, "SELECT regular FROM registry")["data"]["rows"] == [{"regular": "a+b"}]
    assert q(mallory, "SELECT current_schema() IS NOT NULL AS ok")["data"]["rows"] == [{"ok": True}]


# -- one quota for files and database ---------------------------------------------------


@pytest.fixture
def fresh_usage_cache(settings):
    """A run-state cache of this test's own: usage figures are cached per tenant id, and
    ids are reused between tests."""
    import uuid

    settings.CACHES = {
        **settings.CACHES,
        "runstate": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"test-{uuid.uuid4()}"},
    }


def small_tenant(make_tenant, slug, quota):
    from tenants.models import PolicyOverride

    tenant = make_tenant(slug, "Data")
    PolicyOverride.objects.create(tenant=tenant, setting="storage_quota", value=str(quota))
    return context_for(tenant)


MB = 1024 * 1024
# About 1 KB a row, below the size at which PostgreSQL compresses a value.
ROWS_OF_1KB = "SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, ?) AS g"


def test_cant_store_more_than_the_quota_in_the_database(make_tenant, fresh_usage_cache):
    # 60 MB stored against a 20 MB quota.
    ctx = small_tenant(make_tenant, "pgfill", 20 * MB)
    q(ctx, "CREATE TABLE fill (id int, b text)")
    message = refused(lambda: q(ctx, "INSERT INTO fill " + ROWS_OF_1KB, [60_000]), "QUOTA_EXCEEDED")
    assert "rolled back" in message
    assert q(ctx, "SELECT count(*) AS n FROM fill")["data"]["rows"] == [{"n": 0}]
    # The refused rows' pages are given back, not left to count against the tenant.
    assert postgres.tenant_bytes(ctx) < 1 * MB
    # A few MB at a time until it would pass the quota: the call that would is refused.
    with pytest.raises(CapabilityError) as caught:
        for _ in range(15):
            q(ctx, "INSERT INTO fill " + ROWS_OF_1KB, [4_000])
    assert caught.value.code == "QUOTA_EXCEEDED"
    assert postgres.tenant_bytes(ctx) <= 20 * MB


def test_cant_pass_the_quota_with_temporary_tables(make_tenant, fresh_usage_cache):
    ctx = small_tenant(make_tenant, "pgtemp", 20 * MB)
    steps = [{"query": "CREATE TEMP TABLE scratch (id int, b text)"}, {"query": "INSERT INTO scratch " + ROWS_OF_1KB, "params": [60_000]}]
    with pytest.raises(CapabilityError) as caught:
        database.transaction(ctx, {"steps": steps})
    assert caught.value.code == "QUOTA_EXCEEDED"


def test_cant_hold_more_than_the_quota_in_files_and_database_together(make_tenant, fresh_usage_cache):
    from capabilities import files

    ctx = small_tenant(make_tenant, "pgboth", 20 * MB)
    files.write_file(ctx, {"path": "big.txt", "data": "f" * (15 * MB)})
    q(ctx, "CREATE TABLE fill (id int, b text)")
    refused(lambda: q(ctx, "INSERT INTO fill " + ROWS_OF_1KB, [10_000]), "QUOTA_EXCEEDED")

    # And the other way round: a database near the quota leaves no room for files.
    other = small_tenant(make_tenant, "pgdbfirst", 20 * MB)
    q(other, "CREATE TABLE fill (id int, b text)")
    q(other, "INSERT INTO fill " + ROWS_OF_1KB, [15_000])
    with pytest.raises(CapabilityError) as caught:
        files.write_file(other, {"path": "more.txt", "data": "m" * (10 * MB)})
    assert caught.value.code == "QUOTA_EXCEEDED"
