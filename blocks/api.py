"""The HTTP API under /api/v1/ (docs/api.md), for the tenant's own applications.

django-ninja parses and validates requests against the schemas below and builds the
OpenAPI document (/api/v1/openapi.json) from them. Every operation is async and runs on
the server process's event loop, where its run service lives: runs started here are
supervised by this process, like the runner page's.

Authentication is a bearer token (blocks.models.ApiToken) of one tenant; everything a
request names (a block, a run, a schedule) is looked up within that tenant only, so
another tenant's things are 404, never 403. Every error has the shape
{"error": {"code", "message"}}.
"""

import json
from datetime import datetime
from typing import Any, List, Literal, Optional

from django.conf import settings
from django.utils import timezone
from ninja import NinjaAPI, Schema, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer
from pydantic import Field

from blocks import schedules as scheduling
from blocks.models import ApiToken, Block, Schedule, token_digest
from blocks.service import (
    BlockError,
    RunWatcher,
    deploy,
    finished_record,
    run_document,
    save_block,
    start_block_run,
    stop_run,
    version_to_run,
    wait_for_run,
)
from isolates.runs import RunRefused
from isolates.session import on_pool_thread
from tenants import audit
from tenants.models import BlockRun
from tenants.policy import effective_policy
from tenants.ratelimit import check_rate

# The largest request body the API reads: a version's code is at most 512 KB, JSON
# escaping can double it, and an input rides along.
MAX_BODY_BYTES = 2 * 1024 * 1024
# A run with `wait` answers after at most this many seconds.
MAX_WAIT_SECONDS = 30
# How often last_used is written for a token in steady use (not on every request).
LAST_USED_EVERY_SECONDS = 10

STATUS_OF_CODE = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "TOO_LARGE": 413,
    "RATE_LIMITED": 429,
    "BUSY": 429,
    "UNAVAILABLE": 503,
}


class ApiError(Exception):
    def __init__(self, code, message, retry_after=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


api = NinjaAPI(
    title="Symposium API",
    version="1",
    description="Saved blocks, their versions, runs and schedules. Authenticate with "
    "`Authorization: Bearer <token>` (manage.py createtoken). docs/api.md has the details.",
    urls_namespace="api-v1",
    docs_url=None,  # the interactive docs page would load its scripts from a CDN
)


def error_response(request, code, message, retry_after=None):
    response = api.create_response(request, {"error": {"code": code, "message": message}},
                                   status=STATUS_OF_CODE.get(code, 400))
    if retry_after is not None:
        response["Retry-After"] = str(max(1, int(round(retry_after + 0.499))))
    return response


@api.exception_handler(ApiError)
def on_api_error(request, exc):
    return error_response(request, exc.code, exc.message, exc.retry_after)


@api.exception_handler(BlockError)
def on_block_error(request, exc):
    return error_response(request, exc.code, exc.message)


@api.exception_handler(RunRefused)
def on_run_refused(request, exc):
    return error_response(request, exc.code, exc.message, exc.retry_after)


@api.exception_handler(AuthenticationError)
def on_unauthenticated(request, exc):
    return error_response(request, "UNAUTHENTICATED", "Send an API token: Authorization: Bearer <token>.")


@api.exception_handler(NinjaValidationError)
def on_invalid(request, exc):
    return error_response(request, "INVALID_ARGUMENT", describe_validation(exc.errors))


@api.exception_handler(HttpError)
def on_http_error(request, exc):
    code = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "TOO_LARGE"}.get(exc.status_code, "INVALID_ARGUMENT")
    return error_response(request, code, str(exc))


def describe_validation(errors):
    """Pydantic's errors as one sentence naming the field, without echoing the input."""
    parts = []
    for error in errors[:3]:
        location = [str(p) for p in error.get("loc", ()) if p not in ("body", "payload", "query", "path")]
        field = ".".join(location)
        message = str(error.get("msg", "is not valid"))
        if error.get("type") == "json_invalid":
            parts.append("The request body is not valid JSON.")
        else:
            parts.append(f"{field}: {message}" if field else message)
    return " ".join(parts) or "The request is not valid."


