"""The database capability, called the way the broker calls it (after decide()).

Behaviour tests run on both backends: the embedded SQLite file always, and PostgreSQL
when the platform runs on it (DATABASE_URL). Containment that is specific to one backend
is in test_database_sqlite.py and test_database_postgres.py.
"""

import time

import pytest
from django.conf import settings as django_settings

from capabilities import database
from capabilities.base import CapabilityError
from tests.support.databases import BACKENDS, DDL, close_postgres_pools, drop_postgres_tenants, use_backend
from tenants.models import PolicyOverride, Tenant
from tests.helpers import context_for

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module", autouse=True)
def postgres_connections():
    yield
    close_postgres_pools()


@pytest.fixture(params=BACKENDS)
def backend(request, settings):
    name = use_backend(request.param, settings)
    yield name
    if name == "postgres":
        drop_postgres_tenants(Tenant.objects.values_list("id", flat=True))


@pytest.fixture
def data_tenant(make_tenant, backend):
    return make_tenant("datum", "Data")


def q(ctx, sql, params=None):
    return database.query(ctx, {"sql": sql, "params": params or []})


def refused(call, code):
    with pytest.raises(CapabilityError) as caught:
        call()
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def override(tenant, setting, value):
    PolicyOverride.objects.update_or_create(tenant=tenant, setting=setting, defaults={"value": str(value)})


def seed_tables(ctx, backend):
    q(ctx, DDL[backend]["users"])
    q(ctx, DDL[backend]["logs"])
    database.transaction(
        ctx,
        {
            "steps": [
                {"query": "INSERT INTO users (id, name, active) VALUES (?, ?, ?)", "params": [123, "Ada", True]},
                {"query": "INSERT INTO users (id, name, active) VALUES (?, ?, ?)", "params": [124, "Brian", False]},
                {"query": "INSERT INTO users (id, name, active) VALUES (?, ?, ?)", "params": [125, "Chen", True]},
            ]
        },
    )


def test_it_runs_the_seeds_database_example(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)

    # The seed: database.query('SELECT * FROM users WHERE active = ?', [true])
    users = q(ctx, "SELECT * FROM users WHERE active = ?", [True])
    assert len(users["data"]["rows"]) == 2
    assert users["rowCount"] == 2
    assert users["data"]["columns"] == ["id", "name", "active", "last_activity"]

    # The seed's transaction, with Date.now() as the block would send it.
    now = int(time.time() * 1000)
    reply = database.transaction(
        ctx,
        {
            "steps": [
                {"query": "INSERT INTO logs (action, user_id, timestamp) VALUES (?, ?, ?)", "params": ["file_upload", 123, now]},
                {"query": "UPDATE users SET last_activity = ? WHERE id = ?", "params": [now, 123]},
            ]
        },
    )
    assert [r["rowCount"] for r in reply["data"]["results"]] == [1, 1]
    assert reply["rowCount"] == 2
    log = q(ctx, "SELECT action, user_id, timestamp FROM logs")["data"]["rows"]
    assert log == [{"action": "file_upload", "user_id": 123, "timestamp": now}]
    assert q(ctx, "SELECT last_activity FROM users WHERE id = ?", [123])["data"]["rows"] == [{"last_activity": now}]

    # The seed's file-processing example logs with a plain INSERT.
    q(ctx, DDL[backend]["file_logs"])
    inserted = q(ctx, "INSERT INTO file_logs (file_path, processed_at, record_count) VALUES (?, ?, ?)", ["in.csv", now, 3])
    assert inserted["rowCount"] == 1


def test_it_returns_rows_as_objects_keyed_by_column(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)
    reply = q(ctx, "SELECT u.id, v.id, u.name FROM users u JOIN users v ON v.id = u.id + 1 ORDER BY u.id")
    # Two columns named id: both values kept, the second one under id_2.
    assert reply["columns"] == ["id", "id_2", "name"]
    assert reply["data"]["rows"] == [{"id": 123, "id_2": 124, "name": "Ada"}, {"id": 124, "id_2": 125, "name": "Brian"}]
    empty = q(ctx, "SELECT id, name FROM users WHERE id < 0")
    assert empty["data"]["rows"] == [] and empty["columns"] == ["id", "name"] and empty["rowCount"] == 0


