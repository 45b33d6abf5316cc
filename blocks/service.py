"""What the API, the HTTP endpoints, schedules, the admin and `runblock --block` do
with saved blocks: save a version, deploy one, start a run of one, describe a run.

Everything here that touches the database is synchronous; the async callers (API views,
endpoint views, the scheduler) wrap it with `database_sync_to_async`.
"""

import asyncio
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from blocks.models import LANGUAGES, MAX_CODE_BYTES, Block, BlockVersion, code_sha256, slug_validator
from isolates.runevents import control_group, run_group
from isolates.errors import run_error
from isolates.runs import service_for_port
from tenants import audit
from tenants.models import BlockRun

LANGUAGE_NAMES = {value for value, _ in LANGUAGES}


class BlockError(Exception):
    """A request about a block that cannot be done; `code` is one of the API's error
    codes (INVALID_ARGUMENT, NOT_FOUND, CONFLICT, ...) and `message` says why."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def check_code(code):
    if not isinstance(code, str) or not code.strip():
        raise BlockError("INVALID_ARGUMENT", "The block has no code.")
    size = len(code.encode(errors="replace"))
    if size > MAX_CODE_BYTES:
        raise BlockError("INVALID_ARGUMENT", f"The code is {size} bytes; a block version holds at most {MAX_CODE_BYTES}.")


def save_block(tenant, slug, *, code, name=None, description=None, language=None, message="", user=None, token=None):
    """Create the block or update it, and save the code as a new version unless it is
    the latest version's code already. Returns (block, version, created_version)."""
    check_code(code)
    if language is not None and language not in LANGUAGE_NAMES:
        raise BlockError("INVALID_ARGUMENT", f"language must be one of {', '.join(sorted(LANGUAGE_NAMES))}.")
    try:
        slug_validator(slug)
    except ValidationError as e:
        raise BlockError("INVALID_ARGUMENT", e.messages[0]) from None
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _save_block(tenant, slug, code, name, description, language, message, user, token)
        except IntegrityError:
            # Two saves of the same block at once both numbered their version N: the one
            # that lost tries again as N+1.
            if attempt == 2:
                raise BlockError("CONFLICT", "The block was saved by someone else at the same moment; try again.") from None


def _save_block(tenant, slug, code, name, description, language, message, user, token):
    block, created = Block.objects.select_for_update().get_or_create(
        tenant=tenant, slug=slug,
        defaults={"name": name or slug, "description": description or "", "language": language or "javascript",
                  "created_by": user},
    )
    changed = []
    for field, value in (("name", name), ("description", description), ("language", language)):
        if not created and value is not None and getattr(block, field) != value:
            setattr(block, field, value)
            changed.append(field)
    if changed:
        block.save(update_fields=changed + ["updated"])
    latest = block.latest_version()
    if latest is not None and latest.sha256 == code_sha256(code):
        return block, latest, False
    version = BlockVersion.objects.create(
        block=block, number=(latest.number + 1) if latest else 1, code=code, message=(message or "")[:500],
        author=user, author_token=token.name if token is not None else "",
    )
    return block, version, True


def deploy(block, number, *, user=None, token=None):
    """Point the block at version `number`; an audit row says who did it and whether it
    was a deploy (a newer version than before) or a rollback (an older one)."""
    version = block.versions.filter(number=number).first() if isinstance(number, int) else None
    if version is None:
        raise BlockError("NOT_FOUND", f"The block {block.slug} has no version {number}.")
    previous = block.deployed_version
    block.deployed_version = version
    block.save(update_fields=["deployed_version", "updated"])
    operation = "rollback" if previous is not None and previous.number > version.number else "deploy"
    who = user.get_username() if user is not None else (f"API token {token.name}" if token is not None else "the platform")
    before = f"version {previous.number}" if previous is not None else "no version"
    audit.record(tenant_id=block.tenant_id, tenant_slug=block.tenant.slug, user_id=user.pk if user else None,
                 capability="blocks", operation=operation, target=f"{block.slug}@{version.number}", outcome="allowed",
                 message=f"{who} deployed version {version.number} of {block.slug} (was {before}).")
    return version


