"""One run as its broker connection holds it: the run, claimed once with its one-time
token; the tenant's context (policy, storage root, hosts, sealed secrets), re-read at
most every POLICY_TTL; the run's counters; and the one place its audit rows are made.

Nothing here comes from a frame: the run, its tenant and its policy are the database's.
"""

import asyncio
import hashlib
import time
from dataclasses import replace
from pathlib import Path

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from capabilities.base import CallContext
from capabilities.network.sealed import placeholders_in, run_env, run_seals
from isolates.floods import RefusalLog
from tenants import audit
from tenants.models import BlockRun, Tenant
from tenants.policy import effective_policy

# The platform's database being unreachable (restarting), as opposed to a bug.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
# How long a tenant's policy and state are reused between calls of one run. A
# suspension or a changed limit reaches running blocks within this time.
POLICY_TTL = 1.0


def on_pool_thread(function):
    """`function` (database work) run on a thread of the pool, which keeps its database
    connection. Django gives each ASGI request a thread of its own for thread-sensitive
    work, and with it a new connection: the application paths (the API, endpoints, runs
    and their broker) never use it."""
    return database_sync_to_async(function, thread_sensitive=False)


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


# Runs whose isolates connect to this process's broker, prepared by the run service
# (which has just read the tenant), by token hash. Their rows are created claimed
# (token_used): such a run is claimed here, in memory, and nowhere else.
_prepared = {}


def prepare_connection(run, tenant, policy, run_secrets, read_at=None):
    """Keep what the broker needs at hello, so it need not read it again. `read_at`
    (monotonic): when the tenant was read, for the policy's age."""
    _prepared[run.token_hash] = (run, tenant, policy, run_secrets, time.monotonic() if read_at is None else read_at)
    if len(_prepared) > 10000:
        # Runs whose isolate never said hello (it died first): forget the oldest.
        for key in sorted(_prepared, key=lambda k: _prepared[k][4])[:1000]:
            _prepared.pop(key, None)


def forget_prepared(run):
    """The run is over: what was kept for its hello goes (an isolate that died before it
    said hello would otherwise leave its run's code and secrets here)."""
    _prepared.pop(run.token_hash, None)