# -- authentication ------------------------------------------------------------------


def find_token(presented):
    if not presented.startswith("sym_") or len(presented) > 100:
        return None
    return ApiToken.objects.select_related("tenant__profile").filter(digest=token_digest(presented)).first()


def mark_used(token):
    now = timezone.now()
    if token.last_used is None or (now - token.last_used).total_seconds() > LAST_USED_EVERY_SECONDS:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)


def token_policy(token):
    return effective_policy(token.tenant)


class TokenAuth(HttpBearer):
    """The request's API token, if it is valid; its tenant must not be suspended and
    its rate must be within the profile's limit."""

    async def authenticate(self, request, presented):
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ApiError("TOO_LARGE", f"The request body is {length} bytes; the API reads at most {MAX_BODY_BYTES}.")
        # One trip to the database thread for the token, its policy and its last use.
        token, policy = await on_pool_thread(authenticated)(presented)
        rate = check_rate(f"token-{token.pk}", "api", policy.api_rate_per_minute)
        if not rate.allowed:
            raise ApiError("RATE_LIMITED", f"This token's limit of {policy.api_rate_per_minute} API requests per minute "
                           f"is reached; retry in {rate.retry_after:.1f} s.", retry_after=rate.retry_after)
        return token


def authenticated(presented):
    token = find_token(presented)
    if token is None:
        raise ApiError("UNAUTHENTICATED", "The API token is not valid.")
    if token.revoked is not None:
        raise ApiError("UNAUTHENTICATED", "The API token was revoked.")
    if token.expires is not None and token.expires <= timezone.now():
        raise ApiError("UNAUTHENTICATED", "The API token has expired.")
    mark_used(token)
    return token, token_policy(token)


auth = TokenAuth()


def need(request, scope):
    token = request.auth
    if not token.allows(scope):
        raise ApiError("PERMISSION_DENIED", f"This API token has the scope '{token.scope}'; this needs '{scope}'.")
    if scope == "deploy" and not token.tenant.is_active:
        raise ApiError("PERMISSION_DENIED", "This tenant is suspended; it can change nothing.")
    return token


def port_of(request):
    server = request.scope.get("server") or (None, settings.SYMPOSIUM_BROKER_PORT)
    return server[1]


# -- schemas ---------------------------------------------------------------------------


class ErrorBody(Schema):
    code: str
    message: str


class ErrorOut(Schema):
    error: ErrorBody


class VersionOut(Schema):
    number: int
    sha256: str
    message: str
    author: str
    created: datetime


class VersionWithCode(VersionOut):
    code: str


class BlockOut(Schema):
    slug: str
    name: str
    description: str
    language: str
    deployedVersion: Optional[int]
    latestVersion: Optional[int]
    publicEndpoint: bool
    endpoint: str
    created: datetime
    updated: datetime


class BlockSaved(BlockOut):
    version: VersionOut
    createdVersion: bool


class BlockIn(Schema):
    code: str = Field(description="The block's source, JavaScript or TypeScript (at most 512 KB).")
    name: Optional[str] = Field(None, max_length=200)
    description: Optional[str] = Field(None, max_length=5000)
    language: Optional[Literal["javascript", "typescript"]] = None
    message: Optional[str] = Field(None, max_length=500, description="What changed in this version.")
    deploy: bool = Field(False, description="Deploy the saved version.")
    publicEndpoint: Optional[bool] = Field(None, description="Whether the block's HTTP endpoint answers without a token.")


class DeployIn(Schema):
    version: int = Field(ge=1)


class RunIn(Schema):
    input: Any = Field(None, description="JSON passed to the block's default export.")
    version: Optional[int] = Field(None, ge=1, description="Run this version instead of the deployed one.")
    wait: Optional[float] = Field(None, ge=0, le=MAX_WAIT_SECONDS, description="Answer when the run ends, or after this many seconds.")


