"""The block-runner page's websocket: `BlockRunnerConsumer`.

A logged-in user's page sends three kinds of request, each a JSON object with a `type`:

    {"type": "start", "tenant": SLUG, "code": JS, "input": JSON-TEXT, "name": NAME, "block": SLUG?}
    {"type": "stop", "run": RUN_ID}
    {"type": "watch", "run": RUN_ID}

and gets back, for every run it started or watches, the run's events as they happen
(`{"type": "event", "run": id, "event": "log" | "call" | "image" | "started" | "done", ...}`)
and one `{"type": "finished", ...}` with the run's final record. A request that is
refused is answered with `{"type": "refused", "request": ..., "code": ..., "message": ...}`.

SECURITY: nothing in a frame is trusted. The user is the session's (read again from the
database on every request, so a logout or a deactivation ends their power at once);
every tenant or run a frame names is checked against the user's memberships on the
server; a request naming a tenant the user does not belong to is refused and written to
the audit log (capability "runner"). The handshake itself must come from a page of this
site (`SameOriginValidator`): the session cookie alone would let any site a user visits
open this websocket on their behalf (cross-site websocket hijacking), and browsers do
not apply CORS or CSRF tokens to websockets, only the Origin header tells.
"""

import asyncio
import json
import logging
from importlib import import_module
from urllib.parse import quote, urlsplit

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host
from django.urls import reverse

from blocks.models import Block, code_sha256
from isolates.runevents import control_group, run_group
from isolates.errors import run_error
from isolates.runs import RunRefused, service_for_port
from tenants import audit
from tenants.models import AuditLog, BlockRun, Membership, Tenant

logger = logging.getLogger(__name__)

# What one page may send and start. Each bounds memory or work a single user can cause.
RUNNER_LIMITS = {
    # A request frame: the block's code plus its input and a little JSON around them.
    "frame_bytes": 2 * 1024 * 1024,
    # The block's source. The seed's largest example is 4 KB; a megabyte is a big program.
    "code_bytes": 1024 * 1024,
    # The run's input, as JSON text.
    "input_bytes": 256 * 1024,
    # Runs one page has going at once (the tenant's own concurrent-runs limit applies too).
    "runs_per_connection": 4,
    # Capability calls listed with a past run (the newest are kept).
    "history_calls": 1000,
}

# Console lines are sent to the page in batches: one websocket message per line would
# cost a block printing a megabyte a thousand messages, and the server's event loop
# (which also carries the isolates' frames) the time to frame each one.
LOG_BATCH_SECONDS = 0.05
LOG_BATCH_BYTES = 256 * 1024

IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"}
CAP_NOTICE = "Console output reached this tenant's cap of"


class RequestError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# -- the handshake's origin ------------------------------------------------------------


def _default_port(scheme):
    return {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)


def origin_allowed(origin, host):
    """Whether a websocket handshake with this Origin header was opened by a page of the
    site it connects to (`host`, the Host header), or of a trusted origin.

    The origin's host must be one of ALLOWED_HOSTS and the origin must be this very
    site: same host and port (a page on another port of the same machine is another
    origin), or listed in CSRF_TRUSTED_ORIGINS as the HTTP side's CSRF check accepts."""
    if not origin or origin == "null":
        return False
    try:
        parts = urlsplit(origin)
        origin_host, origin_port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not origin_host:
        return False
    origin_port = origin_port or _default_port(parts.scheme)
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    allowed_hosts = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    host_name, host_port = split_domain_port(host or "")
    if not host_name or not validate_host(host_name, allowed_hosts):
        return False
    if host_name.strip("[]") != origin_host.strip("[]"):
        return False
    # A Host header without a port means the default port of whatever scheme the
    # browser used (a TLS-terminating proxy may hand us plain ws for an https page).
    return origin_port == (int(host_port) if host_port else _default_port(parts.scheme))