def version_to_run(block, number=None):
    """The version a run of the block runs: `number`, or the deployed one."""
    if number is not None:
        version = block.versions.filter(number=number).first()
        if version is None:
            raise BlockError("NOT_FOUND", f"The block {block.slug} has no version {number}.")
        return version
    if block.deployed_version_id is None:
        raise BlockError("CONFLICT", f"The block {block.slug} has no deployed version; deploy one first or name a version.")
    return block.deployed_version


async def start_block_run(port, block, version, *, input=None, source, user=None, not_before=None):
    """Start a run of this version on the run service of the server process listening
    on `port` (its block begins at `not_before`, a Unix time, if given). Raises
    isolates.runs.RunRefused."""
    service = service_for_port(port)
    return await service.start(block.tenant, version.code, user=user, name=block.file_name, input=input,
                               source=source, block=block, version=version, not_before=not_before)


class RunWatcher:
    """Follows one run's events on the channel layer, from right after it started: the
    block's outcome is known from its "done" event as soon as the broker has it,
    before the run's record is written and long before its isolate has exited and its
    supervisor let go of it. Use as `async with RunWatcher(run_id) as watcher`."""

    def __init__(self, run_id):
        self.run_id = run_id
        self.layer = get_channel_layer()
        self.channel = None

    async def __aenter__(self):
        # Joining right after start() is early enough: the first event needs the
        # isolate to connect back and claim the run first.
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(run_group(self.run_id), self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.layer.group_discard(run_group(self.run_id), self.channel)

    async def outcome(self, seconds):
        """The "done" event ({ok, result, error}), or None when the run ended without
        one (timed out, crashed, stopped) or `seconds` passed."""
        async def receive():
            while True:
                message = await self.layer.receive(self.channel)
                if message.get("type") != "run.event":
                    continue
                if message.get("event") == "done":
                    return message
                if message.get("event") == "finished":
                    return None

        try:
            return await asyncio.wait_for(receive(), seconds)
        except asyncio.TimeoutError:
            return None


def finished_record(run_id, seconds=2.0):
    """The run's record once its outcome is written (the broker writes it right after
    the block's "done"), or as it is after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        run = BlockRun.objects.select_related("block", "version").get(pk=run_id)
        if run.status in BlockRun.FINISHED or time.monotonic() > deadline:
            return run
        time.sleep(0.005)


async def wait_for_run(port, run_id, seconds):
    """The run's record once it ended, or after `seconds`, whichever comes first."""
    service = service_for_port(port)
    if run_id in service.supervisors:
        try:
            await asyncio.wait_for(asyncio.shield(service.supervisors[run_id]), seconds)
        except asyncio.TimeoutError:
            pass
    return await database_sync_to_async(BlockRun.objects.select_related("block", "version").get)(pk=run_id)


async def stop_run(port, run_id, reason):
    """Stop a run wherever it runs: here, or through its broker on another server."""
    service = service_for_port(port)
    if run_id not in service.supervisors:
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(control_group(run_id), {"type": "run.stop", "reason": reason})
    await service.stop(run_id, reason)


def console_logs(run):
    """The run's console as the list runblock --json prints, one entry per console call,
    with when it was printed (`ms` from the run's start; None for older runs)."""
    return run.console_entries()


def run_document(run):
    """The shape of `runblock --json` ({status, result, error, logs, stats}), plus the
    run's id, source, block and version."""
    ok = run.status == "succeeded"
    finished = run.status in BlockRun.FINISHED
    return {
        "id": run.id,
        "status": run.status,
        "result": run.result if ok else None,
        "error": run_error(run) if finished and not ok else None,
        "logs": console_logs(run),
        "stats": {
            "run": run.id,
            "durationMs": round(run.duration * 1000, 1) if run.duration is not None else None,
            "calls": run.calls,
            "bytesIn": run.bytes_in,
            "bytesOut": run.bytes_out,
            "peakMemoryBytes": run.peak_memory_bytes,
            "cpuMs": run.cpu_ms,
            "consoleTruncated": run.console_truncated,
        },
        "source": run.source,
        "block": run.block.slug if run.block_id else None,
        "version": run.version.number if run.version_id else None,
        "created": run.created.isoformat(),
    }
