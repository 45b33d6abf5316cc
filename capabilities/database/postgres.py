"""A tenant's database on PostgreSQL: its own schema, its own roles.

# SECURITY: how a tenant is kept to its schema.
#
# Each tenant gets, on first use:
#   - a NOLOGIN role that owns the tenant's schema and everything in it (`owner`);
#   - a LOGIN role, NOINHERIT, member of that owner role and of nothing else (`login`);
#   - a schema, owned by the owner role, on which PUBLIC has no rights.
# Statements run on a connection that logs in *as the tenant's login role*, in a
# transaction that starts with SET LOCAL ROLE <owner>, SET LOCAL search_path = <schema>
# and SET LOCAL statement_timeout.
#
# Logging in as the tenant (not as the platform's user) is what makes the role switch
# impossible to undo from inside: PostgreSQL lets a session SET ROLE only to roles its
# *login* user belongs to, and a superuser login may become anyone, which RESET ROLE,
# SET ROLE or set_config('role', ...) hidden in dynamic SQL would do. The tenant's login
# role belongs only to its own owner role; without it (RESET ROLE) it has no rights at
# all (NOINHERIT). It is not a superuser, so COPY ... TO PROGRAM, server files and
# untrusted languages are refused by the server itself. The statement guard
# (capabilities.database.guard) refuses those statements earlier with a clearer message
# and keeps the tenant out of the shared catalogs.
#
# The login role's password is derived from the platform's SECRET_KEY (HMAC), set on the
# role as a SCRAM verifier (the plain password never reaches the server's logs) and never
# shown to anyone. pg_hba.conf must let these roles log in with a password from the
# platform's hosts (docs/database.md).
"""

import atexit
import hashlib
import hmac
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import psycopg
from django.conf import settings
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from capabilities.base import CapabilityError
from capabilities.files import quota
from capabilities.database.limits import (
    FETCH_BATCH,
    PG_MAX_OPEN_POOLS,
    PG_POOL_MAX_IDLE_SECONDS,
    PG_POOL_MAX_SIZE,
    PG_POOL_WAIT_SECONDS,
    PG_TEMP_FILE_LIMIT_KB,
    PG_TENANT_CONNECTION_LIMIT,
)
from capabilities.database.sqltext import paren_depths
from capabilities.database.values import ResultCollector, column_keys

logger = logging.getLogger(__name__)

# libpq connection settings taken over from the platform's DATABASES OPTIONS for the
# tenants' connections (TLS and timeouts); anything else there is the platform's own.
LIBPQ_OPTIONS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcompression",
    "connect_timeout", "gssencmode", "channel_binding", "target_session_attrs", "requiressl",
}  # fmt: skip

# The first key of the advisory lock taken while a tenant's roles and schema are made,
# so that two workers making the same tenant's at once wait for each other.
PROVISION_LOCK = 0x53594D50  # "SYMP"


@dataclass(frozen=True)
class Target:
    """The platform's PostgreSQL database (settings.DATABASES['default'])."""

    host: str
    port: str
    dbname: str
    user: str
    password: str
    options: tuple

    @classmethod
    def from_settings(cls):
        db = settings.DATABASES["default"]
        options = tuple(sorted((k, str(v)) for k, v in (db.get("OPTIONS") or {}).items() if k in LIBPQ_OPTIONS))
        return cls(
            host=str(db.get("HOST") or ""),
            port=str(db.get("PORT") or ""),
            dbname=str(db.get("NAME") or ""),
            user=str(db.get("USER") or ""),
            password=str(db.get("PASSWORD") or ""),
            options=options,
        )

    @property
    def tag(self):
        # Roles are shared by every database of a server, schemas are not: the roles'
        # names carry the database's, so two platforms (or a test database) on one
        # server never share a tenant's roles.
        return hashlib.sha256(f"{self.host}:{self.port}/{self.dbname}".encode()).hexdigest()[:8]

    def conninfo(self, user=None, password=None, application_name="symposium"):
        params = {"dbname": self.dbname, "application_name": application_name, **dict(self.options)}
        if self.host:
            params["host"] = self.host
        if self.port:
            params["port"] = self.port
        params["user"] = user or self.user
        if (password if user else self.password):
            params["password"] = password if user else self.password
        return psycopg.conninfo.make_conninfo(**params)


