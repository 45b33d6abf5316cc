"""The block-runner page and what it reads over HTTP: a tenant's run history, one past
run, and the files runs wrote (downloads). Plus a plain login page for members who are
not staff (the admin's login refuses them).

Every view that names a tenant checks the user's membership of it on the server. For
someone who is not a member, a tenant and its runs and files do not exist (404): the
answer must not tell an outsider which tenants there are.
"""

import os
import re
import stat
from functools import wraps
from pathlib import Path

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from capabilities.base import CapabilityError
from capabilities.files.beneath import O_DIR, open_beneath
from capabilities.files.paths import parse_tenant_path
from capabilities.registry import OPERATIONS
from console.runner import RUNNER_LIMITS, membership_for, record_refusal, run_detail, run_summary
from isolates import api_types
from tenants.models import BlockRun, Membership, Tenant
from tenants.policy import decide, effective_policy

LOGIN_URL = "/login/"
DRIVER_NOTE = ("The seed's code only defines functions; the driver appended below calls them from the default "
               "export, whose return value is the run's result (shown under Result). It prints nothing to the console.")
EXAMPLES_DIR = Path(settings.BASE_DIR) / "examples"
HISTORY_SIZE = 50

# The examples menu: the seed's code examples verbatim, the three "usage examples" with
# the driver that calls them appended (as runblock's tests run them), and the two
# blocks of our own, and one example per capability the seed names as future work. `input` is what the input field is set to when one is picked.
EXAMPLES = [
    {"key": "hello", "title": "Hello, input", "group": "Start here", "inline": (
        "// A block is an ES module. Its default export is called with the run's input,\n"
        "// and what it returns is the run's result.\n"
        "export default async function (input) {\n"
        "  console.log('Hello from a sandboxed isolate');\n"
        "  console.info('Input:', input);\n"
        "  const id = symposium.utils.generateId();\n"
        "  return { greeting: `Hello, ${input?.name ?? 'world'}!`, id };\n"
        "}\n"), "input": '{"name": "Ada"}'},
    {"key": "file-system", "title": "File system", "group": "Seed: API reference", "files": ["seed/file-system.js"]},
    {"key": "network", "title": "Network", "group": "Seed: API reference", "files": ["seed/network.js"]},
    {"key": "canvas", "title": "Canvas", "group": "Seed: API reference", "files": ["seed/canvas.js"]},
    {"key": "database", "title": "Database", "group": "Seed: API reference", "files": ["seed/database.js"],
     "note": "It reads the users and logs tables, which a tenant's database does not have at first: run "
             "Tools → \"Set up the example database tables\" once, or it fails with \"no such table: users\"."},
    {"key": "process", "title": "Process execution", "group": "Seed: API reference", "files": ["seed/process.js"]},
    {"key": "utils", "title": "Utility functions", "group": "Seed: API reference", "files": ["seed/utils.js"]},
    {"key": "process-uploaded-file", "title": "Content block with file processing", "group": "Seed: usage examples",
     "files": ["seed/process-uploaded-file.js", "drivers/process-uploaded-file.js"], "input": '{"path": "uploads/people.csv"}', "note": DRIVER_NOTE},
    {"key": "interactive-dashboard", "title": "Interactive dashboard with canvas", "group": "Seed: usage examples",
     "files": ["seed/interactive-dashboard.js", "drivers/interactive-dashboard.js"], "note": DRIVER_NOTE},
    {"key": "data-pipeline", "title": "Data pipeline with external APIs", "group": "Seed: usage examples",
     "files": ["seed/data-pipeline.js", "drivers/data-pipeline.js"], "note": DRIVER_NOTE},
    {"key": "kv", "title": "Key-value state between runs", "group": "More capabilities", "files": ["capabilities/kv.js"]},
    {"key": "email", "title": "Email with an attachment", "group": "More capabilities", "files": ["capabilities/email.js"]},
    {"key": "image", "title": "Image thumbnails", "group": "More capabilities", "files": ["capabilities/image.js"]},
    {"key": "realtime", "title": "Realtime channels", "group": "More capabilities", "files": ["capabilities/realtime.js"]},
    # It tries every capability and reports which the tenant may use: offered to all.
    {"key": "test-orchestrator", "title": "Test orchestrator (every capability)", "group": "Tools",
     "files": ["test-orchestrator.js"], "gated": False},
    {"key": "setup-database", "title": "Set up the example database tables", "group": "Tools", "files": ["setup/database.js"]},
]


