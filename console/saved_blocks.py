"""The runner page's side of saved blocks: small JSON views under /runner/<tenant>/blocks/
that list a tenant's blocks, open one (its versions, endpoint, schedules and recent
runs), show one version's code, diff two versions, save the editor's code as a new
version and deploy a version.

Saving and deploying go through blocks.service, the functions the API calls, so a deploy
or rollback from the page is audited exactly as one through the API is.

Every view checks the user's membership of the tenant on the server: for someone who is
not a member the tenant and its blocks do not exist (404, and an audit row); a viewer
may read but not save or deploy (403). The POST views are behind Django's CSRF check
(the page sends the token in the X-CSRFToken header).
"""

import difflib
import json

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from blocks.api import block_document, schedule_document, version_document
from blocks.models import Block
from blocks.service import BlockError, deploy, save_block
from console.runner import membership_for, record_refusal, run_summary
from tenants.models import Tenant

LOGIN_URL = "/login/"
# Runs of one block listed with it.
RECENT_RUNS = 20
# Lines of one diff sent to the page; a longer diff is cut and says so.
MAX_DIFF_LINES = 5000
# A save request: a version's code (at most 512 KB, which JSON escaping can double),
# a message and a little JSON around them.
MAX_BODY_BYTES = 2 * 1024 * 1024
STATUS_OF_CODE = {"INVALID_ARGUMENT": 400, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "CONFLICT": 409, "TOO_LARGE": 413}


