"""Writing the audit log without slowing the calls it records.

The broker records a row for every call that reaches it, as soon as its outcome is
known. Rows go to a queue that one background thread drains into bulk inserts, so a
capability call never waits for the database. `flush()` waits until everything queued
so far is written; the broker calls it before a run's record is finished, so a run that
is over always has all its rows.

Nothing is dropped when the database is unavailable (restarting): the writer keeps the
rows and retries, backing off up to RETRY_MAX_SECONDS. Past SYMPOSIUM_AUDIT_BACKLOG rows
held in memory, the oldest go to a file in SYMPOSIUM_AUDIT_SPILL_DIR (one JSON object per
line) and are written to the database once it is back, by this process or, if it died
first, by the next process on this machine that writes audit rows.

The writer keeps its database connection, and writes each batch in one transaction
with one prepared INSERT run for every row (no model instances: the caller queues a
dict, and the writer's thread makes its texts storable and its values ready for the
driver; the ORM's own machinery cost more than the insert). When a row arrives at an
idle writer, it lingers LINGER_SECONDS (20 ms) before it writes, then takes every row
that came meanwhile at once: a stream of calls becomes one insert every 20 ms instead of
one per few rows (a transaction costs about as much CPU as eight rows); a flush() ends
the linger at once.

The one window where rows can be lost is a process killed (SIGKILL, power loss) while
rows sit in its queue: the rows of the calls answered in the last LINGER_SECONDS plus
the time of one insert (milliseconds; a fraction of a second on a loaded machine), or
more while the database is down (the rows then wait in memory, up to the backlog).
tests/test_faults.py kills a server under a block making calls and counts the rows. A
process that exits normally flushes its queue on the way out (atexit).

Every text of a row is made storable before it is queued (storable(): lone surrogates and
NUL characters, which neither PostgreSQL nor SQLite's driver accepts, become U+FFFD, and
each field is cut to its column's length), so what a block sends can never make a row
unwritable. Should the database still refuse a row for what it holds (not for being
unavailable), the batch is written row by row; a refused row is written once more in a
stricter form (ASCII only) and, if refused again, logged and dropped. A bad row never
blocks the others and is never retried forever.
"""

import atexit
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, close_old_connections, connections, transaction
from django.utils import timezone

from tenants.models import AuditLog

logger = logging.getLogger(__name__)

# A target longer than this is cut: the audit log names what a call was about, it does
# not keep payloads.
TARGET_MAX = 300
# How long an idle writer waits for more rows after the first, to write them together.
LINGER_SECONDS = 0.02
# Backoff between attempts while the database is unavailable.
RETRY_MAX_SECONDS = 5.0
# How long a process that is exiting waits for its rows to be written.
EXIT_FLUSH_SECONDS = 5.0
SPILL_PREFIX = "audit-backlog-"
# What no database text column can hold: UTF-16 surrogates on their own (not text in any
# encoding a driver writes) and NUL (PostgreSQL refuses it in text).
UNSTORABLE = re.compile("[\ud800-\udfff\x00]")
# The errors that mean the database is unavailable (worth retrying the same rows), as
# opposed to refusing what a row holds.
UNAVAILABLE = (OperationalError, InterfaceError)


