"""The runner page's "Check types": POST /runner/<tenant>/check/ with {code, name} checks
a TypeScript block's types (isolates.typecheck, the checker `runblock --check` uses) and
answers {ok, diagnostics: [{file, line, column, code, message, severity}]}.

A check costs a compiler's memory and seconds of CPU, so only members who may run blocks
may ask for one, a tenant has one check at a time, and the server a few (BUSY past that).
"""

import asyncio

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from blocks.models import MAX_CODE_BYTES
from console.saved_blocks import LOGIN_URL, Refused, body_of, json_view, member
from isolates.typecheck import TypeCheckError, check_types

STATUS_OF_CODE = {"INVALID_ARGUMENT": 400, "BUSY": 429, "TIMEOUT": 504, "INTERNAL": 500}


@require_POST
@never_cache
@login_required(login_url=LOGIN_URL)
@json_view
def check_view(request, slug):
    membership = member(request, slug, "check", write=True)
    body = body_of(request)
    code, name = body.get("code"), body.get("name")
    if not isinstance(code, str) or not isinstance(name, str) or not name.strip():
        raise Refused("INVALID_ARGUMENT", "Send the block's code and file name: {\"code\": \"...\", \"name\": \"block.ts\"}.")
    if len(code.encode(errors="replace")) > MAX_CODE_BYTES:
        raise Refused("INVALID_ARGUMENT", f"The block is larger than {MAX_CODE_BYTES // 1024} KB.")
    try:
        report = asyncio.run(check_types(code, name.strip(), owner=membership.tenant_id))
    except TypeCheckError as e:
        return JsonResponse({"error": {"code": e.code, "message": e.message}}, status=STATUS_OF_CODE.get(e.code, 400))
    return JsonResponse(report)