def examples():
    """The menu with each example's code, read from examples/ (the files are small)."""
    menu = []
    for example in EXAMPLES:
        code = example.get("inline") or "\n".join((EXAMPLES_DIR / name).read_text() for name in example["files"])
        menu.append({"key": example["key"], "title": example["title"], "group": example["group"],
                     "code": code, "input": example.get("input", ""), "note": example.get("note", ""),
                     "name": f"{example['key']}.js", "calls": calls_of(code) if example.get("gated", True) else []})
    return menu


CALL = re.compile(r"symposium\.((?:[a-z]+\.)?[a-zA-Z]+)\s*\(")
URL = re.compile(r"""['"`](https?://[^'"`\s]+)""")
COMMAND = re.compile(r"""process\.execute\(\s*['"]([^'"]+)['"]""")


def calls_of(code):
    """The capability calls an example makes, each with arguments like the example's own
    (its first URL, its first command) for the policy to judge."""
    url = URL.search(code)
    command = COMMAND.search(code)
    sample = {
        "network": {"url": url.group(1) if url else "https://example.org/"},
        "process": {"command": command.group(1) if command else ""},
        "canvas.createCanvas": {"width": 1, "height": 1},
        "writeFile": {"path": "output/example.txt", "data": ""},
    }
    calls = []
    for name in dict.fromkeys(CALL.findall(code)):
        op = OPERATIONS.get(name)
        if op is not None:
            calls.append((op, sample.get(name, sample.get(op.capability, {}))))
    return calls


def examples_refused(tenant, menu):
    """{example key: why the tenant's policy refuses it}, for the examples that make a call
    the tenant may not make: the menu marks them instead of offering a certain failure."""
    policy = effective_policy(tenant)
    refused = {}
    for example in menu:
        for op, args in example["calls"]:
            decision = decide(policy, op, args)
            if not decision.allowed:
                refused[example["key"]] = decision.message
                break
    return refused


def with_csp(view):
    """A Content-Security-Policy for the runner's pages: scripts only from this site (the
    vendored editor included), images from here or the data: URLs of exported images,
    connections only back to this site (its websocket included). A block's output is
    only ever inserted as text, but should a bug let markup through, nothing runs."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; img-src 'self' data: blob:; "
            "style-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
        )
        return response

    return wrapped


def member_or_404(request, slug, operation):
    membership = membership_for(request.user, slug)
    if membership is None:
        record_refusal(request.user, operation, "PERMISSION_DENIED", f"{request.user.get_username()} is not a member.",
                       tenant=Tenant.objects.filter(slug=slug).first(), slug=slug, target=request.path[:300])
        raise Http404("No such tenant.")
    return membership


@never_cache
@login_required(login_url=LOGIN_URL)
@with_csp
def runner_page(request):
    memberships = list(
        Membership.objects.filter(user=request.user)
        .select_related("tenant", "tenant__profile").order_by("tenant__slug")
    )
    menu = examples()
    tenants = [
        {"slug": m.tenant.slug, "name": m.tenant.name, "role": m.role, "can_run": m.can_run,
         "profile": m.tenant.profile.name, "active": m.tenant.is_active,
         "history_url": reverse("runner-history", args=[m.tenant.slug]),
         "examples_refused": examples_refused(m.tenant, menu)}
        for m in memberships
    ]
    for example in menu:
        del example["calls"]  # the server's judgement, not for the page
    chosen = request.GET.get("tenant") or request.session.get("runner_tenant")
    selected = next((t for t in tenants if t["slug"] == chosen), tenants[0] if tenants else None)
    history = []
    if selected:
        request.session["runner_tenant"] = selected["slug"]
        history = [run_summary(r) for r in recent_runs(selected["slug"])]
    context = {
        "tenants": tenants,
        "selected": selected,
        "boot": {
            "tenants": tenants,
            "selected": selected["slug"] if selected else None,
            "history": history,
            "examples": menu,
            "limits": RUNNER_LIMITS,
            "wsPath": "/ws/runner/",
            "runUrl": reverse("runner-run", args=["TENANT", "RUN"]),
            # Saved blocks: /runner/TENANT/blocks/ and the block views under it.
            "blocksUrl": reverse("runner-blocks", args=["TENANT"]),
            # "Check types" of a TypeScript block: a POST behind the CSRF check.
            "checkUrl": reverse("runner-check", args=["TENANT"]),
            "block": request.GET.get("block", "")[:64],
            # The JSON views that save and deploy are POSTs behind the CSRF check.
            "csrfToken": get_token(request),
            "user": request.user.get_username(),
            # The symposium API's methods for the editor's completion and hover, from
            # isolates/runtime/symposium.d.ts, which authors download at typesUrl.
            "api": api_types.declarations(),
            "typesUrl": reverse("runner-types"),
        },
    }
    return render(request, "runner/runner.html", context)


@require_GET
def symposium_types(request):
    """The symposium API's TypeScript declarations, for authors' own editors. Public: it
    describes the platform, nothing of any tenant's."""
    response = HttpResponse(api_types.source(), content_type="application/typescript; charset=utf-8")
    response["Content-Disposition"] = 'inline; filename="symposium.d.ts"'
    response["Cache-Control"] = "public, max-age=3600"
    return response