def test_it_round_trips_values(data_tenant, backend):
    ctx = context_for(data_tenant)
    q(ctx, DDL[backend]["kinds"])
    big = 2**60 + 1
    values = [1, 42, big, 2.5, "héllo ✓", None, b"\x00\x01\xff", {"a": [1, 2, {"b": None}]}, True]
    q(ctx, "INSERT INTO kinds (id, small, big, real_number, words, missing, raw, doc, flag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
    row = q(ctx, "SELECT small, big, real_number, words, missing, raw, doc, flag FROM kinds")["data"]["rows"][0]
    assert row["small"] == 42
    # JavaScript numbers hold integers up to 2^53 exactly; past that, a string.
    assert row["big"] == str(big)
    assert row["real_number"] == 2.5
    assert row["words"] == "héllo ✓"
    assert row["missing"] is None
    assert row["raw"] == b"\x00\x01\xff"
    if backend == "postgres":
        assert row["doc"] == {"a": [1, 2, {"b": None}]}
        assert row["flag"] is True
    else:
        # SQLite keeps JSON as text and booleans as 1/0 (docs/database.md).
        assert row["doc"] == '{"a": [1, 2, {"b": null}]}'
        assert row["flag"] == 1


def test_it_keeps_injection_in_params_as_data(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)
    hostile = "x'); DROP TABLE users; --"
    q(ctx, "INSERT INTO users (id, name, active) VALUES (?, ?, ?)", [7, hostile, False])
    assert q(ctx, "SELECT name FROM users WHERE id = ?", [7])["data"]["rows"] == [{"name": hostile}]
    assert q(ctx, "SELECT count(*) AS n FROM users")["data"]["rows"] == [{"n": 4}]
    # A placeholder's value is compared, never read as SQL.
    assert q(ctx, "SELECT id FROM users WHERE name = ?", ["' OR '1'='1"])["data"]["rows"] == []


def test_it_keeps_question_marks_and_percent_signs_in_literals(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)
    reply = q(
        ctx,
        "SELECT '?' AS mark, '100%' AS pct, \"name\" AS n /* is it? */ FROM users -- really?\nWHERE id = ? AND name LIKE 'A%'",
        [123],
    )
    assert reply["data"]["rows"] == [{"mark": "?", "pct": "100%", "n": "Ada"}]


def test_cant_stack_statements(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)
    for sql in [
        "SELECT 1; DROP TABLE users",
        "SELECT 1 -- a comment;\n; DROP TABLE users",
        "SELECT ';' AS a; DROP TABLE users",
        "SELECT 1 /* ; */ ; DELETE FROM users",
    ]:
        message = refused(lambda: q(ctx, sql), "INVALID_ARGUMENT")
        assert "one statement" in message
    assert q(ctx, "SELECT count(*) AS n FROM users")["data"]["rows"] == [{"n": 3}]
    # A semicolon in a string or a comment, or a trailing one, is not a second statement.
    assert q(ctx, "SELECT ';' AS a /* ; */ ;")["data"]["rows"] == [{"a": ";"}]


def test_it_checks_the_number_of_parameters(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)
    message = refused(lambda: q(ctx, "SELECT * FROM users WHERE id = ? AND name = ?", [1]), "INVALID_ARGUMENT")
    assert "2 ? placeholders but 1 parameter was given" in message
    refused(lambda: database.query(ctx, {"sql": "SELECT 1", "params": "x"}), "INVALID_ARGUMENT")
    refused(lambda: database.query(ctx, {"sql": 42}), "INVALID_ARGUMENT")
    refused(lambda: q(ctx, "SELECT * FROM users WHERE id = :id"), "INVALID_ARGUMENT")
    refused(lambda: q(ctx, "   -- nothing\n"), "INVALID_ARGUMENT")


def test_it_runs_a_transaction_all_or_nothing(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)
    message = refused(
        lambda: database.transaction(
            ctx,
            {
                "steps": [
                    {"query": "INSERT INTO users (id, name, active) VALUES (?, ?, ?)", "params": [200, "Dora", True]},
                    {"query": "INSERT INTO users (id, name, active) VALUES (?, ?, ?)", "params": [123, "Duplicate", True]},
                ]
            },
        ),
        "INVALID_ARGUMENT",
    )
    assert message.startswith("Step 2: Constraint failed")
    assert q(ctx, "SELECT count(*) AS n FROM users WHERE id = 200")["data"]["rows"] == [{"n": 0}]
    # A refused step stops the transaction before any step runs.
    message = refused(
        lambda: database.transaction(
            ctx,
            {"steps": [{"query": "DELETE FROM users", "params": []}, {"query": "SELECT 1; SELECT 2", "params": []}]},
        ),
        "INVALID_ARGUMENT",
    )
    assert message.startswith("Step 2:")
    assert q(ctx, "SELECT count(*) AS n FROM users")["data"]["rows"] == [{"n": 3}]
    refused(lambda: database.transaction(ctx, {"steps": []}), "INVALID_ARGUMENT")
    refused(lambda: database.transaction(ctx, {"steps": ["SELECT 1"]}), "INVALID_ARGUMENT")


def test_it_reads_what_data_changing_statements_return(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)
    returned = q(ctx, "INSERT INTO users (id, name, active) VALUES (?, ?, ?) RETURNING id, name", [300, "Eve", True])
    assert returned["data"]["rows"] == [{"id": 300, "name": "Eve"}] and returned["rowCount"] == 1
    updated = q(ctx, "UPDATE users SET active = ? WHERE active = ?", [False, True])
    assert updated["rowCount"] == 3 and updated["data"]["rows"] == []
    if backend == "postgres":
        # A data-changing statement inside WITH (PostgreSQL only).
        deleted = q(ctx, "WITH gone AS (DELETE FROM users WHERE id >= ? RETURNING id) SELECT count(*) AS n FROM gone", [124])
        assert deleted["data"]["rows"] == [{"n": 3}]
        q(ctx, "WITH x AS (SELECT 1) INSERT INTO logs (action) SELECT 'y' FROM x")
    else:
        deleted = q(ctx, "DELETE FROM users WHERE id >= ? RETURNING id", [124])
        assert deleted["rowCount"] == 3
        q(ctx, "DELETE FROM logs")
        assert q(ctx, "INSERT INTO logs (action) VALUES (?)", ["x"])["data"]["lastInsertId"] == 1


def test_it_caps_the_rows_of_a_million_row_result(data_tenant, backend):
    ctx = context_for(data_tenant)
    million = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT x FROM c"
    started = time.monotonic()
    message = refused(lambda: q(ctx, million), "QUOTA_EXCEEDED")
    elapsed = time.monotonic() - started
    assert "more than 10000 rows" in message
    # Stopped at the cap, not after reading a million rows.
    assert elapsed < 1.5, elapsed
    assert len(q(ctx, million + " LIMIT 10000")["data"]["rows"]) == 10000


def test_it_caps_the_bytes_of_a_result(data_tenant, backend):
    override(data_tenant, "database_max_result_bytes", 100_000)
    ctx = context_for(data_tenant)
    q(ctx, DDL[backend]["notes"])
    for i in range(5):
        q(ctx, "INSERT INTO notes (body) VALUES (?)", ["x" * 30_000])
    assert len(q(ctx, "SELECT body FROM notes LIMIT 3")["data"]["rows"]) == 3
    message = refused(lambda: q(ctx, "SELECT body FROM notes"), "QUOTA_EXCEEDED")
    assert "larger than 100000 bytes" in message


def test_it_stops_a_cartesian_join_at_the_statement_timeout(data_tenant, backend):
    override(data_tenant, "database_statement_timeout_ms", 300)
    ctx = context_for(data_tenant)
    join = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000) "
        "SELECT count(*) AS n FROM c a, c b, c d"
    )
    started = time.monotonic()
    message = refused(lambda: q(ctx, join), "TIMEOUT")
    assert time.monotonic() - started < 3
    assert "longer than 300 ms" in message


