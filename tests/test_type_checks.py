"""The runner's "Check types" view (POST /runner/<tenant>/check/) through Django's test
client, with the real checker (`deno check` under the isolate sandbox). Alice owns
"acme", Victor is its viewer; Mallory owns "globex" and should have no access to Acme's
checks."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from blocks.models import MAX_CODE_BYTES
from isolates.typecheck import CHECK_LIMITS, check_slot, parse_diagnostics
from tenants.models import Membership

pytestmark = [pytest.mark.django_db]

URL = "/runner/acme/check/"


@pytest.fixture
def tenants(acme, people, make_tenant):
    victor = get_user_model().objects.create_user("victor", "victor@example.org", "victor-password-123")
    Membership.objects.create(tenant=acme, user=victor, role="viewer")
    globex = make_tenant("globex", "Interactive")
    Membership.objects.create(tenant=globex, user=people["mallory"], role="owner")
    return {"acme": acme, "globex": globex, "victor": victor, **people}


def check(user, body, url=URL):
    client = Client()
    client.force_login(user)
    return client.post(url, data=json.dumps(body), content_type="application/json")


def test_it_reports_type_errors_with_their_locations(tenants):
    response = check(tenants["alice"], {"name": "sum.ts", "code": "export default (a: number, b: number): string => a + b;\n"})
    assert response.status_code == 200, response.content
    report = response.json()
    assert report["ok"] is False
    [diagnostic] = report["diagnostics"]
    assert (diagnostic["file"], diagnostic["line"], diagnostic["column"], diagnostic["code"]) == ("sum.ts", 1, 50, "TS2322")
    assert diagnostic["message"] == "Type 'number' is not assignable to type 'string'."
    assert "/tmp/" not in response.content.decode()


def test_it_passes_a_block_with_correct_types(tenants):
    response = check(tenants["alice"], {"name": "ok.ts", "code": "export default (a: number): number => a * 2;\n"})
    assert response.json() == {"ok": True, "diagnostics": []}


def test_it_checks_typescript_blocks_only(tenants):
    response = check(tenants["alice"], {"name": "plain.js", "code": "export default 1;"})
    assert response.status_code == 400 and "TypeScript" in response.json()["error"]["message"]


def test_cant_check_types_as_a_viewer(tenants):
    response = check(tenants["victor"], {"name": "x.ts", "code": "export default 1;"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "PERMISSION_DENIED"


def test_cant_check_types_in_another_tenant(tenants):
    response = check(tenants["mallory"], {"name": "x.ts", "code": "export default 1;"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "NOT_FOUND"


def test_cant_check_a_block_larger_than_a_saved_one(tenants):
    response = check(tenants["alice"], {"name": "x.ts", "code": "//" + "x" * MAX_CODE_BYTES})
    assert response.status_code == 400


def test_cant_hold_two_checks_of_one_tenant_or_every_slot(tenants):
    with check_slot(tenants["acme"].id):
        response = check(tenants["alice"], {"name": "x.ts", "code": "export default 1;"})
        assert response.status_code == 429 and response.json()["error"]["code"] == "BUSY"
    held = [check_slot(f"other-{i}") for i in range(CHECK_LIMITS["concurrent"])]
    for slot in held:
        slot.__enter__()
    try:
        response = check(tenants["alice"], {"name": "x.ts", "code": "export default 1;"})
        assert response.status_code == 429
    finally:
        for slot in held:
            slot.__exit__(None, None, None)


def test_it_names_files_by_their_names_not_the_checkers_folder():
    output = ("TS2304 [ERROR]: Cannot find name 'nope'.\nnope;\n~~~~\n    at file:///tmp/symposium-check-abc/b.ts:3:1\n\n"
              "error: Module not found \"file:///tmp/symposium-check-abc/other.ts\".\n")
    diagnostics = parse_diagnostics(output, "/tmp/symposium-check-abc", {"/tmp/symposium-check-abc/b.ts": "b.ts"})
    assert diagnostics[0] == {"file": "b.ts", "line": 3, "column": 1, "code": "TS2304", "message": "Cannot find name 'nope'.", "severity": "error"}
    assert diagnostics[1]["message"] == 'Module not found "other.ts".'
