"""Writing the audit log without slowing the calls it records.

The broker records a row for every call that reaches it, as soon as its outcome is
known. Rows go to a queue that one background thread drains into bulk inserts, so a
capability call never waits for the database. `flush()` waits until everything queued
so far is written; the broker calls it before a run's record is finished, so a run that
is over always has all its rows.
"""

import logging
import queue
import threading

from django.db import IntegrityError, close_old_connections

logger = logging.getLogger(__name__)

# A target longer than this is cut: the audit log names what a call was about, it does
# not keep payloads.
TARGET_MAX = 300


class AuditWriter:
    BATCH = 500

    def __init__(self):
        self.queue = queue.SimpleQueue()
        self.thread = None
        self.lock = threading.Lock()

    def record(self, **fields):
        from tenants.models import AuditLog

        fields["target"] = str(fields.get("target") or "")[:TARGET_MAX]
        fields["message"] = str(fields.get("message") or "")[:300]
        self._ensure_thread()
        self.queue.put(AuditLog(**fields))

    def flush(self, timeout=10):
        self._ensure_thread()
        done = threading.Event()
        self.queue.put(done)
        return done.wait(timeout)

    def _ensure_thread(self):
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self.thread.start()

    def _run(self):
        from tenants.models import AuditLog

        while True:
            item = self.queue.get()
            rows, waiters = [], []
            while True:
                (waiters if isinstance(item, threading.Event) else rows).append(item)
                if len(rows) >= self.BATCH:
                    break
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            if rows:
                self._write(rows)
            for waiter in waiters:
                waiter.set()

    def _write(self, rows):
        from tenants.models import AuditLog

        for attempt in range(5):
            try:
                close_old_connections()
                AuditLog.objects.bulk_create(rows)
                return
            except IntegrityError:
                # A tenant, run or user was deleted while its calls were in the queue:
                # keep the rows, without the links that no longer resolve (tenant_slug
                # still names the tenant).
                for row in rows:
                    self._write_one(row)
                return
            except Exception:
                # The database may be restarting; the rows are kept and retried.
                logger.exception("audit: writing %d rows failed (attempt %d)", len(rows), attempt + 1)
                threading.Event().wait(0.2 * 2**attempt)
        logger.error("audit: %d rows could not be written", len(rows))

    def _write_one(self, row):
        from tenants.models import AuditLog

        try:
            AuditLog.objects.bulk_create([row])
        except IntegrityError:
            row.tenant_id = row.run_id = row.user_id = None
            try:
                AuditLog.objects.bulk_create([row])
            except Exception:
                logger.exception("audit: a row could not be written")


writer = AuditWriter()
record = writer.record
flush = writer.flush