def test_it_stops_at_the_calls_deadline(data_tenant, backend):
    ctx = context_for(data_tenant)
    ctx.deadline = time.time() + 0.4
    join = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000) SELECT count(*) AS n FROM c a, c b, c d"
    started = time.monotonic()
    message = refused(lambda: q(ctx, join), "TIMEOUT")
    assert time.monotonic() - started < 2
    assert "call's time ran out" in message
    ctx.deadline = time.time() - 1
    refused(lambda: q(ctx, "SELECT 1"), "TIMEOUT")


def test_it_explains_errors_without_internals(data_tenant, backend):
    ctx = context_for(data_tenant)
    seed_tables(ctx, backend)
    message = refused(lambda: q(ctx, "SELECT name, FROM users"), "INVALID_ARGUMENT")
    assert message == "syntax error near 'FROM'"
    message = refused(lambda: q(ctx, "SELECT * FROM nowhere"), "INVALID_ARGUMENT")
    assert "nowhere" in message
    message = refused(lambda: q(ctx, "SELECT nosuchcolumn FROM users"), "INVALID_ARGUMENT")
    assert "nosuchcolumn" in message
    for text in (message, refused(lambda: q(ctx, "SELECT * FROM nowhere"), "INVALID_ARGUMENT")):
        assert str(django_settings.TENANT_STORAGE_ROOT) not in text
        assert ".symposium" not in text and "tenant_" not in text and "symposium_" not in text


def test_it_refuses_transaction_control(data_tenant, backend):
    ctx = context_for(data_tenant)
    for sql in ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT a", "END", "begin transaction"]:
        assert "database.transaction()" in refused(lambda: q(ctx, sql), "PERMISSION_DENIED")


def test_it_keeps_tenants_apart(make_tenant, backend):
    alpha, beta = make_tenant("alpha", "Data"), make_tenant("beta", "Advanced")
    a, b = context_for(alpha), context_for(beta)
    q(a, "CREATE TABLE secrets (value TEXT)")
    q(a, "INSERT INTO secrets (value) VALUES (?)", ["alpha's secret"])
    refused(lambda: q(b, "SELECT * FROM secrets"), "INVALID_ARGUMENT")
    # Beta's table of the same name is its own.
    q(b, "CREATE TABLE secrets (value TEXT)")
    assert q(b, "SELECT * FROM secrets")["data"]["rows"] == []
    assert q(a, "SELECT * FROM secrets")["data"]["rows"] == [{"value": "alpha's secret"}]


def test_cant_use_the_database_without_the_profile(make_tenant, backend):
    for profile in ("Basic", "Interactive"):
        ctx = context_for(make_tenant(profile.lower(), profile))
        message = refused(lambda: q(ctx, "SELECT 1"), "PERMISSION_DENIED")
        assert f"The {profile} profile does not allow database access." == message
