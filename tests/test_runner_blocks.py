"""The runner page's saved-block views through Django's test client: listing and opening
a tenant's blocks, a version's code, the diff of two versions, saving a version and
deploying one; and who may do which.

Alice owns "acme", Bob is a member, Victor a viewer; Mallory owns "globex" and should
have no access to Acme's blocks.
"""

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from blocks.models import Block, Schedule
from blocks.service import deploy, save_block
from tenants import audit
from tenants.models import AuditLog, BlockRun, Membership

V1 = "export default () => 'one';\n"
V2 = "// the second version\nexport default () => 'two';\n"


@pytest.fixture
def tenants(acme, people, make_tenant):
    victor = get_user_model().objects.create_user("victor", "victor@example.org", "victor-password-123")
    Membership.objects.create(tenant=acme, user=victor, role="viewer")
    globex = make_tenant("globex", "Interactive")
    Membership.objects.create(tenant=globex, user=people["mallory"], role="owner")
    return {"acme": acme, "globex": globex, "victor": victor, **people}


@pytest.fixture
def hello(tenants):
    """Acme's block "hello" with versions 1 and 2, version 1 deployed."""
    block, _, _ = save_block(tenants["acme"], "hello", code=V1, message="first", user=tenants["alice"])
    save_block(tenants["acme"], "hello", code=V2, message="second", user=tenants["bob"])
    deploy(block, 1, user=tenants["alice"])
    return Block.objects.get(pk=block.pk)


@pytest.fixture
def secret(tenants):
    block, _, _ = save_block(tenants["globex"], "secret", code="export default () => 'globex only';\n", user=tenants["mallory"])
    deploy(block, 1, user=tenants["mallory"])
    return block


def as_user(user):
    client = Client()
    client.force_login(user)
    return client


def post(client, url, body):
    return client.post(url, data=json.dumps(body), content_type="application/json")


def blocks_audit(**fields):
    audit.flush()
    return list(AuditLog.objects.filter(**fields).order_by("time", "id").values_list("operation", "target", "outcome"))


# -- reading --------------------------------------------------------------------------------


def test_it_lists_only_the_tenants_own_blocks(tenants, hello, secret):
    data = as_user(tenants["victor"]).get("/runner/acme/blocks/").json()
    assert [b["slug"] for b in data["blocks"]] == ["hello"]
    assert data["blocks"][0]["deployedVersion"] == 1 and data["blocks"][0]["latestVersion"] == 2
    assert data["canWrite"] is False


def test_it_opens_a_block_with_its_versions_endpoint_schedules_and_runs(tenants, hello):
    Schedule.objects.create(block=hello, cron="0 9 * * 1-5", timezone="Europe/Paris")
    run = BlockRun.objects.create(tenant=tenants["acme"], user=tenants["alice"], code=V1, status="succeeded",
                                  source="http", block=hello, version=hello.versions.get(number=1))
    data = as_user(tenants["bob"]).get("/runner/acme/blocks/hello/").json()
    assert data["canWrite"] is True
    assert data["block"]["endpointUrl"] == "http://testserver/b/acme/hello/"
    assert data["block"]["publicEndpoint"] is False
    assert [(v["number"], v["message"], v["author"], v["deployed"]) for v in data["versions"]] == [
        (2, "second", "bob", False), (1, "first", "alice", True)]
    assert "code" not in data["versions"][0]
    # The editor gets the deployed version's code.
    assert (data["opened"]["number"], data["opened"]["code"]) == (1, V1)
    assert [(s["cron"], s["timezone"], s["enabled"]) for s in data["schedules"]] == [("0 9 * * 1-5", "Europe/Paris", True)]
    assert [(r["id"], r["source"], r["version"], r["status"]) for r in data["runs"]] == [(run.pk, "http", 1, "succeeded")]


def test_it_shows_one_versions_code(tenants, hello):
    data = as_user(tenants["victor"]).get("/runner/acme/blocks/hello/versions/2/").json()
    assert (data["number"], data["code"], data["deployed"]) == (2, V2, False)
    assert as_user(tenants["victor"]).get("/runner/acme/blocks/hello/versions/9/").status_code == 404


