"""The embedded database: one SQLite file per tenant, in its own storage.

The file is <storage root>/.symposium/database.sqlite3; the files capability hides the
.symposium folder from blocks. Each call opens the file, runs its statements in one
transaction and closes it, so no state survives between calls and any worker process can
take any call.

# SECURITY: the authorizer below is what keeps a statement inside the tenant's file.
# It refuses ATTACH and DETACH (another database file: VACUUM INTO attaches one too),
# load_extension and fts3_tokenizer (native code), and every PRAGMA not on the lists
# below (database_list names the file's server path; others change the engine:
# writable_schema, journal_mode, mmap_size, temp_store_directory, max_page_count...).
# SQLITE_LIMIT_ATTACHED is 0 as well, and extension loading is never enabled.
"""

import json
import logging
import math
import os
import sqlite3
import stat
import time

from capabilities.base import CapabilityError
from capabilities.files import quota
from capabilities.database.limits import MAX_PARAMS, MAX_SQL_LENGTH
from capabilities.database.values import ResultCollector, column_keys

logger = logging.getLogger(__name__)

PLATFORM_FOLDER = ".symposium"
DATABASE_NAME = "database.sqlite3"
# SQLite's own files beside the database; none of them may be a link or a device.
SIDE_FILES = ("", "-journal", "-wal", "-shm")

# PRAGMAs a block may read, with or without an argument (a table or index name). They
# describe the tenant's own schema and nothing else.
INTROSPECTION_PRAGMAS = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
}  # fmt: skip
# PRAGMAs a block may read but not set.
READ_ONLY_PRAGMAS = {
    "page_count", "page_size", "freelist_count", "data_version", "schema_version", "encoding",
    "compile_options", "collation_list", "function_list", "module_list", "pragma_list",
}  # fmt: skip
# PRAGMAs a block may also set: they change this connection's behaviour or the file's
# own header fields, nothing outside the tenant's database.
SETTABLE_PRAGMAS = {"user_version", "application_id", "foreign_keys", "defer_foreign_keys", "recursive_triggers", "optimize"}

# Functions that reach native code.
REFUSED_FUNCTIONS = {"load_extension", "fts3_tokenizer"}

# How often (in SQLite virtual machine instructions) the progress handler looks at the
# clock: often enough to stop within a millisecond or so, rare enough to cost nothing.
PROGRESS_INTERVAL = 2000
# Said when the call's deadline passed before a statement began (it did not run).
NOT_STARTED = "The call's time ran out before the statement could run."


class Authorizer:
    """sqlite3's authorizer callback. `tenant_sql` is True while a block's statement is
    being prepared or run; the platform's own BEGIN and COMMIT pass while it is False."""

    def __init__(self):
        self.tenant_sql = False
        self.refusal = None

    def deny(self, message):
        self.refusal = message
        return sqlite3.SQLITE_DENY

    def __call__(self, action, arg1, arg2, database, source):
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return self.deny("ATTACH and DETACH are not available: a tenant has one database, its own.")
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in REFUSED_FUNCTIONS:
            return self.deny(f"The function {arg2}() is not available.")
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in INTROSPECTION_PRAGMAS or name in SETTABLE_PRAGMAS:
                return sqlite3.SQLITE_OK
            if name in READ_ONLY_PRAGMAS and arg2 is None:
                return sqlite3.SQLITE_OK
            if not self.tenant_sql:
                return sqlite3.SQLITE_OK
            return self.deny(f"PRAGMA {name} is not available to blocks.")
        if self.tenant_sql and action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
            return self.deny("Transactions are managed by the platform; use database.transaction().")
        return sqlite3.SQLITE_OK