def recent_runs(slug):
    return BlockRun.objects.filter(tenant__slug=slug).select_related("user").order_by("-created")[:HISTORY_SIZE]


@require_GET
@never_cache
@login_required(login_url=LOGIN_URL)
def history_json(request, slug):
    member_or_404(request, slug, "history")
    return JsonResponse({"tenant": slug, "runs": [run_summary(r) for r in recent_runs(slug)]})


@require_GET
@never_cache
@login_required(login_url=LOGIN_URL)
def run_json(request, slug, run_id):
    member_or_404(request, slug, "history")
    run = BlockRun.objects.select_related("tenant", "user").filter(pk=run_id, tenant__slug=slug).first()
    if run is None:
        raise Http404("No such run.")
    return JsonResponse(run_detail(run))


@require_GET
@never_cache
@login_required(login_url=LOGIN_URL)
def download_file(request, slug, path):
    """A file of the tenant's storage, to a member of the tenant.

    SECURITY: the path is a tenant path like a block's (capabilities.files.paths): no
    '..', no NUL or control characters, the platform's folders invisible. It is opened
    beneath the tenant's root without following any symbolic link or crossing a mount
    (capabilities.files.beneath), so a link planted in storage leads nowhere. Only regular
    files are served, always as an attachment of an opaque type with a sandboxing CSP:
    a tenant's HTML or SVG file must never run as a page of this site."""
    membership = member_or_404(request, slug, "download")
    try:
        tenant_path = parse_tenant_path(path)
    except CapabilityError:
        raise Http404("No such file.") from None
    if tenant_path.is_root or tenant_path.reserved:
        raise Http404("No such file.")
    try:
        root_fd = os.open(membership.tenant.storage_root(), O_DIR)
    except OSError:
        raise Http404("No such file.") from None
    try:
        fd = open_beneath(root_fd, tenant_path.parts, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        raise Http404("No such file.") from None
    finally:
        os.close(root_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Http404("No such file.")
    response = FileResponse(os.fdopen(fd, "rb"), as_attachment=True, filename=tenant_path.name,
                            content_type="application/octet-stream")
    response["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def no_job_queue(request):
    """What /django-rq/ shows when no Redis is configured (console/no_queue_urls.py)."""
    return render(request, "admin/no_job_queue.html", {**admin.site.each_context(request), "title": "Job queues"})


class RunnerLoginView(auth_views.LoginView):
    """A plain login page for tenants' members (the admin's login is for staff only)."""

    template_name = "runner/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        return reverse("runner")


login_view = with_csp(RunnerLoginView.as_view())
logout_view = auth_views.LogoutView.as_view(next_page=LOGIN_URL)