class RunStats(Schema):
    run: str
    durationMs: Optional[float]
    calls: int
    bytesIn: int
    bytesOut: int
    peakMemoryBytes: Optional[int]
    cpuMs: Optional[int]
    consoleTruncated: bool


class LogLine(Schema):
    level: str
    text: str
    ms: Optional[int] = Field(None, description="When it was printed, in ms from the run's start")


class RunOut(Schema):
    id: str
    status: str
    result: Any = None
    error: Optional[ErrorBody] = None
    logs: List[LogLine]
    stats: RunStats
    source: str
    block: Optional[str]
    version: Optional[int]
    created: datetime


class RunAccepted(Schema):
    id: str
    status: str


class LastRun(Schema):
    id: str
    status: str
    at: datetime


class ScheduleOut(Schema):
    id: int
    block: str
    cron: str
    timezone: str
    input: Any = None
    enabled: bool
    nextRun: Optional[datetime]
    lastRun: Optional[LastRun]


class ScheduleIn(Schema):
    cron: str = Field(max_length=100, description="Five fields: minute hour day-of-month month day-of-week.")
    timezone: str = Field("UTC", max_length=64)
    input: Any = None
    enabled: bool = True


class ScheduleChange(Schema):
    cron: Optional[str] = Field(None, max_length=100)
    timezone: Optional[str] = Field(None, max_length=64)
    input: Any = None
    enabled: Optional[bool] = None


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 413: ErrorOut, 429: ErrorOut}


# -- documents -------------------------------------------------------------------------


def version_document(version, with_code=False):
    document = {"number": version.number, "sha256": version.sha256, "message": version.message,
                "author": version.author_name, "created": version.created}
    if with_code:
        document["code"] = version.code
    return document


def block_document(block):
    latest = block.latest_version()
    return {
        "slug": block.slug, "name": block.name, "description": block.description, "language": block.language,
        "deployedVersion": block.deployed_version.number if block.deployed_version_id else None,
        "latestVersion": latest.number if latest else None,
        "publicEndpoint": block.public_endpoint,
        "endpoint": f"/b/{block.tenant.slug}/{block.slug}/",
        "created": block.created, "updated": block.updated,
    }


def schedule_document(schedule):
    run = schedule.last_run
    return {
        "id": schedule.pk, "block": schedule.block.slug, "cron": schedule.cron, "timezone": schedule.timezone,
        "input": schedule.input, "enabled": schedule.enabled, "nextRun": schedule.next_run,
        "lastRun": {"id": run.id, "status": run.status, "at": run.created} if run is not None else None,
    }


def get_block(token, slug):
    block = Block.objects.select_related("tenant", "deployed_version").filter(tenant=token.tenant, slug=slug).first()
    if block is None:
        raise ApiError("NOT_FOUND", f"There is no block {slug[:64]!r}.")
    return block


def get_run(token, run_id):
    run = BlockRun.objects.select_related("block", "version").filter(tenant=token.tenant, pk=run_id[:32]).first()
    if run is None:
        raise ApiError("NOT_FOUND", "There is no such run.")
    return run


def get_schedule(token, schedule_id):
    schedule = Schedule.objects.select_related("block__tenant", "last_run").filter(
        block__tenant=token.tenant, pk=schedule_id).first()
    if schedule is None:
        raise ApiError("NOT_FOUND", "There is no such schedule.")
    return schedule


# -- blocks ----------------------------------------------------------------------------


@api.get("/blocks", auth=auth, response={200: List[BlockOut], **ERRORS}, tags=["blocks"])
async def list_blocks(request):
    """The token's tenant's blocks."""
    def read():
        blocks = Block.objects.select_related("tenant", "deployed_version").filter(tenant=request.auth.tenant)
        return [block_document(b) for b in blocks]

    return await on_pool_thread(read)()