def _open_folder(ctx):
    """The tenant's .symposium folder, created if needed, refusing a link in its place.

    The storage root is the platform's own path. Inside it, blocks never reach
    .symposium through the file API; a process of the tenant could still try to plant a
    symbolic link there, so neither the folder nor SQLite's files may be one.
    """
    root = ctx.tenant_path_root()
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(PLATFORM_FOLDER, 0o700, dir_fd=root_fd)
        except FileExistsError:
            pass
        try:
            folder_fd = os.open(PLATFORM_FOLDER, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
        except OSError:
            logger.warning("tenant %s: %s is not a plain folder", ctx.tenant_slug, PLATFORM_FOLDER)
            raise CapabilityError("UPSTREAM_ERROR", "The tenant's database is unavailable: its folder has been replaced.") from None
    finally:
        os.close(root_fd)
    try:
        for suffix in SIDE_FILES:
            try:
                info = os.lstat(DATABASE_NAME + suffix, dir_fd=folder_fd)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                logger.warning("tenant %s: %s%s is not a regular file", ctx.tenant_slug, DATABASE_NAME, suffix)
                raise CapabilityError("UPSTREAM_ERROR", "The tenant's database is unavailable: its files have been replaced.")
    finally:
        os.close(folder_fd)
    return root / PLATFORM_FOLDER / DATABASE_NAME


def database_path(ctx):
    """Where the tenant's database file is (for tests and the platform's tools)."""
    return ctx.storage_root / PLATFORM_FOLDER / DATABASE_NAME


class Session:
    """One call's connection: opened, configured, locked down, closed."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.timeout = ctx.policy.database_statement_timeout_ms / 1000.0
        self.authorizer = Authorizer()
        self.statement_deadline = None
        self.call_limited = False
        path = _open_folder(ctx)
        self.path = path
        self.database_bytes = _bytes_of(path)
        try:
            # isolation_level=None: no implicit transactions; BEGIN and COMMIT are ours.
            # The busy timeout (another call of the tenant writing) counts against the
            # statement timeout.
            self.conn = sqlite3.connect(str(path), timeout=max(ctx.timeout(self.timeout), 0.001), isolation_level=None)
        except sqlite3.Error:
            logger.exception("tenant %s: cannot open the SQLite database", ctx.tenant_slug)
            raise CapabilityError("UPSTREAM_ERROR", "The tenant's database could not be opened.") from None
        try:
            self._configure()
        except BaseException:
            self.conn.close()
            raise

    def _configure(self):
        conn = self.conn
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, MAX_PARAMS)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_LENGTH * 4)
        # No single value (string or blob) larger than a whole reply may be: a
        # zeroblob(1e9) would otherwise take a gigabyte of the worker's memory.
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, int(min(self.ctx.policy.database_max_result_bytes, 1_000_000_000)))
        try:
            # WAL lets one call read while another writes. Set once, kept in the file.
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            # Busy: another connection is switching the mode right now; it will be set.
            pass
        conn.execute("PRAGMA foreign_keys=ON")
        # Views and triggers may call only functions without side effects.
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        # One quota for the tenant's files and its database (capabilities.files.quota):
        # the database can grow into what the files leave free and no further, and its
        # TEMP tables and indexes (a database of their own, in a file outside the storage)
        # into what is free now. Together they may take at most what is free: checked
        # after each statement (_check_growth).
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        limit = self.ctx.policy.storage_quota
        usage = quota.files_usage(self.ctx)
        others = max(usage - self.database_bytes, 0)
        self.free_pages = max(limit - usage, 0) // page_size
        self.start_pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={max(int((limit - others) // page_size), 1)}")
        conn.execute(f"PRAGMA temp.max_page_count={max(self.free_pages, 1)}")
        conn.set_authorizer(self.authorizer)
        conn.set_progress_handler(self._progress, PROGRESS_INTERVAL)

    def _progress(self):
        # A non-zero return interrupts the statement ("interrupted").
        return 1 if self.statement_deadline is not None and time.monotonic() > self.statement_deadline else 0

    def close(self):
        try:
            if self.conn.in_transaction:
                self.authorizer.tenant_sql = False
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        finally:
            self.conn.close()

    def run(self, statements, steps=False):
        """Run the (statement, params) pairs in one transaction; the list of results.
        With `steps`, errors name the step that failed."""
        collector = ResultCollector(self.ctx.policy)
        results = []
        self.conn.execute("BEGIN")
        for index, (statement, params) in enumerate(statements):
            try:
                results.append(self._run_one(statement, params, collector))
            except CapabilityError as error:
                if not steps:
                    raise
                raise CapabilityError(error.code, f"Step {index + 1}: {error.message}") from None
        self.authorizer.tenant_sql = False
        # COMMIT gets at least half a second, even when the call's time is nearly out:
        # its statements have run, and interrupting it would throw their work away.
        self.statement_deadline = time.monotonic() + max(self.ctx.timeout(math.inf), 0.5)
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise self._error(error) from None
        return results

    def _run_one(self, statement, params, collector):
        self.ctx.check_deadline(NOT_STARTED)
        seconds = self.ctx.timeout(self.timeout)
        self.call_limited = seconds < self.timeout
        self.statement_deadline = time.monotonic() + seconds
        self.authorizer.refusal = None
        self.authorizer.tenant_sql = True
        try:
            cursor = self.conn.execute(statement.driver_text(), [_sqlite_param(p) for p in params])
            keys = column_keys([d[0] for d in cursor.description]) if cursor.description else []
            rows = []
            while True:
                batch = cursor.fetchmany(collector.batch_size())
                if not batch:
                    break
                rows.extend(collector.add_rows(keys, batch))
        except (sqlite3.Error, sqlite3.Warning) as error:
            raise self._error(error) from None
        finally:
            self.authorizer.tenant_sql = False
        self._check_growth()
        result = {"rows": rows, "rowCount": len(rows) if cursor.description else max(cursor.rowcount, 0), "columns": keys}
        if _inserts(statement) and cursor.rowcount > 0 and cursor.lastrowid:
            result["lastInsertId"] = cursor.lastrowid
        return result

    def _check_growth(self):
        """The database's new pages and its TEMP pages together must fit what was free
        when the call began; past it the statement fails and the call is rolled back."""
        grown = self.conn.execute("PRAGMA page_count").fetchone()[0] - self.start_pages
        temp = self.conn.execute("PRAGMA temp.page_count").fetchone()[0]
        if max(grown, 0) + temp > self.free_pages:
            raise CapabilityError(
                "QUOTA_EXCEEDED", "The database and its temporary tables have reached this tenant's storage quota."
            )

    def _error(self, error):
        message = str(error)
        lowered = message.lower()
        if self.authorizer.refusal and ("not authorized" in lowered or "prohibited" in lowered or "denied" in lowered):
            return CapabilityError("PERMISSION_DENIED", self.authorizer.refusal)
        if lowered == "interrupted":
            if self.call_limited:
                return CapabilityError("TIMEOUT", "The call's time ran out while the statement was running.")
            return CapabilityError(
                "TIMEOUT",
                f"The statement ran longer than {self.ctx.policy.database_statement_timeout_ms} ms, "
                "this tenant's statement timeout.",
            )
        if "database is locked" in lowered or "database table is locked" in lowered:
            return CapabilityError("TIMEOUT", "The database stayed busy (another call of this tenant was writing) past the timeout.")
        if "database or disk is full" in lowered:
            return CapabilityError("QUOTA_EXCEEDED", "The database has reached this tenant's storage quota.")
        if "one statement at a time" in lowered:
            return CapabilityError("INVALID_ARGUMENT", "A query runs one statement, and this SQL has more than one.")
        if isinstance(error, sqlite3.IntegrityError):
            return CapabilityError("INVALID_ARGUMENT", f"Constraint failed: {_scrub(message, self.ctx)}")
        if any(word in lowered for word in ("disk i/o error", "malformed", "unable to open", "readonly database", "not a database")):
            logger.error("tenant %s: SQLite error: %s", self.ctx.tenant_slug, message)
            return CapabilityError("UPSTREAM_ERROR", "The tenant's database could not be read or written.")
        return CapabilityError("INVALID_ARGUMENT", _scrub(_syntax(message), self.ctx))


def _syntax(message):
    # SQLite says `near "FROM": syntax error`; say it the way block authors read it.
    if message.startswith("near ") and message.endswith(": syntax error"):
        near = message[len("near ") : -len(": syntax error")].strip('"')
        return f"syntax error near '{near}'"
    return message


def _scrub(message, ctx):
    return message.replace(str(ctx.storage_root), "").replace(PLATFORM_FOLDER, "")[:500]


def _inserts(statement):
    words = [t.value for t in statement.tokens if t.kind == "word"]
    return bool(words) and (words[0] in ("insert", "replace") or words[0] == "with" and "insert" in words)


def _sqlite_param(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _bytes_of(path):
    """Bytes of the database file and SQLite's files beside it."""
    total = 0
    for suffix in SIDE_FILES:
        try:
            total += os.stat(f"{path}{suffix}", follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
    return total


def run(ctx, statements, steps=False):
    session = Session(ctx)
    try:
        return session.run(statements, steps)
    finally:
        session.close()
        # The files' cached usage follows the database's growth (its file is in the
        # tenant's storage), so the next write of a file sees it at once.
        grown = _bytes_of(session.path) - session.database_bytes
        if grown:
            quota.adjust_cached_usage(ctx, grown)
