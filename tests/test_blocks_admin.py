"""The admin's pages for saved blocks and its policy actions, as an admin uses them."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from blocks.models import ApiToken, token_digest
from blocks.service import save_block
from tenants import audit
from tenants.models import AuditLog, PolicyOverride

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def admin_client(acme):
    root = get_user_model().objects.create_superuser("root", "root@example.org", "root-password-123")
    client = Client()
    client.force_login(root)
    return client


def test_it_shows_a_new_token_once_and_revokes_it(admin_client, acme):
    page = admin_client.post("/admin/blocks/apitoken/add/", {"tenant": acme.pk, "name": "ci", "scope": "deploy",
                                                              "expires_in_days": "7"}, follow=True)
    assert page.status_code == 200
    shown = [str(m) for m in page.context["messages"] if "shown this once" in str(m)]
    token = shown[0].rsplit(" ", 1)[1]
    record = ApiToken.objects.get(name="ci")
    assert record.digest == token_digest(token) and record.expires is not None
    again = admin_client.get(f"/admin/blocks/apitoken/{record.pk}/change/")
    assert token not in again.content.decode()
    admin_client.post("/admin/blocks/apitoken/", {"action": "revoke", "_selected_action": [record.pk]})
    record.refresh_from_db()
    assert record.revoked is not None
    audit.flush()
    rows = list(AuditLog.objects.filter(capability="admin", operation__startswith="token.").values_list("operation", "message"))
    assert [r[0] for r in rows] == ["token.revoke", "token.create"] and all(r[1].startswith("root: ") for r in rows)


def test_versions_are_read_only(admin_client, acme):
    block, version, _ = save_block(acme, "hello", code="export default 1")
    assert admin_client.get(f"/admin/blocks/block/{block.pk}/change/").status_code == 200
    page = admin_client.get(f"/admin/blocks/blockversion/{version.pk}/change/")
    assert page.status_code == 200 and b'name="code"' not in page.content
    assert admin_client.post(f"/admin/blocks/blockversion/{version.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.get("/admin/tenants/blockrun/?source=api").status_code == 200


def test_suspending_asks_for_a_reason_and_is_audited(admin_client, acme):
    admin_client.post("/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [acme.pk], "reason": ""})
    acme.refresh_from_db()
    assert acme.is_active
    admin_client.post("/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [acme.pk], "reason": "unpaid invoice"})
    acme.refresh_from_db()
    assert not acme.is_active and acme.suspended_reason == "unpaid invoice"
    admin_client.post("/admin/tenants/tenant/", {"action": "reactivate", "_selected_action": [acme.pk]})
    audit.flush()
    rows = list(AuditLog.objects.filter(capability="admin", tenant=acme, operation__in=("suspend", "reactivate"),
                                        message__startswith="root").order_by("time", "id").values_list("operation", "message"))
    assert rows == [("suspend", "root: suspended the tenant: unpaid invoice"), ("reactivate", "root: reactivated the tenant")]
    assert not PolicyOverride.objects.exists()