@api.get("/blocks/{slug}", auth=auth, response={200: BlockOut, **ERRORS}, tags=["blocks"])
async def get_block_view(request, slug: str):
    return await on_pool_thread(lambda: block_document(get_block(request.auth, slug)))()


@api.put("/blocks/{slug}", auth=auth, response={200: BlockSaved, 201: BlockSaved, **ERRORS}, tags=["blocks"])
async def put_block(request, slug: str, payload: BlockIn):
    """Create the block or save a new version of it (code identical to the latest
    version saves none); `deploy: true` deploys the saved version. Scope `deploy`."""
    token = need(request, "deploy")

    def write():
        existed = Block.objects.filter(tenant=token.tenant, slug=slug).exists()
        block, version, created = save_block(token.tenant, slug, code=payload.code, name=payload.name,
                                             description=payload.description, language=payload.language,
                                             message=payload.message or "", token=token)
        if payload.publicEndpoint is not None and block.public_endpoint != payload.publicEndpoint:
            block.public_endpoint = payload.publicEndpoint
            block.save(update_fields=["public_endpoint", "updated"])
        if payload.deploy and block.deployed_version_id != version.pk:
            deploy(block, version.number, token=token)
        block = Block.objects.select_related("tenant", "deployed_version").get(pk=block.pk)
        return Status(200 if existed else 201, {**block_document(block), "version": version_document(version), "createdVersion": created})

    return await on_pool_thread(write)()


@api.get("/blocks/{slug}/versions", auth=auth, response={200: List[VersionWithCode], **ERRORS}, tags=["blocks"])
async def list_versions(request, slug: str):
    """Every version of the block, newest first, with its code."""
    def read():
        block = get_block(request.auth, slug)
        return [version_document(v, with_code=True) for v in block.versions.select_related("author").order_by("-number")]

    return await on_pool_thread(read)()


@api.post("/blocks/{slug}/deploy", auth=auth, response={200: BlockOut, **ERRORS}, tags=["blocks"])
async def deploy_block(request, slug: str, payload: DeployIn):
    """Deploy a version; deploying an earlier one is a rollback. Scope `deploy`."""
    token = need(request, "deploy")

    def write():
        block = get_block(token, slug)
        deploy(block, payload.version, token=token)
        return block_document(Block.objects.select_related("tenant", "deployed_version").get(pk=block.pk))

    return await on_pool_thread(write)()


# -- runs ------------------------------------------------------------------------------


@api.post("/blocks/{slug}/runs", auth=auth, response={201: RunOut, 202: RunAccepted, **ERRORS}, tags=["runs"])
async def start_run(request, slug: str, payload: RunIn):
    """Start a run of the deployed version (or `version`). With `wait` the answer comes
    when the run ends or `wait` seconds pass (201, the run); without it at once (202)."""
    token = need(request, "run")

    def prepare():
        block = get_block(token, slug)
        return block, version_to_run(block, payload.version)

    block, version = await on_pool_thread(prepare)()
    run = await start_block_run(port_of(request), block, version, input=payload.input, source="api")
    if not payload.wait:
        return Status(202, {"id": run.id, "status": run.status})
    async with RunWatcher(run.id) as watcher:
        done = await watcher.outcome(payload.wait)
    if done is not None:
        finished = await on_pool_thread(finished_record)(run.id)
    else:
        # Ended without the block's own outcome (time limit, crash, stop), or still going.
        finished = await wait_for_run(port_of(request), run.id, 1.0)
    return Status(201, run_document(finished))


@api.get("/runs/{run_id}", auth=auth, response={200: RunOut, **ERRORS}, tags=["runs"])
async def get_run_view(request, run_id: str):
    """A run of the token's tenant: status, result, error, logs, stats, block, version."""
    return await on_pool_thread(lambda: run_document(get_run(request.auth, run_id)))()