@dataclass(frozen=True)
class TenantDatabase:
    """The names of one tenant's schema and roles, derived from its id alone: a tenant
    slug never reaches an SQL identifier."""

    tenant_id: int
    schema: str
    owner: str
    login: str

    @classmethod
    def of(cls, target, tenant_id):
        tenant_id = int(tenant_id)
        owner = f"symposium_{target.tag}_t{tenant_id}"
        return cls(tenant_id, f"tenant_{tenant_id}", owner, f"{owner}_login")

    def password(self):
        key = settings.SECRET_KEY.encode()
        return hmac.new(key, f"symposium tenant database login {self.login}".encode(), hashlib.sha256).hexdigest()


# -- making a tenant's roles and schema ------------------------------------------------

_provisioned = set()
_hardened = set()
_provision_lock = threading.Lock()


def ensure_tenant(target, tenant):
    """Make the tenant's roles and schema if they are missing, once per worker process.
    Idempotent, and safe when several workers do it at once (an advisory lock)."""
    key = (target, tenant.tenant_id)
    if key in _provisioned:
        return
    with _provision_lock:
        if key in _provisioned:
            return
        try:
            with psycopg.connect(target.conninfo(application_name="symposium-provision"), autocommit=True) as admin:
                if target not in _hardened:
                    _harden_platform(admin)
                    _hardened.add(target)
                with admin.transaction():
                    _provision(admin, target, tenant)
        except psycopg.Error:
            logger.exception("could not provision the database of tenant %s", tenant.tenant_id)
            raise CapabilityError("UPSTREAM_ERROR", "The tenant's database could not be prepared; try again later.") from None
        _provisioned.add(key)


def _provision(admin, target, tenant):
    owner, login, schema = sql.Identifier(tenant.owner), sql.Identifier(tenant.login), sql.Identifier(tenant.schema)
    admin.execute("SELECT pg_advisory_xact_lock(%s, %s)", [PROVISION_LOCK, tenant.tenant_id])
    superuser = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    existing = {row[0] for row in admin.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [[tenant.owner, tenant.login]])}
    locked_down = sql.SQL("NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS")
    if tenant.owner not in existing:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN {}").format(owner, locked_down))
    if tenant.login not in existing:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN {}").format(login, locked_down))
    # Asserted every time, not only at creation: a role changed by hand goes back to
    # what the isolation depends on, and a new SECRET_KEY gets its new password.
    verifier = admin.pgconn.encrypt_password(tenant.password().encode(), tenant.login.encode(), b"scram-sha-256")
    admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN {}").format(owner, locked_down))
    admin.execute(
        sql.SQL("ALTER ROLE {} LOGIN {} CONNECTION LIMIT {} PASSWORD {}").format(
            login, locked_down, sql.Literal(PG_TENANT_CONNECTION_LIMIT), sql.Literal(verifier.decode())
        )
    )
    admin.execute(sql.SQL("GRANT {} TO {}").format(owner, login))
    admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(target.dbname), login))
    admin.execute(sql.SQL("ALTER ROLE {} SET search_path = {}").format(login, schema))
    if superuser:
        # Only a superuser may set temp_file_limit; it bounds the disk one statement's
        # sorts and hashes may spill to.
        admin.execute(sql.SQL("ALTER ROLE {} SET temp_file_limit = {}").format(login, sql.Literal(f"{PG_TEMP_FILE_LIMIT_KB}kB")))
    else:
        # CREATE SCHEMA ... AUTHORIZATION needs the platform's user to be able to act as
        # the owner role (a CREATEROLE user may grant itself that).
        admin.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(owner))
    admin.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(schema, owner))
    admin.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
    # Functions and types are open to PUBLIC by default; a tenant's must not even show up
    # in another tenant's information_schema.
    admin.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC").format(owner))
    admin.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE USAGE ON TYPES FROM PUBLIC").format(owner))