class SameOriginValidator:
    """ASGI middleware refusing a websocket handshake whose Origin is not this site."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin", b"").decode("latin1")
        host = headers.get(b"host", b"").decode("latin1")
        if origin_allowed(origin, host):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


async def current_user(scope):
    """The user of the handshake's session as the session store has it now. The scope's
    session object caches what it read at the handshake, so a fresh one is read."""
    key = getattr(scope.get("session"), "session_key", None)
    if not key:
        return AnonymousUser()
    store = import_module(settings.SESSION_ENGINE).SessionStore(key)
    return await get_user({"session": store})


# -- what the page and the views share -------------------------------------------------


def membership_for(user, slug):
    """The user's membership of the tenant called `slug`, or None."""
    if not user or not user.is_authenticated or not user.is_active or not isinstance(slug, str):
        return None
    return Membership.objects.select_related("tenant", "tenant__profile").filter(user=user, tenant__slug=slug).first()


def record_refusal(user, operation, code, message, *, tenant=None, slug="", run_id=None, target=""):
    """An audit row for a runner request that was refused. It belongs to the tenant the
    request was aimed at, so that tenant's admins see who tried."""
    audit.record(
        tenant_id=tenant.pk if tenant else None, tenant_slug=(tenant.slug if tenant else str(slug))[:50],
        run_id=run_id, user_id=user.pk if user and user.is_authenticated else None,
        capability="runner", operation=operation, target=target, outcome="denied", error_code=code, message=message,
    )


def file_url(slug, path):
    return reverse("runner-file", args=[slug, quote(path, safe="/")]) if path else ""


def files_written(run):
    """The files a run wrote through the file API and did not delete again, in the order
    of their first write, from the audit log (the record of every call)."""
    rows = AuditLog.objects.filter(run_id=run.pk, outcome="allowed", operation__in=("writeFile", "deleteFile")).order_by("time", "id")
    written = {}
    for operation, target in rows.values_list("operation", "target"):
        path = target.strip("/")
        if operation == "writeFile" and path:
            written.setdefault(path, file_url(run.tenant.slug, path))
        elif operation == "deleteFile":
            # A deleted folder takes everything under it along.
            for name in [p for p in written if p == path or p.startswith(path + "/") or not path]:
                del written[name]
    return [{"path": path, "url": url} for path, url in written.items()]


def run_summary(run):
    return {
        "id": run.pk,
        "name": run.name,
        "status": run.status,
        "status_label": run.get_status_display(),
        "user": run.user.get_username() if run.user_id and run.user else "",
        "source": run.source,
        "created": run.created.isoformat(),
        "duration": run.duration,
        "calls": run.calls,
        "bytes_in": run.bytes_in,
        "bytes_out": run.bytes_out,
        "peak_memory_bytes": run.peak_memory_bytes,
        "cpu_ms": run.cpu_ms,
        "error_code": run.error_code,
    }


def run_final(run):
    """The figures and outcome of a finished run, as the page shows them."""
    return {
        **run_summary(run),
        "result": run.result,
        "error": run.error,
        "error_detail": run_error(run),
        "console_truncated": run.console_truncated,
        "files": files_written(run),
    }


def run_detail(run):
    """Everything the page shows about a past run."""
    calls = list(
        AuditLog.objects.filter(run_id=run.pk).exclude(capability="runner").order_by("-time", "-id")
        .values("time", "operation", "target", "outcome", "error_code", "message", "duration_ms", "bytes_out")[: RUNNER_LIMITS["history_calls"]]
    )
    calls.reverse()
    return {
        **run_final(run),
        "code": run.code,
        "input": run.input,
        "console": run.console,
        "console_entries": run.console_entries(),
        "started": run.started.isoformat() if run.started else None,
        "call_log": [
            {"t": c["time"].timestamp() * 1000, "op": c["operation"], "target": c["target"], "outcome": c["outcome"],
             "code": c["error_code"], "message": c["message"], "ms": c["duration_ms"], "bytes": c["bytes_out"]}
            for c in calls
        ],
    }