class RunSession:
    def __init__(self):
        self.run = None
        self.ctx = None
        self.env = {}
        self.tenant_active = True
        self.policy_loaded = 0.0
        self.prepared = None
        self.started_ms = time.time() * 1000  # the run's start, epoch ms (set by claim)
        # The run's placeholders of its sealed secrets, made once (at hello) and kept.
        self.placeholders = {}
        self.sealed_noted = set()
        self.refusals = RefusalLog()
        self.calls = 0  # every call the block made, refused ones included
        self.bytes_in = 0
        self.bytes_out = 0
        self.finished = False
        # A run claimed in memory: its row says `running` (and when it started) once
        # this write is done; every later write of the run makes it first if it is not.
        self.started_write = None
        self.started_written = True

    async def claim(self, token, on_ended=None):
        """The run this token was made for, if it is unused (the token is used up), and
        its context; None for any other token.

        A run prepared in this process is claimed in memory, with no query: its start is
        written to its row off the start's path, and `on_ended()` is called should that
        write find the run ended meanwhile (stopped before its block started)."""
        run = self._claim_prepared(token, on_ended)
        if run is None:
            run = await database_sync_to_async(self._claim)(token)
        if run is not None:
            self.run = run
            try:
                await self.refresh(force=True)
            except BaseException:
                self.run = None
                raise
            self.refusals.bind(tenant_id=self.ctx.tenant_id, tenant_slug=self.ctx.tenant_slug, run_id=run.id,
                               user_id=run.user_id)
        return run

    def _claim_prepared(self, token, on_ended):
        if not isinstance(token, str):
            return None
        prepared = _prepared.pop(token_hash(token), None)  # one claim: the entry is gone
        if prepared is None:
            return None
        run = prepared[0]
        self.prepared = prepared
        run.status, run.started = "running", timezone.now()
        self.started_ms = run.started.timestamp() * 1000
        self.started_written = False

        async def write():
            try:
                if not await database_sync_to_async(self._write_started)(run) and on_ended is not None:
                    await on_ended()
            except DATABASE_UNAVAILABLE:
                pass  # written by the run's next write (save, finish), which retries

        self.started_write = asyncio.ensure_future(write())
        return run

    def _write_started(self, run=None):
        """The in-memory claim, in the run's row: False if the run has ended meanwhile."""
        run = run or self.run
        if self.started_written or run is None:
            return True
        started = BlockRun.objects.filter(pk=run.id, status="queued").update(status="running", started=run.started)
        self.started_written = True
        return started == 1

    def _claim(self, token):
        digest = token_hash(token)
        started = timezone.now()
        claimed = BlockRun.objects.filter(token_hash=digest, token_used=False, status__in=("queued", "running")).update(
            token_used=True, status="running", started=started)
        self.started_ms = started.timestamp() * 1000
        if claimed != 1:
            return None
        self.prepared = _prepared.pop(digest, None)
        if self.prepared is not None:
            return self.prepared[0]
        return BlockRun.objects.select_related("tenant").get(token_hash=digest)

    async def refresh(self, force=False):
        """Re-read the tenant's context when it is older than POLICY_TTL."""
        if not force and time.monotonic() - self.policy_loaded < POLICY_TTL:
            return
        if self.prepared is not None:
            _, tenant, policy, run_secrets, read_at = self.prepared
            self.prepared = None
        else:
            (tenant, policy, run_secrets), read_at = await read_tenant_shared(self.run.tenant_id)
        self.tenant_active = tenant.is_active
        # process.env: plain secrets' values, sealed ones' placeholders (sent at hello).
        self.env = run_env(run_secrets, self.placeholders)
        self.ctx = CallContext(
            tenant_id=tenant.pk, tenant_slug=tenant.slug, run_id=self.run.id, policy=policy,
            storage_root=Path(settings.TENANT_STORAGE_ROOT) / tenant.slug,
            allowed_hosts=[h.strip().lower() for h in tenant.network_allowed_hosts.split() if h.strip()],
            webhook_secret=tenant.webhook_secret,
            sealed=run_seals(run_secrets, self.placeholders),
        )
        # The age of the data, not of this copy: no call acts on a policy read more than
        # POLICY_TTL ago, however it was shared.
        self.policy_loaded = read_at

    def ctx_with_deadline(self, deadline):
        return replace(self.ctx, deadline=deadline)

    def record(self, **row):
        """An audit row of this run (or of a connection that never became one)."""
        audit.record(
            tenant_id=self.ctx.tenant_id if self.ctx else None, tenant_slug=self.ctx.tenant_slug if self.ctx else "",
            run_id=self.run.id if self.run else None, user_id=self.run.user_id if self.run else None, **row,
        )

    def note_placeholders(self, where, target, value):
        """An audit row when the block passes a sealed secret's placeholder somewhere other
        than a network request (a file, the database, an email, the console): there it
        stays a placeholder, which is worth nothing outside this run. Once per secret
        and operation per run, so that a loop cannot flood the log."""
        for name in placeholders_in(self.ctx.sealed, value):
            if (name, where) in self.sealed_noted or len(self.sealed_noted) >= 100:
                continue
            self.sealed_noted.add((name, where))
            self.record(
                capability="broker", operation=f"{where}.sealed", target=str(target)[:200],
                outcome="denied", error_code="PERMISSION_DENIED",
                message=f"The block passed the placeholder of the sealed secret {name} to {where}; it stays a placeholder there "
                        "(the value is sent only by network requests to the secret's hosts).",
            )

    @database_sync_to_async
    def save(self, console):
        """The run's console and counters, into its record."""
        self._write_started()
        BlockRun.objects.filter(pk=self.run.id).update(
            **console.record_fields(), calls=self.calls, bytes_in=self.bytes_in, bytes_out=self.bytes_out,
        )

    @database_sync_to_async
    def finish(self, status, result=None, error_code="", error="", error_detail=None):
        """The run's outcome, once: a run already ended (stopped, timed out) keeps its own."""
        self._write_started()
        audit.flush()
        BlockRun.objects.filter(pk=self.run.id, status="running").update(
            status=status, result=result, error_code=error_code, error=error, error_detail=error_detail,
            finished=timezone.now())


def read_tenant(tenant_id):
    tenant = Tenant.objects.select_related("profile").prefetch_related("overrides").get(pk=tenant_id)
    return tenant, effective_policy(tenant), [s.for_run() for s in tenant.secrets.all()]


# Tenant reads in progress or recent, per event loop and tenant: (started, future). The
# runs of one tenant on one server share one read per POLICY_TTL, instead of each making
# its own (100 runs in flight re-read their policy 100 times a second otherwise, the
# largest share of the server's database work under load).
_tenant_reads = {}


async def read_tenant_shared(tenant_id):
    """The tenant, its effective policy and secrets, and when they were read (monotonic):
    a read started less than POLICY_TTL ago is shared, else a new one is made."""
    now = time.monotonic()
    loop = asyncio.get_running_loop()
    key = (id(loop), tenant_id)
    entry = _tenant_reads.get(key)
    if (entry is None or entry[2] is not loop or now - entry[0] >= POLICY_TTL
            or (entry[1].done() and entry[1].exception() is not None)):
        if len(_tenant_reads) > 10000:
            for stale in [k for k, (started, _, _) in _tenant_reads.items() if now - started >= POLICY_TTL]:
                del _tenant_reads[stale]
        read = on_pool_thread(read_tenant)(tenant_id)
        entry = _tenant_reads[key] = (now, asyncio.ensure_future(read), loop)
    return await asyncio.shield(entry[1]), entry[0]