def _harden_platform(admin):
    """The platform's tables must not be open to PUBLIC: every tenant role is a member of
    PUBLIC. Django never grants to PUBLIC; an administrator might have. Undone here (and
    logged), once per worker process."""
    rows = admin.execute(
        """
        SELECT DISTINCT n.nspname, c.relname
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        CROSS JOIN LATERAL aclexplode(c.relacl) AS acl
        WHERE acl.grantee = 0 AND n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
        """
    ).fetchall()
    if not rows:
        return
    logger.warning(
        "PUBLIC had privileges on platform tables (%s); revoking them, since tenants' roles are members of PUBLIC",
        ", ".join(f"{schema}.{name}" for schema, name in rows),
    )
    for schema, name in rows:
        try:
            admin.execute(sql.SQL("REVOKE ALL ON {}.{} FROM PUBLIC").format(sql.Identifier(schema), sql.Identifier(name)))
        except psycopg.Error:
            logger.exception("could not revoke PUBLIC's privileges on %s.%s", schema, name)


def drop_tenant(tenant_id, target=None):
    """Remove a tenant's schema (with everything in it) and its roles. For the platform's
    tenant deletion and for tests."""
    target = target or Target.from_settings()
    tenant = TenantDatabase.of(target, tenant_id)
    close_pools(lambda key: key == (target, tenant.login))
    with psycopg.connect(target.conninfo(application_name="symposium-provision"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(tenant.schema)))
        for role in (tenant.login, tenant.owner):
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    _provisioned.discard((target, tenant.tenant_id))


def drop_all_tenants(target=None):
    """Drop every tenant schema and role of this database (the roles whose names carry
    its tag). For decommissioning a platform database, and for test runs, whose
    databases go away while roles, which belong to the whole server, would stay."""
    target = target or Target.from_settings()
    with psycopg.connect(target.conninfo(application_name="symposium-provision"), autocommit=True) as admin:
        names = [row[0] for row in admin.execute("SELECT rolname FROM pg_roles WHERE rolname ~ %s", [rf"^symposium_{target.tag}_t\d+$"])]
    for name in names:
        drop_tenant(int(name.rsplit("_t", 1)[1]), target)
    return len(names)


# -- the tenant's share of the storage quota --------------------------------------------

# What a tenant's database holds on the server: its tables (with their indexes and
# TOAST), materialized views and sequences, in its schema and, while a call runs, in
# the session's temporary schema (dropped by DISCARD ALL when the call ends).
TENANT_BYTES = """
    SELECT coalesce(sum(pg_catalog.pg_total_relation_size(c.oid)), 0)::bigint
    FROM pg_catalog.pg_class c
    WHERE c.relkind IN ('r', 'm', 'S')
      AND (c.relnamespace = pg_catalog.to_regnamespace(%(schema)s)
           OR %(temp)s AND c.relnamespace = pg_catalog.pg_my_temp_schema())
"""


def tenant_bytes(ctx):
    """The tenant's database size, for the quota of a call that is not a database call
    (a file written): measured on the platform's connection."""
    from django.db import connection

    tenant = TenantDatabase.of(Target.from_settings(), ctx.tenant_id)
    with connection.cursor() as cursor:
        cursor.execute(TENANT_BYTES, {"schema": tenant.schema, "temp": False})
        return cursor.fetchone()[0]


# -- connection pools ------------------------------------------------------------------

_pools = OrderedDict()
_pools_lock = threading.Lock()


def _reset_session(conn):
    # Whatever a call left in the session (temporary tables, advisory locks, settings)
    # goes before the connection serves the next call. DISCARD cannot run in a
    # transaction block, hence autocommit for this one command.
    conn.autocommit = True
    conn.execute("DISCARD ALL")
    conn.autocommit = False