def parse_input(text):
    """The run's input from the page's JSON text ('' is no input). Raises RequestError."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise RequestError("INVALID_ARGUMENT", "The input must be sent as JSON text.")
    if len(text.encode()) > RUNNER_LIMITS["input_bytes"]:
        raise RequestError("INVALID_ARGUMENT", f"The input is larger than {RUNNER_LIMITS['input_bytes'] // 1024} KB.")
    if not text.strip():
        return None

    def refuse_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except RecursionError:
        raise RequestError("INVALID_ARGUMENT", "The input is nested too deeply.") from None
    except ValueError as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise RequestError("INVALID_ARGUMENT", f"The input is not valid JSON: {reason}{where}.") from None


def console_text_of(level, text):
    """How the broker stores one console line in the run's record."""
    return text if level in ("log", "info") else f"[{level}] {text}"


# -- the consumer ----------------------------------------------------------------------


class WatchedRun:
    def __init__(self, run_id, tenant_slug, started_here):
        self.id = run_id
        self.tenant_slug = tenant_slug
        self.started_here = started_here
        self.finished = False
        self.follower = None
        # What the page was sent of the console, to tell whether it saw all of it: the
        # channel layer drops events for a reader that falls behind.
        self.console_chars = 0
        self.console_lines = 0