@api.post("/runs/{run_id}/stop", auth=auth, response={200: RunOut, **ERRORS}, tags=["runs"])
async def stop_run_view(request, run_id: str):
    """Stop a run; it ends `killed` (a run that ended already stays as it was)."""
    token = need(request, "run")
    run = await on_pool_thread(get_run)(token, run_id)
    if run.status not in BlockRun.FINISHED:
        await stop_run(port_of(request), run.id, f"Stopped through the API (token {token.name}).")
        run = await wait_for_run(port_of(request), run.id, 5)
    return run_document(run)


# -- schedules -------------------------------------------------------------------------


def schedule_error(e):
    return ApiError("INVALID_ARGUMENT", e.message)


@api.get("/blocks/{slug}/schedules", auth=auth, response={200: List[ScheduleOut], **ERRORS}, tags=["schedules"])
async def list_schedules(request, slug: str):
    def read():
        block = get_block(request.auth, slug)
        return [schedule_document(s) for s in block.schedules.select_related("block", "last_run")]

    return await on_pool_thread(read)()


@api.post("/blocks/{slug}/schedules", auth=auth, response={201: ScheduleOut, **ERRORS}, tags=["schedules"])
async def add_schedule(request, slug: str, payload: ScheduleIn):
    """Run the block's deployed version on a cron. Scope `deploy`. The profile bounds
    how many schedules a tenant has and how often one may fire."""
    token = need(request, "deploy")

    def write():
        block = get_block(token, slug)
        try:
            scheduling.check_allowed(token.tenant, payload.cron, payload.timezone, adding=True)
        except scheduling.ScheduleError as e:
            raise schedule_error(e) from None
        schedule = Schedule(block=block, cron=" ".join(payload.cron.split()), timezone=payload.timezone,
                            input=payload.input, enabled=payload.enabled)
        scheduling.schedule_next_run(schedule)
        schedule.save()
        audit_schedule(token, schedule, "schedule.add")
        return Status(201, schedule_document(schedule))

    return await on_pool_thread(write)()


@api.patch("/schedules/{schedule_id}", auth=auth, response={200: ScheduleOut, **ERRORS}, tags=["schedules"])
async def change_schedule(request, schedule_id: int, payload: ScheduleChange):
    """Change a schedule's cron, time zone, input, or pause and resume it. Scope `deploy`."""
    token = need(request, "deploy")
    given = payload.model_fields_set

    def write():
        schedule = get_schedule(token, schedule_id)
        if "cron" in given and payload.cron is not None:
            schedule.cron = " ".join(payload.cron.split())
        if "timezone" in given and payload.timezone is not None:
            schedule.timezone = payload.timezone
        if "input" in given:
            schedule.input = payload.input
        if "enabled" in given and payload.enabled is not None:
            schedule.enabled = payload.enabled
        try:
            scheduling.check_allowed(token.tenant, schedule.cron, schedule.timezone, adding=False)
        except scheduling.ScheduleError as e:
            raise schedule_error(e) from None
        scheduling.schedule_next_run(schedule)
        schedule.save()
        audit_schedule(token, schedule, "schedule.change")
        return schedule_document(schedule)

    return await on_pool_thread(write)()


@api.delete("/schedules/{schedule_id}", auth=auth, response={204: None, **ERRORS}, tags=["schedules"])
async def delete_schedule(request, schedule_id: int):
    token = need(request, "deploy")

    def write():
        schedule = get_schedule(token, schedule_id)
        audit_schedule(token, schedule, "schedule.delete")
        schedule.delete()
        return Status(204, None)

    return await on_pool_thread(write)()


def audit_schedule(token, schedule, operation):
    audit.record(tenant_id=token.tenant_id, tenant_slug=token.tenant.slug, capability="blocks", operation=operation,
                 target=f"{schedule.block.slug} {schedule.cron}"[:300], outcome="allowed",
                 message=f"API token {token.name}: {schedule.cron} ({schedule.timezone}), "
                         f"{'enabled' if schedule.enabled else 'paused'}.")


def openapi_json():
    """The OpenAPI document, as the server serves it (for docs and tests)."""
    return json.dumps(api.get_openapi_schema(path_prefix="/api/v1/"), indent=2)
