"""A block's own HTTP endpoint: /b/<tenant>/<block>/<path...>, any method.

A block whose default export is an object with `fetch(request)` answers here. Each
request is a run (source `http`) of the deployed version under the tenant's profile:
the request travels in the run's input as {method, url, headers, body}, the isolate's
runtime builds a standard Request from it and turns the block's Response into
{status, headers, body}, the run's result, which is sent back as is. The run's id is in
the `X-Symposium-Run` header of every answer that had a run.

What never reaches a block: hop-by-hop headers, the platform's own cookies (its session
and CSRF cookies), and an `Authorization` header carrying a platform API token. What a
block cannot send: hop-by-hop headers, and cookies named like the platform's. Every
answer carries `Content-Security-Policy: sandbox ...`, which makes an HTML page a block
serves an origin of its own in the browser, unable to act with a visitor's session on
this site (docs/blocks.md says why, and that production can give endpoints a host).
"""

import base64
from http.cookies import SimpleCookie

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import Http404, HttpResponse, JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt

from blocks.models import ApiToken, Block, token_digest
from blocks.service import RunWatcher, finished_record, start_block_run, wait_for_run
from isolates.runs import RunRefused
from isolates.session import on_pool_thread, read_tenant_shared

# Per RFC 9110 section 7.6.1, plus what only the platform's own transport may decide.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "content-length", "host"}
# Response headers the platform sets itself.
RESPONSE_DROPPED = HOP_BY_HOP | {"x-symposium-run", "content-security-policy"}
SANDBOX_POLICY = "sandbox allow-scripts allow-forms allow-popups allow-downloads"


def platform_cookies():
    return {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME, "messages"}


def error(status, message, run_id=None, retry_after=None):
    response = JsonResponse({"error": {"code": {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                                                413: "TOO_LARGE", 429: "RATE_LIMITED", 500: "BLOCK_FAILED",
                                                503: "UNAVAILABLE", 504: "TIMEOUT"}.get(status, "INVALID_ARGUMENT"),
                                       "message": message}}, status=status)
    if run_id:
        response["X-Symposium-Run"] = run_id
    if retry_after is not None:
        response["Retry-After"] = str(max(1, int(round(retry_after + 0.499))))
    response["Content-Security-Policy"] = SANDBOX_POLICY
    return response


def bearer(request):
    header = request.META.get("HTTP_AUTHORIZATION", "")
    kind, _, value = header.partition(" ")
    return value.strip() if kind.lower() == "bearer" and value.strip().startswith("sym_") else None


def find_endpoint(tenant_slug, block_slug, presented):
    """The block (its deployed version with it), or an error response."""
    block = (Block.objects.select_related("deployed_version")
             .filter(tenant__slug=tenant_slug, slug=block_slug).first())
    if block is None or block.deployed_version_id is None:
        return error(404, "There is no such endpoint.")
    if not block.public_endpoint:
        if presented is None:
            return error(401, "This endpoint is private: send a run token (Authorization: Bearer <token>).")
        token = ApiToken.objects.filter(digest=token_digest(presented)).first()
        if token is None or not token.usable():
            return error(401, "The token is not valid, has expired or was revoked.")
        if token.tenant_id != block.tenant_id:
            # Said as for a missing block: a token must not learn another tenant's blocks.
            return error(404, "There is no such endpoint.")
    return block


def request_headers(request):
    """The request's headers as the block sees them."""
    headers = []
    for key, value in request.META.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").lower()
        else:
            continue
        if name in HOP_BY_HOP:
            continue
        if name == "cookie":
            value = strip_platform_cookies(value)
            if not value:
                continue
        if name == "authorization" and bearer(request) is not None:
            continue  # a platform token is the platform's, not the block's
        headers.append([name, value])
    headers.append(["host", request.get_host()])
    return headers


def strip_platform_cookies(header):
    kept = []
    dropped = platform_cookies()
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and name not in dropped:
            kept.append(part.strip())
    return "; ".join(kept)


def allowed_set_cookie(value):
    cookie = SimpleCookie()
    try:
        cookie.load(value)
    except Exception:
        return False
    return not (set(cookie) & platform_cookies())


def block_response(result, run_id):
    """The block's Response, from the run's result."""
    if not isinstance(result, dict) or not isinstance(result.get("status"), int):
        return error(500, "The block failed.", run_id)
    status = result["status"]
    if not 200 <= status <= 599:
        status = 500
    body = result.get("body")
    if isinstance(body, dict) and isinstance(body.get("$bytes"), str):
        content = base64.b64decode(body["$bytes"])
    elif isinstance(body, str):
        content = body.encode()
    else:
        content = b""
    response = HttpResponse(content, status=status)
    del response["Content-Type"]
    for pair in result.get("headers") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            continue
        name, value = pair[0].lower(), pair[1]
        if name in RESPONSE_DROPPED or "\n" in value or "\r" in value:
            continue
        if name == "set-cookie":
            # Django sends each cookie of response.cookies as its own Set-Cookie header.
            if allowed_set_cookie(value):
                response.cookies.load(value)
            continue
        response[name] = value
    response["X-Symposium-Run"] = run_id
    response["Content-Security-Policy"] = SANDBOX_POLICY
    return response