class BlockRunnerConsumer(AsyncWebsocketConsumer):
    # The messages this consumer handles: an allow-list, never a method picked by a
    # message's type.
    DISPATCH = {
        "websocket.connect": "websocket_connect",
        "websocket.receive": "websocket_receive",
        "websocket.disconnect": "websocket_disconnect",
        "run.event": "run_event",
    }

    async def dispatch(self, message):
        # Unlike Channels' default, no database connection sweep per message: a run's
        # events arrive by the thousand, and the helpers that use the database
        # (database_sync_to_async) close stale connections themselves.
        name = self.DISPATCH.get(message.get("type"))
        if name is None:
            # Something else published to a run's group: not for the page, and no
            # reason to drop the page's connection.
            logger.warning("runner: ignored a message of type %s", str(message.get("type"))[:40])
            return
        await getattr(self, name)(message)

    async def connect(self):
        self.watched = {}
        self.pending_logs = []  # [(run_id, line)], in order, not yet sent
        self.pending_bytes = 0
        self.log_flusher = None
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.send_json({"type": "error", "code": "UNAUTHENTICATED", "message": "Log in to run blocks."})
            await self.close(code=4401)
            return
        await self.send_json({"type": "ready", "user": user.get_username(), "limits": RUNNER_LIMITS})

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None or text_data is None:
            return await self.refuse("?", "INVALID_ARGUMENT", "Requests are JSON text.")
        if len(text_data) > RUNNER_LIMITS["frame_bytes"]:
            return await self.refuse("?", "INVALID_ARGUMENT", f"A request may be at most {RUNNER_LIMITS['frame_bytes'] // 1024 // 1024} MB.")
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):
            return await self.refuse("?", "INVALID_ARGUMENT", "The request is not JSON.")
        kind = frame.get("type") if isinstance(frame, dict) else None
        kind = kind if isinstance(kind, str) else None
        # An explicit list: a frame's type never picks a method by name.
        handler = {"start": self.start_run, "stop": self.stop_run, "watch": self.watch_run}.get(kind)
        if handler is None:
            return await self.refuse(str(kind)[:20], "INVALID_ARGUMENT", "Unknown request; expected start, stop or watch.")
        # The session is read again for every request: logging out elsewhere, or being
        # deactivated by an admin, takes effect on an open page at once.
        user = await current_user(self.scope)
        if not user.is_authenticated or not user.is_active:
            await self.send_json({"type": "error", "code": "UNAUTHENTICATED", "message": "Your session has ended; log in again."})
            return await self.close(code=4401)
        try:
            await handler(user, frame)
        except RequestError as e:
            await self.refuse(kind, e.code, e.message, frame)

    async def refuse(self, request, code, message, frame=None):
        reply = {"type": "refused", "request": request, "code": code, "message": message}
        if isinstance(frame, dict) and isinstance(frame.get("ref"), (str, int)):
            reply["ref"] = frame["ref"]
        await self.send_json(reply)

    # -- start -----------------------------------------------------------------------

    async def start_run(self, user, frame):
        slug, code, name = frame.get("tenant"), frame.get("code"), frame.get("name", "")
        if not isinstance(slug, str) or not slug:
            raise RequestError("INVALID_ARGUMENT", "Name the tenant to run as.")
        if not isinstance(code, str) or not code.strip():
            raise RequestError("INVALID_ARGUMENT", "There is no code to run.")
        if len(code.encode(errors="replace")) > RUNNER_LIMITS["code_bytes"]:
            raise RequestError("INVALID_ARGUMENT", f"The block is larger than {RUNNER_LIMITS['code_bytes'] // 1024} KB.")
        if not isinstance(name, str):
            name = ""
        membership = await database_sync_to_async(self.check_membership)(user, slug, "start", need_run=True)
        block, version = await database_sync_to_async(self.saved_block_of)(membership.tenant, frame.get("block"), code)
        if block is not None:
            name = block.file_name
        block_input = parse_input(frame.get("input"))
        mine = [w for w in self.watched.values() if w.started_here and not w.finished]
        if len(mine) >= RUNNER_LIMITS["runs_per_connection"]:
            raise RequestError("RATE_LIMITED", f"This page already has {len(mine)} runs going; stop one or wait for it to end.")
        service = self.run_service()
        try:
            run = await service.start(membership.tenant, code, user=user, name=name.strip()[:200] or "block.js",
                                      input=block_input, source="runner", block=block, version=version)
        except RunRefused as e:
            record_refusal(user, "start", e.code, e.message, tenant=membership.tenant)
            raise RequestError(e.code, e.message) from None
        # The run's events go to its group. Joining right after start() is early enough:
        # the first event needs the isolate to connect back and claim the run first.
        watched = WatchedRun(run.pk, membership.tenant.slug, started_here=True)
        self.watched[run.pk] = watched
        await self.channel_layer.group_add(run_group(run.pk), self.channel_name)
        await self.send_json({"type": "accepted", "run": run.pk, "tenant": watched.tenant_slug, "ref": frame.get("ref"),
                              "summary": await database_sync_to_async(lambda: run_summary(BlockRun.objects.select_related("user").get(pk=run.pk)))()})
        watched.follower = asyncio.ensure_future(self.follow(watched, service))

    def check_membership(self, user, slug, operation, need_run=False):
        """The membership that allows this request, or RequestError after an audit row."""
        membership = membership_for(user, slug)
        if membership is None:
            message = f"You are not a member of the tenant '{slug[:50]}'."
            record_refusal(user, operation, "PERMISSION_DENIED", message,
                           tenant=Tenant.objects.filter(slug=slug).first(), slug=slug)
            raise RequestError("PERMISSION_DENIED", message)
        if need_run and not membership.can_run:
            message = f"You are a viewer of '{membership.tenant.slug}': you can see its runs but not start or stop them."
            record_refusal(user, operation, "PERMISSION_DENIED", message, tenant=membership.tenant)
            raise RequestError("PERMISSION_DENIED", message)
        return membership

    @staticmethod
    def saved_block_of(tenant, slug, code):
        """The saved block a start request names (of the tenant it runs as), and the
        version whose code is the code to run: (block, version), (block, None) for
        edited code not saved yet, (None, None) for pasted code. RequestError when the
        tenant has no such block."""
        if slug is None or slug == "":
            return None, None
        block = Block.objects.filter(tenant=tenant, slug=slug).first() if isinstance(slug, str) and len(slug) <= 64 else None
        if block is None:
            raise RequestError("NOT_FOUND", "This tenant has no such block.")
        version = block.versions.filter(sha256=code_sha256(code)).order_by("-number").first()
        return block, version

    async def follow(self, watched, service):
        """Sends the run's final record once the run service has written it. The record
        is read from the database, so the page gets it even when the channel layer
        dropped the run's events on the way."""
        try:
            await service.wait(watched.id)
            await self.send_finished(watched)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("following run %s failed", watched.id)

    # -- stop and watch --------------------------------------------------------------

    def run_for(self, user, run_id, operation, need_run):
        """The run named by a request, if the user may act on it; else RequestError."""
        run = BlockRun.objects.select_related("tenant", "user").filter(pk=run_id).first() if isinstance(run_id, str) and len(run_id) <= 32 else None
        if run is None:
            raise RequestError("NOT_FOUND", "There is no such run.")
        membership = membership_for(user, run.tenant.slug)
        if membership is None:
            # Said the same way as a missing run: a run id must not reveal its tenant.
            record_refusal(user, operation, "PERMISSION_DENIED", "The run belongs to a tenant the user is not a member of.",
                           tenant=run.tenant, run_id=run.pk, target=run.pk)
            raise RequestError("NOT_FOUND", "There is no such run.")
        if need_run and not membership.can_run:
            message = f"You are a viewer of '{run.tenant.slug}': you can see its runs but not start or stop them."
            record_refusal(user, operation, "PERMISSION_DENIED", message, tenant=run.tenant, run_id=run.pk, target=run.pk)
            raise RequestError("PERMISSION_DENIED", message)
        if need_run and run.user_id != user.pk and membership.role != "owner":
            message = "Only the tenant's owners can stop a run someone else started."
            record_refusal(user, operation, "PERMISSION_DENIED", message, tenant=run.tenant, run_id=run.pk, target=run.pk)
            raise RequestError("PERMISSION_DENIED", message)
        return run

    async def stop_run(self, user, frame):
        run = await database_sync_to_async(self.run_for)(user, frame.get("run"), "stop", need_run=True)
        if run.status in BlockRun.FINISHED:
            return await self.send_json({"type": "info", "run": run.pk, "message": "The run had already ended."})
        service = self.run_service()
        reason = f"Stopped by {user.get_username()} from the runner page."
        if run.pk not in service.supervisors:
            # Another server process supervises it: ask its broker to end the isolate.
            await self.channel_layer.group_send(control_group(run.pk), {"type": "run.stop", "reason": reason})
        await service.stop(run.pk, reason)
        await self.send_json({"type": "info", "run": run.pk, "message": "Stopping the run."})
        watched = self.watched.get(run.pk)
        if watched is not None and watched.follower is None:
            await self.send_finished(watched)

    async def watch_run(self, user, frame):
        run = await database_sync_to_async(self.run_for)(user, frame.get("run"), "watch", need_run=False)
        if run.pk in self.watched:
            return
        watched = WatchedRun(run.pk, run.tenant.slug, started_here=False)
        self.watched[run.pk] = watched
        # Join first, then read the record: an event that happens in between is both in
        # the record and relayed (the page ignores what it already has), never lost.
        await self.channel_layer.group_add(run_group(run.pk), self.channel_name)
        detail = await database_sync_to_async(lambda: run_detail(BlockRun.objects.select_related("tenant", "user").get(pk=run.pk)))()
        watched.console_chars = len(detail["console"])
        watched.console_lines = 1 if detail["console"] else 0
        await self.send_json({"type": "snapshot", "run": run.pk, "tenant": run.tenant.slug, "detail": detail})
        if detail["status"] in BlockRun.FINISHED:
            return await self.send_finished(watched)
        service = self.run_service()
        if run.pk in service.supervisors:
            watched.follower = asyncio.ensure_future(self.follow(watched, service))

    # -- events from the run's group -------------------------------------------------

    async def run_event(self, event):
        watched = self.watched.get(event.get("run"))
        if watched is None or watched.finished:
            return
        kind = event.get("event")
        if kind == "finished":
            return await self.send_finished(watched)
        frame = {k: v for k, v in event.items() if k != "type"}
        frame["type"] = "event"
        if kind == "log":
            text = str(frame.get("text", ""))
            if not (frame.get("level") == "warn" and text.startswith(CAP_NOTICE)):
                stored = console_text_of(frame.get("level"), text)
                watched.console_chars += len(stored) + (1 if watched.console_lines else 0)
                watched.console_lines += 1
            return await self.queue_log(watched.id, {"level": frame.get("level"), "text": text, "t": frame.get("t")})
        await self.flush_logs()  # what the block printed before this event, first
        if kind == "call":
            if frame.get("outcome") == "allowed" and frame.get("op") == "writeFile":
                frame["download"] = file_url(watched.tenant_slug, str(frame.get("target", "")).strip("/"))
        elif kind == "image":
            if frame.get("mime") not in IMAGE_TYPES:
                return
        await self.send_json(frame)

    async def queue_log(self, run_id, line):
        self.pending_logs.append((run_id, line))
        self.pending_bytes += len(line["text"]) + 64
        if self.pending_bytes >= LOG_BATCH_BYTES:
            await self.flush_logs()
        elif self.log_flusher is None:
            self.log_flusher = asyncio.ensure_future(self.flush_logs_soon())

    async def flush_logs_soon(self):
        await asyncio.sleep(LOG_BATCH_SECONDS)
        self.log_flusher = None
        await self.flush_logs()

    async def flush_logs(self):
        """Sends the queued console lines: one `logs` frame per run, in order."""
        if not self.pending_logs:
            return
        pending, self.pending_logs, self.pending_bytes = self.pending_logs, [], 0
        batch_run, lines = None, []
        for run_id, line in pending + [(None, None)]:
            if run_id != batch_run and lines:
                await self.send_json({"type": "logs", "run": batch_run, "lines": lines})
                lines = []
            batch_run = run_id
            if line is not None:
                lines.append(line)

    async def send_finished(self, watched):
        if watched.finished:
            return
        watched.finished = True
        await self.flush_logs()
        final = await database_sync_to_async(self.final_record)(watched.id)
        if final is None or final["status"] not in BlockRun.FINISHED:
            watched.finished = False
            return
        run = final.pop("run")
        final["console_complete"] = len(run.console) == watched.console_chars
        if not final["console_complete"]:
            # Some lines never reached the page: it shows the stored console instead.
            final["console"] = run.console
            final["console_entries"] = run.console_entries()
        await self.send_json({"type": "finished", "run": watched.id, **final})
        await self.channel_layer.group_discard(run_group(watched.id), self.channel_name)

    @staticmethod
    def final_record(run_id):
        # The broker's audit rows of the run are queued for a background writer; the run
        # is finished only after they were flushed, but flush here too so the files list
        # is complete even when this process's writer was the one holding them.
        audit.flush()
        run = BlockRun.objects.select_related("tenant", "user").filter(pk=run_id).first()
        if run is None:
            return None
        return {**run_final(run), "run": run}

    async def disconnect(self, code):
        if self.log_flusher is not None:
            self.log_flusher.cancel()
        kill = settings.SYMPOSIUM_KILL_RUNS_ON_DISCONNECT
        for watched in list(self.watched.values()):
            if watched.follower is not None:
                watched.follower.cancel()
            await self.channel_layer.group_discard(run_group(watched.id), self.channel_name)
            if kill and watched.started_here and not watched.finished:
                await self.run_service().stop(
                    watched.id, "Stopped because the page that started it was closed.")
        self.watched.clear()

    def run_service(self):
        """This server process's run service. Its isolates connect back to the port this
        server listens on (the handshake's scope says which)."""
        server = self.scope.get("server") or (None, settings.SYMPOSIUM_BROKER_PORT)
        return service_for_port(server[1])

    async def send_json(self, content):
        await self.send(text_data=json.dumps(content, default=str))