def storable_value(value):
    """A JSON value (a run's result, say) with every string in it made storable."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [storable_value(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): storable_value(item) for key, item in value.items()}
    return value


def storable(value, limit=None):
    """`value` as text any database column takes: lone surrogates and NUL become U+FFFD,
    and at most `limit` characters are kept."""
    text = value if isinstance(value, str) else str(value if value is not None else "")
    text = UNSTORABLE.sub("\ufffd", text)
    return text[:limit] if limit is not None else text


def _text_limits():
    return {
        field.attname: field.max_length
        for field in AuditLog._meta.concrete_fields
        if field.get_internal_type() in ("CharField", "TextField")
    }


class AuditWriter:
    BATCH = 500

    def __init__(self):
        self.queue = queue.SimpleQueue()
        self.hurry = threading.Event()  # set by flush(): a lingering writer writes now
        self.thread = None
        self.lock = threading.Lock()
        self.failing = False  # the last write failed: the database is unavailable
        self.spilled = 0  # rows in this process's spill file
        self.adopted = False
        self.text_limits = None  # column name -> max length, read from the model once
        self.columns = None  # the INSERT and how each column's value is prepared, made once
        self.attnames = None

    def record(self, **fields):
        """Queue a row: AuditLog's fields by attname (tenant_id, run_id, ...). The caller
        pays for a dict and a queue put; the row is made storable and written by the
        writer's thread."""
        if self.attnames is None:
            self.attnames = frozenset(field.attname for field in AuditLog._meta.concrete_fields)
        if not fields.keys() <= self.attnames:
            raise TypeError(f"audit rows have no field {', '.join(sorted(fields.keys() - self.attnames))}")
        fields.setdefault("time", timezone.now())
        self._ensure_thread()
        self.queue.put(fields)

    def flush(self, timeout=10):
        """Wait until every row queued so far is written. Returns False at once while the
        database is unavailable (the rows are kept, and written once it is back)."""
        if self.failing:
            return False
        self._ensure_thread()
        done = threading.Event()
        self.queue.put(done)
        self.hurry.set()
        return done.wait(timeout)

    def _ensure_thread(self):
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self.thread.start()

    def _run(self):
        pending = []  # rows taken from the queue and not yet written, oldest first
        waiters = []
        delay = 0.2
        while True:
            if not pending and not waiters:
                self._take(self.queue.get(), pending, waiters)
                self._linger(pending, waiters)
            self._drain(pending, waiters)
            if pending and not self._write(pending[: self.BATCH]):
                self.failing = True
                for waiter in waiters:
                    waiter.set()  # nobody waits on a database that is down
                waiters.clear()
                self._spill_excess(pending)
                threading.Event().wait(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            del pending[: self.BATCH]
            if pending:
                continue
            if self.failing or not self.adopted:
                self.failing = False
                delay = 0.2
                self._replay_spilled()
            for waiter in waiters:
                waiter.set()
            waiters.clear()

    def _linger(self, pending, waiters):
        """Wait a few milliseconds for more rows, so that a burst becomes one insert; the
        rows that came meanwhile are taken all at once afterwards (_drain), not woken for
        one by one. A flush ends the wait."""
        if not waiters:
            self.hurry.wait(LINGER_SECONDS)
        self.hurry.clear()

    def _take(self, item, pending, waiters):
        if isinstance(item, threading.Event):
            waiters.append(item)
        else:
            pending.append(self._storable(item))

    def _storable(self, fields):
        """The row with every text made storable and cut to its column's length."""
        if self.text_limits is None:
            self.text_limits = _text_limits()
        fields["target"] = fields.get("target") or ""
        fields["message"] = fields.get("message") or ""
        for name, limit in self.text_limits.items():
            if name in fields:
                fields[name] = storable(fields[name], limit)
        return fields

    def _drain(self, pending, waiters):
        # While the database is down, take everything: what is over the backlog limit
        # goes to disk instead of piling up in the queue.
        while self.failing or len(pending) < self.BATCH * 4:
            try:
                self._take(self.queue.get_nowait(), pending, waiters)
            except queue.Empty:
                return

    def _write(self, rows):
        """Write the rows (dicts of fields) as one INSERT statement run for each, in one
        transaction; False if the database is unavailable (they are kept)."""
        try:
            close_old_connections()
            database = connections[DEFAULT_DB_ALIAS]
            if self.columns is None:
                self.columns = _columns(database)
            sql, columns = self.columns
            values = [[prepare(row[name], database) if name in row else default for name, prepare, default in columns]
                      for row in rows]
            with transaction.atomic(), database.cursor() as cursor:
                cursor.executemany(sql, values)
            return True
        except UNAVAILABLE as e:
            if not self.failing:
                logger.error("audit: writing %d rows failed, keeping them to retry: %s", len(rows), str(e).strip()[:200])
            return False
        except Exception:
            # The database refused what a row holds (a tenant, run or user deleted while
            # its calls were queued; a value it cannot store): each row on its own, so
            # one bad row never holds back the others.
            for row in rows:
                if not self._write_one(row):
                    return False
            return True

    def _write_one(self, row):
        """Write one row, in a plainer form each time it is refused for what it holds.
        False only if the database is unavailable (the caller retries the batch)."""
        row = AuditLog(**row)
        for attempt in (_as_is, _without_links, _ascii_only):
            attempt(row)
            try:
                AuditLog.objects.bulk_create([row])
                return True
            except UNAVAILABLE:
                return False
            except Exception as e:
                refusal = str(e).strip()[:200]
        # Kept out of the log's own text: what the row held is what could not be stored.
        logger.error("audit: a %s.%s row of tenant %s was refused and dropped: %s",
                     _ascii(row.capability), _ascii(row.operation), _ascii(row.tenant_slug), refusal)
        return True

    # -- rows past the backlog, on disk --------------------------------------------

    def _spill_path(self):
        # Named by host and pid: several containers may share the folder, and pids are
        # only unique within one of them.
        return settings.SYMPOSIUM_AUDIT_SPILL_DIR / f"{SPILL_PREFIX}{socket.gethostname()}-{os.getpid()}.jsonl"

    def _spill_excess(self, pending):
        """Keep at most settings.SYMPOSIUM_AUDIT_BACKLOG rows in memory: the oldest others go to disk."""
        excess = len(pending) - settings.SYMPOSIUM_AUDIT_BACKLOG
        if excess <= 0:
            return
        rows, pending[:excess] = pending[:excess], []
        try:
            path = self._spill_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                for row in rows:
                    f.write(json.dumps(row_fields(row)) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.spilled += len(rows)
        except OSError:
            logger.exception("audit: %d rows could not be kept on disk either; they are lost", len(rows))

    def _replay_spilled(self):
        """Write rows kept on disk: this process's, and those of processes of this
        machine that died with rows on disk."""
        self.adopted = True
        folder = settings.SYMPOSIUM_AUDIT_SPILL_DIR
        try:
            candidates = sorted(folder.glob(f"{SPILL_PREFIX}*.jsonl"))
        except OSError:
            return
        for path in candidates:
            host, _, pid = path.stem[len(SPILL_PREFIX):].rpartition("-")
            if host != socket.gethostname() or not pid.isdigit():
                continue  # another machine's: its own processes replay it
            if pid != str(os.getpid()) and Path(f"/proc/{pid}").exists():
                continue  # another live process's backlog: it replays it itself
            claimed = path.with_suffix(f".replaying-{os.getpid()}")
            try:
                os.rename(path, claimed)  # whoever renames it first replays it
            except OSError:
                continue
            try:
                with open(claimed) as f:
                    rows = [self._storable(parse_fields(json.loads(line))) for line in f if line.strip()]
                for start in range(0, len(rows), self.BATCH):
                    if not self._write(rows[start:start + self.BATCH]):
                        # The database went away again: put the rest back for later.
                        with open(self._spill_path(), "a") as f:
                            for row in rows[start:]:
                                f.write(json.dumps(row_fields(row)) + "\n")
                        self.failing = True
                        break
                os.unlink(claimed)
            except (OSError, ValueError):
                logger.exception("audit: replaying %s failed", claimed.name)
        self.spilled = 0

    def flush_at_exit(self):
        if self.thread is not None and self.thread.is_alive():
            if not self.flush(EXIT_FLUSH_SECONDS) and self.failing:
                logger.error("audit: exiting while the database is unavailable; unwritten rows are lost")


def _as_is(row):
    row.pk = None


def _without_links(row):
    # A tenant, run or user deleted while its calls were in the queue: keep the row
    # without the links that no longer resolve (tenant_slug still names the tenant).
    row.pk = None
    row.tenant_id = row.run_id = row.user_id = None


def _ascii(text):
    return str(text or "").encode("ascii", "backslashreplace").decode("ascii")


def _ascii_only(row):
    _without_links(row)
    for name, limit in writer.text_limits.items() if writer.text_limits else ():
        setattr(row, name, _ascii(getattr(row, name))[:limit])


def row_fields(row):
    """A queued row as JSON can hold it (for the spill file)."""
    return {name: value.isoformat() if isinstance(value, datetime) else value for name, value in row.items()}


# Columns whose values the driver takes as record() is given them (text made storable,
# numbers, ids): the ORM's preparation of these is the identity, and costs more than the
# insert itself. Any other column (the time) is prepared as the ORM prepares it.
AS_GIVEN = {"CharField", "TextField", "FloatField", "BigIntegerField", "IntegerField", "ForeignKey"}


def _as_given(value, _database):
    return value if value is None or type(value) in (str, int, float) else str(value)


def _columns(database):
    """The audit table's INSERT, and for each column its attname, how a value is made
    ready for the database and the column's default. The one default made per row, the
    time, is never needed: record() stamps every row with it."""
    fields = [field for field in AuditLog._meta.concrete_fields if not field.primary_key]
    names = ", ".join(database.ops.quote_name(field.column) for field in fields)
    sql = f"INSERT INTO {database.ops.quote_name(AuditLog._meta.db_table)} ({names}) VALUES ({', '.join(['%s'] * len(fields))})"
    columns = []
    for field in fields:
        prepare = _as_given if field.get_internal_type() in AS_GIVEN else field.get_db_prep_save
        constant = not (field.has_default() and callable(field.default)) and (field.has_default() or not field.null)
        columns.append((field.attname, prepare, field.get_db_prep_save(field.get_default(), database) if constant else None))
    return sql, columns


def parse_fields(fields):
    if isinstance(fields.get("time"), str):
        fields["time"] = datetime.fromisoformat(fields["time"])
    return fields


writer = AuditWriter()
record = writer.record
flush = writer.flush
atexit.register(writer.flush_at_exit)