@csrf_exempt
async def endpoint(request, tenant, block, path=""):
    found = await on_pool_thread(find_endpoint)(tenant, block, bearer(request))
    if not isinstance(found, Block):
        return found
    block, version = found, found.deployed_version
    # The tenant and its policy as the broker reads them for every call, shared by the
    # tenant's runs on this server (at most POLICY_TTL old; the run's creation reads
    # is_active afresh, so a suspension refuses new runs at once either way).
    (block.tenant, policy, _), _ = await read_tenant_shared(block.tenant_id)
    if not block.tenant.is_active:
        return error(403, "This tenant is suspended.")
    length = request.META.get("CONTENT_LENGTH") or "0"
    limit = policy.endpoint_max_body_bytes
    if (length.isdigit() and int(length) > limit) or len(request.body) > limit:
        return error(413, f"The request body is larger than this endpoint's limit of {limit} bytes.")
    serialised = {
        "method": request.method,
        "url": request.build_absolute_uri(),
        "headers": request_headers(request),
        "body": {"$bytes": base64.b64encode(request.body).decode()} if request.body else None,
    }
    server = request.scope.get("server") or (None, settings.SYMPOSIUM_BROKER_PORT)
    try:
        run = await start_block_run(server[1], block, version, input=serialised, source="http")
    except RunRefused as e:
        status = {"PERMISSION_DENIED": 403, "RATE_LIMITED": 429, "BUSY": 429}.get(e.code, 503)
        return error(status, e.message, retry_after=e.retry_after)
    # The answer is sent as soon as the block's outcome is known; the run's record and
    # its isolate's exit follow on their own. The supervisor ends the run at the
    # profile's time limit; waiting a moment longer sees it do so.
    async with RunWatcher(run.id) as watcher:
        done = await watcher.outcome(policy.time_limit_seconds + 5)
    if done is not None:
        if done.get("ok"):
            return block_response(done.get("result"), run.id)
        # A failure is rare and about to be looked into: its record is complete first.
        await database_sync_to_async(finished_record)(run.id)
        return error(500, "The block failed; its run has the details.", run.id)
    finished = await wait_for_run(server[1], run.id, 5)
    if finished.status == "succeeded":
        return block_response(finished.result, run.id)
    if finished.status == "timed_out":
        return error(504, f"The block did not answer within its time limit of {policy.time_limit_seconds} s.", run.id)
    return error(500, "The block failed; its run has the details.", run.id)


# -- serving /b/ -------------------------------------------------------------------------

# The site's middleware that only looks at a request and sets headers on its answer:
# no session, no user, no database. Endpoints keep these (in the site's order, where the
# site has them): their answers carry the same security headers as every page.
HEADER_MIDDLEWARE = ("django.middleware.security.SecurityMiddleware", "django.middleware.common.CommonMiddleware",
                     "django.middleware.clickjacking.XFrameOptionsMiddleware")


class HeaderMiddleware:
    """HEADER_MIDDLEWARE run in place, on the event loop: they compute headers and
    redirects and touch nothing that blocks, so they need none of the thread hops with
    which Django runs a sync middleware under ASGI."""

    def __init__(self, get_response, paths):
        self.get_response = get_response
        self.middleware = [import_string(path)(get_response) for path in paths]

    async def __call__(self, request):
        response, ran = None, []
        for middleware in self.middleware:
            ran.append(middleware)
            response = middleware.process_request(request) if hasattr(middleware, "process_request") else None
            if response is not None:
                break
        if response is None:
            response = await self.get_response(request)
        for middleware in reversed(ran):
            if hasattr(middleware, "process_response"):
                response = middleware.process_response(request, response)
        return response


class EndpointHandler(ASGIHandler):
    """Django's ASGI handler for block endpoints (symposium/asgi.py sends /b/ here).

    The rest of the site's middleware (sessions, authentication, CSRF, messages) serves
    people signed in to this site, and an endpoint uses none of it: it never reads the
    session or the user (their cookies are stripped before the request reaches the
    block, see request_headers), and it is exempt from CSRF as the API is. Each of those
    would also cost the request two thread hops (Django runs a sync middleware's
    process_request and process_response through sync_to_async): about 10 ms of a 60 ms
    request on this project's test machine. HEADER_MIDDLEWARE still runs, in place."""

    def load_middleware(self, is_async=False):
        # BaseHandler.load_middleware with the chain above instead of settings.MIDDLEWARE.
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        view = convert_exception_to_response(self._get_response_async)
        paths = [path for path in settings.MIDDLEWARE if path in HEADER_MIDDLEWARE]
        self._middleware_chain = convert_exception_to_response(HeaderMiddleware(view, paths))

    def resolve_request(self, request):
        # Whatever the path, this handler serves block endpoints and nothing else: no
        # page of the site is ever served without the middleware it relies on.
        match = super().resolve_request(request)
        if match.func is not endpoint:
            raise Http404("There is no such endpoint.")
        return match