class Refused(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def error(code, message):
    return JsonResponse({"error": {"code": code, "message": message}}, status=STATUS_OF_CODE.get(code, 400))


def json_view(view):
    """Answers a Refused or BlockError as the API's error shape, {"error": {code, message}}."""

    def wrapped(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except (Refused, BlockError) as e:
            return error(e.code, e.message)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return never_cache(login_required(login_url=LOGIN_URL)(wrapped))


def member(request, slug, operation, *, write=False):
    """The user's membership of the tenant, or Refused: NOT_FOUND for a non-member (the
    answer must not tell which tenants exist), PERMISSION_DENIED for a viewer who asks
    to write, or anyone when the tenant is suspended. Refusals are audited."""
    membership = membership_for(request.user, slug)
    if membership is None:
        record_refusal(request.user, operation, "PERMISSION_DENIED", f"{request.user.get_username()} is not a member.",
                       tenant=Tenant.objects.filter(slug=slug).first(), slug=slug, target=request.path[:300])
        raise Refused("NOT_FOUND", "There is no such tenant.")
    if write and not membership.can_run:
        message = f"You are a viewer of '{membership.tenant.slug}': you can read its blocks but not save or deploy them."
        record_refusal(request.user, operation, "PERMISSION_DENIED", message, tenant=membership.tenant, target=request.path[:300])
        raise Refused("PERMISSION_DENIED", message)
    if write and not membership.tenant.is_active:
        raise Refused("PERMISSION_DENIED", "This tenant is suspended; it can change nothing.")
    return membership


def block_of(membership, slug):
    block = Block.objects.select_related("tenant", "deployed_version").filter(tenant=membership.tenant, slug=slug).first()
    if block is None:
        raise Refused("NOT_FOUND", f"There is no block {slug[:64]!r}.")
    return block


def version_of(block, number):
    version = block.versions.select_related("author").filter(number=number).first() if isinstance(number, int) else None
    if version is None:
        raise Refused("NOT_FOUND", f"The block {block.slug} has no version {number}.")
    return version


def body_of(request):
    if len(request.body) > MAX_BODY_BYTES:
        raise Refused("TOO_LARGE", f"The request is larger than {MAX_BODY_BYTES // 1024 // 1024} MB.")
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, RecursionError):
        raise Refused("INVALID_ARGUMENT", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise Refused("INVALID_ARGUMENT", "The request body is a JSON object.")
    return body


def page_block(request, block):
    """What the page shows of a block: the API's document with the endpoint as a full URL."""
    document = block_document(block)
    document["endpointUrl"] = request.build_absolute_uri(document["endpoint"])
    return document


def version_row(version, block):
    return {**version_document(version), "deployed": version.pk == block.deployed_version_id}


def block_run_row(run):
    return {**run_summary(run), "version": run.version.number if run.version_id else None}


@require_GET
@json_view
def block_list(request, slug):
    """The tenant's blocks, for the page's block menu."""
    membership = member(request, slug, "blocks")
    blocks = Block.objects.select_related("tenant", "deployed_version").filter(tenant=membership.tenant)
    return JsonResponse({"tenant": slug, "canWrite": membership.can_run,
                         "blocks": [page_block(request, b) for b in blocks]})


@require_GET
@json_view
def block_detail(request, slug, block_slug):
    """One block as the page opens it: its versions (without their code), the code of
    the version to edit (the deployed one, else the latest), its schedules and its
    recent runs."""
    membership = member(request, slug, "blocks")
    block = block_of(membership, block_slug)
    versions = list(block.versions.select_related("author").order_by("-number"))
    opened = block.deployed_version or (versions[0] if versions else None)
    runs = block.runs.select_related("user", "version").order_by("-created")[:RECENT_RUNS]
    schedules = block.schedules.select_related("block", "last_run")
    return JsonResponse({
        "tenant": slug,
        "canWrite": membership.can_run,
        "block": page_block(request, block),
        "versions": [version_row(v, block) for v in versions],
        "opened": {**version_document(opened, with_code=True), "deployed": opened.pk == block.deployed_version_id} if opened else None,
        "schedules": [{**schedule_document(s), "lastStatus": s.last_status} for s in schedules],
        "runs": [block_run_row(r) for r in runs],
    })


@require_GET
@json_view
def version_detail(request, slug, block_slug, number):
    membership = member(request, slug, "blocks")
    block = block_of(membership, block_slug)
    version = version_of(block, number)
    return JsonResponse({**version_document(version, with_code=True), "deployed": version.pk == block.deployed_version_id})


def diff_lines(old, new, old_name, new_name):
    """A unified line diff as [{kind, text}]: kind is "+" (added), "-" (removed), " "
    (context), "@" (a hunk's header) or "=" (the file names)."""
    lines = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name, lineterm="", n=3):
        if line.startswith(("---", "+++")) and len(lines) < 2:
            lines.append({"kind": "=", "text": line})
        elif line.startswith("@@"):
            lines.append({"kind": "@", "text": line})
        else:
            lines.append({"kind": line[:1] or " ", "text": line[1:]})
    return lines


@require_GET
@json_view
def version_diff(request, slug, block_slug):
    """The line diff from version `from` to version `to` (?from=1&to=2)."""
    membership = member(request, slug, "blocks")
    block = block_of(membership, block_slug)
    numbers = []
    for name in ("from", "to"):
        value = request.GET.get(name, "")
        if not value.isdigit() or len(value) > 9:
            raise Refused("INVALID_ARGUMENT", f"Name two versions to compare: ?from=N&to=M ({name} is missing or not a number).")
        numbers.append(int(value))
    old, new = (version_of(block, n) for n in numbers)
    lines = diff_lines(old.code, new.code, f"{block.slug} version {old.number}", f"{block.slug} version {new.number}")
    return JsonResponse({
        "from": old.number, "to": new.number,
        "added": sum(1 for line in lines if line["kind"] == "+"),
        "removed": sum(1 for line in lines if line["kind"] == "-"),
        "identical": not lines,
        "truncated": len(lines) > MAX_DIFF_LINES,
        "lines": lines[:MAX_DIFF_LINES],
    })


@require_POST
@json_view
def save_version(request, slug, block_slug):
    """Save the editor's code as the block's next version ({code, message?, language?});
    creates the block when the tenant has none of that slug. Code identical to the
    latest version makes no new version (`createdVersion: false`)."""
    membership = member(request, slug, "save", write=True)
    body = body_of(request)
    message = body.get("message") or ""
    language = body.get("language")
    if not isinstance(message, str) or len(message) > 500:
        raise Refused("INVALID_ARGUMENT", "The message is text of at most 500 characters.")
    if language is not None and not isinstance(language, str):
        raise Refused("INVALID_ARGUMENT", "language must be javascript or typescript.")
    created_block = not Block.objects.filter(tenant=membership.tenant, slug=block_slug).exists()
    block, version, created = save_block(membership.tenant, block_slug, code=body.get("code"), message=message.strip(),
                                         language=language if created_block else None, user=request.user)
    block = Block.objects.select_related("tenant", "deployed_version").get(pk=block.pk)
    return JsonResponse({"block": page_block(request, block), "version": version_row(version, block),
                         "createdVersion": created, "createdBlock": created_block},
                        status=201 if created else 200)


@require_POST
@json_view
def deploy_version(request, slug, block_slug):
    """Deploy a version ({version}); deploying an older one is a rollback. Audited by
    blocks.service.deploy, as the API's deploys are."""
    membership = member(request, slug, "deploy", write=True)
    block = block_of(membership, block_slug)
    number = body_of(request).get("version")
    if not isinstance(number, int) or isinstance(number, bool):
        raise Refused("INVALID_ARGUMENT", "Name the version to deploy: {\"version\": N}.")
    deploy(block, number, user=request.user)
    block = Block.objects.select_related("tenant", "deployed_version").get(pk=block.pk)
    return JsonResponse({"block": page_block(request, block)})