def pool_for(target, tenant):
    """The tenant's connection pool in this process, made on first use. The least
    recently used pool is closed when more than PG_MAX_OPEN_POOLS are open."""
    key = (target, tenant.login)
    stale = []
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None:
            _pools.move_to_end(key)
            return pool
        pool = ConnectionPool(
            target.conninfo(user=tenant.login, password=tenant.password(), application_name="symposium-tenant"),
            # prepare_threshold=None: nothing is prepared server-side, so nothing of one
            # call outlives DISCARD ALL.
            kwargs={"autocommit": False, "prepare_threshold": None},
            min_size=0,
            max_size=PG_POOL_MAX_SIZE,
            max_idle=PG_POOL_MAX_IDLE_SECONDS,
            num_workers=1,
            reset=_reset_session,
            check=ConnectionPool.check_connection,
            timeout=PG_POOL_WAIT_SECONDS,
            name=f"symposium-tenant-{tenant.tenant_id}",
            open=True,
        )
        _pools[key] = pool
        while len(_pools) > PG_MAX_OPEN_POOLS:
            stale.append(_pools.popitem(last=False)[1])
    for old in stale:
        old.close()
    return pool


def close_pools(which=lambda key: True):
    """Close this process's pools (all of them, or those whose key `which` accepts)."""
    with _pools_lock:
        keys = [key for key in _pools if which(key)]
        closing = [_pools.pop(key) for key in keys]
    for pool in closing:
        pool.close()


atexit.register(close_pools)


class ExtendedProtocolCursor(psycopg.Cursor):
    """A cursor that always uses the extended query protocol, which carries exactly one
    statement. psycopg uses the simple protocol (several statements allowed) for a
    statement without parameters; a block's statement never goes that way."""

    def _execute_send(self, query, *, force_extended=False, binary=None):
        super()._execute_send(query, force_extended=True, binary=binary)


# -- running statements ----------------------------------------------------------------

DATA_CHANGING = {"insert", "update", "delete", "merge"}


def classify(statement):
    """How to read a statement's rows without holding all of them in memory:
    'cursor' (a server-side cursor, fetched in batches), 'stream' (rows as they come,
    for INSERT/UPDATE/DELETE ... RETURNING), or 'execute' (no rows, or a few: EXPLAIN,
    SHOW, CALL)."""
    tokens = statement.tokens
    depths = paren_depths(tokens)
    words = [(t.value, d) for t, d in zip(tokens, depths) if t.kind == "word"]
    if not words:
        return "execute"
    first = words[0][0]
    changes_data = any(w in DATA_CHANGING for w, _ in words)
    returning = any(w == "returning" for w, d in words if d == 0)
    if first in ("select", "values", "table"):
        if any(w == "into" for w, d in words if d == 0):
            return "execute"  # SELECT ... INTO makes a table and returns nothing
        return "stream" if changes_data else "cursor"
    if first == "with":
        main = next((w for w, d in words[1:] if d == 0 and w in DATA_CHANGING | {"select", "values", "table"}), "select")
        if main in DATA_CHANGING:
            return "stream" if returning else "execute"
        return "stream" if changes_data else "cursor"
    if first in DATA_CHANGING:
        return "stream" if returning else "execute"
    return "execute"


# PostgreSQL numbers the objects users create from 16384 (FirstNormalObjectId) up.
FIRST_USER_OBJECT_NUMBER = 16384


def _may_name_an_object_number(statement, params):
    """Whether the statement holds a number that may be an object's (an OID), in its
    text or its parameters: then any error may name that object."""
    values = [t.value for t in statement.tokens if t.kind in ("number", "string")] + list(params)
    for value in values:
        if isinstance(value, bool):
            continue
        if isinstance(value, int) or isinstance(value, str) and value.strip().isdigit():
            if int(value) >= FIRST_USER_OBJECT_NUMBER:
                return True
    return False


def _pg_param(value):
    if isinstance(value, (dict, list)):
        return Jsonb(value)
    if isinstance(value, str) and "\x00" in value:
        raise CapabilityError("INVALID_ARGUMENT", "A text parameter contains a NUL character, which PostgreSQL text cannot hold.")
    return value


# Said when the call's deadline passed before a statement began (it did not run).
NOT_STARTED = "The call's time ran out before the statement could run."


def label(error, index, steps):
    """In a transaction, say which step failed."""
    if not steps:
        return error
    return CapabilityError(error.code, f"Step {index + 1}: {error.message}")