def test_it_diffs_two_versions_line_by_line(tenants, hello):
    data = as_user(tenants["victor"]).get("/runner/acme/blocks/hello/diff/?from=1&to=2").json()
    assert (data["from"], data["to"], data["added"], data["removed"], data["identical"]) == (1, 2, 2, 1, False)
    kinds = [(line["kind"], line["text"]) for line in data["lines"]]
    assert kinds[:2] == [("=", "--- hello version 1"), ("=", "+++ hello version 2")]
    assert kinds[2][0] == "@"
    assert ("-", "export default () => 'one';") in kinds
    assert ("+", "// the second version") in kinds and ("+", "export default () => 'two';") in kinds
    same = as_user(tenants["victor"]).get("/runner/acme/blocks/hello/diff/?from=2&to=2").json()
    assert same["identical"] is True and same["lines"] == []
    bad = as_user(tenants["victor"]).get("/runner/acme/blocks/hello/diff/?from=1")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_ARGUMENT"


def test_it_sends_anonymous_users_to_the_login_page(tenants, hello):
    response = Client().get("/runner/acme/blocks/hello/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


# -- saving and deploying -------------------------------------------------------------------


def test_a_member_saves_a_version_and_identical_code_makes_none(tenants, hello):
    client = as_user(tenants["bob"])
    code = "export default () => 'three';\n"
    response = post(client, "/runner/acme/blocks/hello/save/", {"code": code, "message": "third"})
    assert response.status_code == 201
    data = response.json()
    assert (data["createdVersion"], data["createdBlock"], data["version"]["number"]) == (True, False, 3)
    version = hello.versions.get(number=3)
    assert (version.code, version.message, version.author) == (code, "third", tenants["bob"])
    again = post(client, "/runner/acme/blocks/hello/save/", {"code": code, "message": "no change"})
    assert again.status_code == 200 and again.json()["createdVersion"] is False and again.json()["version"]["number"] == 3
    assert hello.versions.count() == 3
    # Saving does not deploy.
    assert Block.objects.get(pk=hello.pk).deployed_version.number == 1


def test_a_member_creates_a_block_by_saving_its_first_version(tenants):
    response = post(as_user(tenants["bob"]), "/runner/acme/blocks/greeter/save/",
                    {"code": "export default (i: {name: string}) => i.name;\n", "language": "typescript"})
    assert response.status_code == 201 and response.json()["createdBlock"] is True
    block = Block.objects.get(tenant=tenants["acme"], slug="greeter")
    assert (block.language, block.created_by, block.versions.count(), block.deployed_version) == ("typescript", tenants["bob"], 1, None)


def test_it_refuses_bad_saves_with_a_reason(tenants, hello):
    client = as_user(tenants["alice"])
    empty = post(client, "/runner/acme/blocks/hello/save/", {"code": "   "})
    assert empty.status_code == 400 and empty.json()["error"] == {"code": "INVALID_ARGUMENT", "message": "The block has no code."}
    bad_slug = post(client, "/runner/acme/blocks/Bad_Slug/save/", {"code": V1})
    assert bad_slug.status_code == 400 and "lowercase letters" in bad_slug.json()["error"]["message"]
    not_json = client.post("/runner/acme/blocks/hello/save/", data="{", content_type="application/json")
    assert not_json.status_code == 400 and not_json.json()["error"]["message"] == "The request body is not valid JSON."
    assert hello.versions.count() == 2


@pytest.mark.django_db(transaction=True)  # the audit writer's thread commits on its own
def test_a_member_deploys_and_rolls_back_audited_as_the_api_does(tenants, hello):
    client = as_user(tenants["bob"])
    response = post(client, "/runner/acme/blocks/hello/deploy/", {"version": 2})
    assert response.status_code == 200 and response.json()["block"]["deployedVersion"] == 2
    response = post(client, "/runner/acme/blocks/hello/deploy/", {"version": 1})
    assert response.json()["block"]["deployedVersion"] == 1
    assert blocks_audit(capability="blocks", user=tenants["bob"]) == [("deploy", "hello@2", "allowed"), ("rollback", "hello@1", "allowed")]
    audit.flush()
    row = AuditLog.objects.filter(capability="blocks", operation="rollback").get()
    assert row.message == "bob deployed version 1 of hello (was version 2)."
    missing = post(client, "/runner/acme/blocks/hello/deploy/", {"version": 7})
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "The block hello has no version 7."


@pytest.mark.django_db(transaction=True)
def test_cant_save_or_deploy_as_a_viewer(tenants, hello):
    client = as_user(tenants["victor"])
    save = post(client, "/runner/acme/blocks/hello/save/", {"code": "export default () => 'mine';\n"})
    assert save.status_code == 403 and save.json()["error"]["code"] == "PERMISSION_DENIED"
    deployed = post(client, "/runner/acme/blocks/hello/deploy/", {"version": 2})
    assert deployed.status_code == 403
    made = post(client, "/runner/acme/blocks/new-one/save/", {"code": V1})
    assert made.status_code == 403
    hello = Block.objects.get(pk=hello.pk)
    assert (hello.versions.count(), hello.deployed_version.number) == (2, 1)
    assert not Block.objects.filter(slug="new-one").exists()
    assert [(op, outcome) for op, _, outcome in blocks_audit(capability="runner", user=tenants["victor"])] == [
        ("save", "denied"), ("deploy", "denied"), ("save", "denied")]


@pytest.mark.django_db(transaction=True)
def test_cant_read_or_change_another_tenants_blocks(tenants, hello, secret):
    mallory = as_user(tenants["mallory"])
    for url in ("/runner/acme/blocks/", "/runner/acme/blocks/hello/", "/runner/acme/blocks/hello/versions/1/",
                "/runner/acme/blocks/hello/diff/?from=1&to=2"):
        response = mallory.get(url)
        assert response.status_code == 404, url
        assert b"one" not in response.content and b"alice" not in response.content
    assert post(mallory, "/runner/acme/blocks/hello/save/", {"code": "export default () => 'pwned';\n"}).status_code == 404
    assert post(mallory, "/runner/acme/blocks/hello/deploy/", {"version": 2}).status_code == 404
    # Nor through her own tenant's address, nor Alice through hers.
    assert mallory.get("/runner/globex/blocks/hello/").status_code == 404
    alice = as_user(tenants["alice"])
    assert alice.get("/runner/acme/blocks/secret/").status_code == 404
    assert post(alice, "/runner/acme/blocks/secret/deploy/", {"version": 1}).status_code == 404
    assert alice.get("/runner/globex/blocks/secret/versions/1/").status_code == 404
    hello = Block.objects.get(pk=hello.pk)
    assert (hello.versions.count(), hello.deployed_version.number) == (2, 1)
    rows = blocks_audit(capability="runner", user=tenants["mallory"], tenant_slug="acme")
    assert len(rows) == 6 and all(outcome == "denied" for _, _, outcome in rows)


def test_cant_save_or_deploy_without_the_csrf_token(tenants, hello):
    client = Client(enforce_csrf_checks=True)
    client.force_login(tenants["alice"])
    assert post(client, "/runner/acme/blocks/hello/save/", {"code": "export default () => 'forged';\n"}).status_code == 403
    assert post(client, "/runner/acme/blocks/hello/deploy/", {"version": 2}).status_code == 403
    hello = Block.objects.get(pk=hello.pk)
    assert (hello.versions.count(), hello.deployed_version.number) == (2, 1)


def test_cant_save_or_deploy_for_a_suspended_tenant(tenants, hello):
    tenants["acme"].is_active = False
    tenants["acme"].save()
    client = as_user(tenants["alice"])
    save = post(client, "/runner/acme/blocks/hello/save/", {"code": "export default () => 'x';\n"})
    assert save.status_code == 403 and "suspended" in save.json()["error"]["message"]
    assert post(client, "/runner/acme/blocks/hello/deploy/", {"version": 2}).status_code == 403
    assert client.get("/runner/acme/blocks/hello/").status_code == 200  # reading still works