def run(ctx, statements, steps=False):
    """Run the (statement, params) pairs in one transaction; the list of their results.
    With `steps`, errors name the step that failed."""
    target = Target.from_settings()
    tenant = TenantDatabase.of(target, ctx.tenant_id)
    ensure_tenant(target, tenant)
    pool = pool_for(target, tenant)
    ctx.check_deadline(NOT_STARTED)
    try:
        conn = pool.getconn(timeout=max(ctx.timeout(PG_POOL_WAIT_SECONDS), 0.05))
    except PoolTimeout:
        raise CapabilityError("UPSTREAM_ERROR", "The database did not accept a connection in time; try again.") from None
    runner = Runner(ctx, target, tenant, conn, steps)
    try:
        results = runner.run(statements)
        runner.check_quota()
        conn.commit()
        quota.record_database_usage(ctx, runner.bytes_after)
        return results
    except psycopg.Error as error:
        # The platform's own commands (SET LOCAL, COMMIT) failed: no step to name.
        raise runner.error(error) from None
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
        pool.putconn(conn)


class Runner:
    def __init__(self, ctx, target, tenant, conn, steps):
        self.ctx = ctx
        self.steps = steps
        self.target = target
        self.tenant = tenant
        self.conn = conn
        self.timeout_ms = ctx.policy.database_statement_timeout_ms
        self.current_timeout_ms = self.timeout_ms
        self.call_limited = False

    def run(self, statements):
        self.conn.execute(
            sql.SQL("SET LOCAL ROLE {}; SET LOCAL search_path = {}; SET LOCAL statement_timeout = {}").format(
                sql.Identifier(self.tenant.owner), sql.Identifier(self.tenant.schema), sql.Literal(self.timeout_ms)
            )
        )
        self.bytes_before = quota.cached_database_usage(self.ctx)
        if self.bytes_before is None:
            self.bytes_before = self.measure()
        collector = ResultCollector(self.ctx.policy)
        results = []
        for index, (statement, params) in enumerate(statements):
            try:
                results.append(self._run_one(index, statement, params, collector))
            except psycopg.Error as error:
                raise label(self.error(error, statement, params), index, self.steps) from None
            except CapabilityError as error:
                raise label(error, index, self.steps) from None
        return results

    def measure(self):
        """Bytes the tenant's schema and this session's temporary schema hold on the
        server, uncommitted changes of this transaction included."""
        return self.conn.execute(TENANT_BYTES, {"schema": self.tenant.schema, "temp": True}).fetchone()[0]

    def check_quota(self):
        """One quota for the tenant's files and its database: a call after which they
        would hold more than the quota, and more than before the call, is rolled back.
        Checked once the statements have run, inside their transaction, so what a
        statement wrote (or a temporary table holds) is counted before it is kept."""
        self.bytes_after = self.measure()
        limit = self.ctx.policy.storage_quota
        files = quota.files_usage(self.ctx)
        if files + self.bytes_after > limit and self.bytes_after > self.bytes_before:
            self.conn.rollback()
            self.reclaim()
            quota.forget_database_usage(self.ctx)
            raise CapabilityError(
                "QUOTA_EXCEEDED",
                f"The database would hold {self.bytes_after} bytes and the files {files}; the quota is {limit} bytes "
                "for both. The call's changes were rolled back.",
            )

    def reclaim(self):
        """After a call refused for the quota: its rows are rolled back but their pages
        stay in the tables' files until a VACUUM gives the empty ones back, and until
        then they would count against the tenant. So its tables are vacuumed now (as
        the tenant's owner role; VACUUM cannot run in a transaction)."""
        conn = self.conn
        try:
            conn.autocommit = True
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.tenant.owner)))
            tables = conn.execute(
                "SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.to_regnamespace(%s) AND relkind IN ('r', 'm')",
                [self.tenant.schema],
            ).fetchall()
            for (name,) in tables:
                conn.execute(sql.SQL("VACUUM {}.{}").format(sql.Identifier(self.tenant.schema), sql.Identifier(name)))
        except psycopg.Error as error:
            logger.warning("tenant %s: could not vacuum after a refused call: %s", self.ctx.tenant_slug, error)
        finally:
            try:
                conn.execute("RESET ROLE")
            except psycopg.Error:
                pass
            conn.autocommit = False

    def _set_timeout(self, milliseconds):
        # A round trip only when the timeout moves by more than a little: a statement's
        # first FETCH starts a few milliseconds after its timeout was set.
        milliseconds = max(int(milliseconds), 1)
        if abs(milliseconds - self.current_timeout_ms) > 20:
            self.conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(milliseconds)))
            self.current_timeout_ms = milliseconds

    def _bound_statement(self, statement_time):
        """Set the statement timeout to the time `statement_time` (a context whose
        deadline is the statement's) has left, or raise TIMEOUT when none is. Rows read
        through a server-side cursor take several FETCHes; the statement timeout bounds
        them together, not each one."""
        if statement_time.expired():
            raise self.timeout_error()
        self._set_timeout(statement_time.time_left() * 1000)

    def timeout_error(self):
        if self.call_limited:
            return CapabilityError("TIMEOUT", "The call's time ran out while the statement was running.")
        return CapabilityError("TIMEOUT", f"The statement ran longer than {self.timeout_ms} ms, this tenant's statement timeout.")

    def _run_one(self, index, statement, params, collector):
        self.ctx.check_deadline(NOT_STARTED)
        seconds = self.ctx.timeout(self.timeout_ms / 1000.0)
        self.call_limited = seconds * 1000 < self.timeout_ms
        statement_time = self.ctx.ending_in(seconds)
        self._bound_statement(statement_time)
        text = statement.driver_text()
        values = [_pg_param(p) for p in params]
        kind = classify(statement)
        rows, keys = [], []
        if kind == "cursor":
            with self.conn.cursor(name=f"symposium_{index}") as cursor:
                cursor.execute(text, values)
                keys = column_keys([c.name for c in cursor.description or []])
                while True:
                    self._bound_statement(statement_time)
                    batch = cursor.fetchmany(collector.batch_size())
                    if not batch:
                        break
                    rows.extend(collector.add_rows(keys, batch))
            row_count = len(rows)
        elif kind == "stream":
            cursor = ExtendedProtocolCursor(self.conn)
            batch = []
            try:
                for row in cursor.stream(text, values, size=FETCH_BATCH):
                    if not keys:
                        keys = column_keys([c.name for c in cursor.description or []])
                    batch.append(row)
                    if len(batch) >= collector.batch_size():
                        rows.extend(collector.add_rows(keys, batch))
                        batch = []
            except psycopg.ProgrammingError as error:
                # A data-changing statement that returned no rows after all.
                if "didn't produce a result" not in str(error):
                    raise
            rows.extend(collector.add_rows(keys, batch))
            row_count = len(rows)
        else:
            cursor = ExtendedProtocolCursor(self.conn)
            cursor.execute(text, values)
            if cursor.description:
                keys = column_keys([c.name for c in cursor.description])
                while batch := cursor.fetchmany(collector.batch_size()):
                    rows.extend(collector.add_rows(keys, batch))
                row_count = len(rows) if cursor.rowcount < 0 else cursor.rowcount
            else:
                row_count = max(cursor.rowcount, 0)
        return {"rows": rows, "rowCount": row_count, "columns": keys}

    # -- errors: what the block author reads, without the platform's names ---------------

    def scrub(self, message):
        for name, replacement in (
            (self.tenant.login, "the tenant's role"),
            (self.tenant.owner, "the tenant's role"),
            (self.tenant.schema, "the tenant's schema"),
            (self.target.user, "the platform"),
            (self.target.dbname, "the database"),
        ):
            if name:
                message = re.sub(rf'"?\b{re.escape(name)}\b"?', replacement, message)
        # Any other tenant's schema or role, named in a message (a permission error).
        message = re.sub(r'"?\btenant_\d+\b"?', "another schema", message)
        message = re.sub(r'"?\bsymposium_[0-9a-f]{8}_t\d+(?:_login)?\b"?', "another role", message)
        return message[:500]

    def names_foreign_objects(self, primary, statement):
        """Whether an error message names an object the statement did not name and the
        tenant does not own. Functions given an object's number (nextval(16400))
        answer with the object's name: another tenant's, which the block must not learn."""
        named = re.findall(r'"([^"]+)"', primary)
        named += re.findall(r"\bfor (?:table|sequence|view|materialized view|relation|function|type|column|foreign table) ([\w$]+)$", primary)
        if not named:
            return False
        known = set()
        for token in statement.tokens:
            if token.kind in ("word", "ident", "string"):
                known.add(token.value.lower())
                known.update(part.strip('"').lower() for part in token.value.split("."))
        unknown = sorted({name for name in named if name.lower() not in known})
        if not unknown:
            return False
        try:
            self.conn.rollback()
            owned = self.conn.execute(
                """
                SELECT count(DISTINCT name) FROM (
                    SELECT relname::text AS name FROM pg_class WHERE relnamespace = to_regnamespace(%(schema)s)
                    UNION ALL SELECT conname::text FROM pg_constraint WHERE connamespace = to_regnamespace(%(schema)s)
                    UNION ALL SELECT proname::text FROM pg_proc WHERE pronamespace = to_regnamespace(%(schema)s)
                    UNION ALL SELECT typname::text FROM pg_type WHERE typnamespace = to_regnamespace(%(schema)s)
                    UNION ALL SELECT attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                        WHERE c.relnamespace = to_regnamespace(%(schema)s)
                ) AS objects WHERE name = ANY(%(names)s)
                """,
                {"schema": self.tenant.schema, "names": unknown},
            ).fetchone()[0]
        except psycopg.Error:
            return True
        return owned < len(unknown)

    def error(self, error, statement=None, params=()):
        state = getattr(error, "sqlstate", None) or ""
        diag = getattr(error, "diag", None)
        primary = (diag.message_primary if diag is not None else None) or str(error).split("\n")[0]
        if statement is not None and (state.startswith("42") or _may_name_an_object_number(statement, params)) and self.names_foreign_objects(
            primary, statement
        ):
            return CapabilityError(
                "PERMISSION_DENIED" if state == "42501" else "INVALID_ARGUMENT",
                "The statement refers to an object outside this tenant's own schema.",
            )
        message = self.scrub(primary)
        if state == "57014":
            return self.timeout_error()
        if state == "42601":
            near = re.match(r'syntax error at or near "(.*)"$', primary)
            return CapabilityError("INVALID_ARGUMENT", f"syntax error near '{near.group(1)}'" if near else message)
        if state == "42501":
            if re.match(r"permission denied to set (role|session authorization)", primary):
                return CapabilityError("PERMISSION_DENIED", "Permission denied: a tenant's statements always run as the tenant's own role.")
            if re.match(r"permission denied for (schema|database)", primary):
                return CapabilityError(
                    "PERMISSION_DENIED", "Permission denied: the statement reaches outside this tenant's own schema."
                )
            return CapabilityError("PERMISSION_DENIED", message[:1].upper() + message[1:])
        if state.startswith("23"):
            detail = self.scrub(diag.message_detail) if diag is not None and diag.message_detail else ""
            return CapabilityError("INVALID_ARGUMENT", f"Constraint failed: {message}" + (f" ({detail})" if detail else ""))
        if state in ("53100", "53400"):
            return CapabilityError("QUOTA_EXCEEDED", f"The statement used more disk than this tenant may: {message}")
        if state == "53200":
            return CapabilityError("QUOTA_EXCEEDED", "The statement needed more memory than the database server allows.")
        if state in ("40001", "40P01"):
            return CapabilityError("UPSTREAM_ERROR", f"{message[:1].upper() + message[1:]}; run the call again.")
        if state[:2] in ("08", "28", "3D", "53", "57", "58", "XX", "F0", "P0") or not state and isinstance(error, psycopg.OperationalError):
            logger.error("tenant %s: PostgreSQL error %s: %s", self.ctx.tenant_slug, state, error)
            return CapabilityError("UPSTREAM_ERROR", "The database is unavailable right now; try again later.")
        if not state:
            if isinstance(error, psycopg.DataError):
                return CapabilityError("INVALID_ARGUMENT", message)
            logger.error("tenant %s: psycopg error: %r", self.ctx.tenant_slug, error)
            return CapabilityError("INVALID_ARGUMENT", "The statement could not be run.")
        return CapabilityError("INVALID_ARGUMENT", message[:1].upper() + message[1:] if message else "The statement failed.")
