"""What an administrator does in the Django admin, through the test client."""

import csv
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from tenants.models import AuditLog, PermissionProfile, PolicyOverride, Tenant, TenantSecret


@pytest.fixture
def admin_client(client, db):
    user = get_user_model().objects.create_superuser("root", "root@example.org", "root-password-123")
    client.force_login(user)
    return client


def tenant_form(profile, **extra):
    data = {
        "slug": "globex", "name": "Globex", "profile": profile.pk, "is_active": "on",
        "suspended_reason": "", "network_allowed_hosts": "", "new_webhook_secret": "",
    }
    for prefix in ("membership_set", "overrides", "secrets"):
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0", f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"})
    data.update(extra)
    return data


def test_it_creates_a_tenant_with_an_override_and_a_secret(admin_client, profiles):
    data = tenant_form(
        profiles["Interactive"],
        **{
            "overrides-TOTAL_FORMS": "1", "overrides-0-setting": "max_file_size", "overrides-0-value": "20971520",
            "secrets-TOTAL_FORMS": "1", "secrets-0-name": "API_KEY", "secrets-0-new_value": "sk-live-very-secret-1234",
            "new_webhook_secret": "whsec_c2VjcmV0",
        },
    )
    response = admin_client.post("/admin/tenants/tenant/add/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    tenant = Tenant.objects.get(slug="globex")
    assert PolicyOverride.objects.get(tenant=tenant).typed_value() == 20971520
    secret = TenantSecret.objects.get(tenant=tenant)
    assert secret.value == "sk-live-very-secret-1234"
    assert "sk-live" not in secret.encrypted_value  # encrypted at rest
    assert tenant.webhook_secret == "whsec_c2VjcmV0"

    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/change/").content.decode()
    assert "sk-live-very-secret-1234" not in page and "whsec_c2VjcmV0" not in page
    assert "••••••••34" in page


def test_it_keeps_a_secret_when_its_field_is_left_empty(admin_client, acme):
    secret = TenantSecret(tenant=acme, name="API_KEY")
    secret.value = "original-value-123"
    secret.save()
    data = tenant_form(acme.profile, slug="acme", name="Acme", **{
        "secrets-TOTAL_FORMS": "1", "secrets-INITIAL_FORMS": "1", "secrets-0-id": str(secret.pk),
        "secrets-0-tenant": str(acme.pk), "secrets-0-name": "API_KEY", "secrets-0-new_value": "",
    })
    response = admin_client.post(f"/admin/tenants/tenant/{acme.pk}/change/", data)
    assert response.status_code == 302
    secret.refresh_from_db()
    assert secret.value == "original-value-123"


@pytest.mark.parametrize(
    "setting,value",
    [("max_file_size", "-5"), ("canvas_formats", "png svg"), ("memory_mb", "lots"), ("files_access", "root")],
)
def test_it_refuses_impossible_overrides_with_a_form_error(admin_client, profiles, setting, value):
    data = tenant_form(profiles["Interactive"], **{
        "overrides-TOTAL_FORMS": "1", "overrides-0-setting": setting, "overrides-0-value": value,
    })
    response = admin_client.post("/admin/tenants/tenant/add/", data)
    assert response.status_code == 200
    assert "Please correct the error" in response.content.decode()
    assert not Tenant.objects.filter(slug="globex").exists()


def profile_form(profile, **changes):
    from django.forms.models import model_to_dict

    data = {k: ("" if v is None else v) for k, v in model_to_dict(profile).items() if k != "id"}
    data = {k: ("on" if v is True else v) for k, v in data.items() if v is not False}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"max_file_size": "-1"}, "greater than or equal to 0"),
        ({"canvas_max_width": "0"}, "both a width and a height"),
        ({"canvas_formats": "png svg"}, "Unknown image format: svg"),
        ({"canvas_formats": ""}, "at least one export format"),
        ({"memory_mb": "1"}, "greater than or equal to 16"),
        ({"process_commands": "ls /bin/sh"}, "without a path"),
    ],
)
def test_it_refuses_impossible_profile_limits(admin_client, profiles, changes, message):
    profile = profiles["Interactive"]
    response = admin_client.post(f"/admin/tenants/permissionprofile/{profile.pk}/change/", profile_form(profile, **changes))
    assert response.status_code == 200
    assert message in response.content.decode()
    profile.refresh_from_db()
    assert profile.canvas_max_width == 1920 and profile.max_file_size == 5 * 1024 * 1024


def test_it_edits_a_profile(admin_client, profiles):
    profile = profiles["Data"]
    response = admin_client.post(f"/admin/tenants/permissionprofile/{profile.pk}/change/", profile_form(profile, network_rate_per_minute="90"))
    assert response.status_code == 302
    profile.refresh_from_db()
    assert profile.network_rate_per_minute == 90


def test_the_audit_log_is_read_only_and_exports_csv(admin_client, acme):
    AuditLog.objects.create(tenant=acme, tenant_slug="acme", capability="files", operation="writeFile",
                            target="out.txt", outcome="denied", error_code="PERMISSION_DENIED")
    AuditLog.objects.create(tenant=acme, tenant_slug="acme", capability="network", operation="network.fetch",
                            target="api.example.com", outcome="allowed", duration_ms=12.5)
    row = AuditLog.objects.first()
    listing = admin_client.get("/admin/tenants/auditlog/?outcome__exact=denied")
    assert listing.status_code == 200
    assert "writeFile" in listing.content.decode() and "network.fetch" not in listing.content.decode()
    assert admin_client.get("/admin/tenants/auditlog/add/").status_code == 403
    change = admin_client.post(f"/admin/tenants/auditlog/{row.pk}/change/", {"outcome": "allowed"})
    assert change.status_code == 403
    assert admin_client.post(f"/admin/tenants/auditlog/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditLog.objects.count() == 2

    export = admin_client.get("/admin/tenants/auditlog/?capability__exact=files&format=csv")
    assert export["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert rows[0][:4] == ["time", "tenant_slug", "run_id", "user_id"]
    assert len(rows) == 2 and rows[1][5] == "writeFile" and rows[1][7] == "denied"


def test_audit_rows_cannot_be_changed_in_code_either(acme):
    from django.core.exceptions import ValidationError

    row = AuditLog.objects.create(tenant=acme, tenant_slug="acme", capability="files", operation="readFile", outcome="allowed")
    row.outcome = "denied"
    with pytest.raises(ValidationError):
        row.save()


def test_suspending_a_tenant_from_the_list(admin_client, acme):
    response = admin_client.post("/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [acme.pk],
                                                            "reason": "abuse report"})
    assert response.status_code == 302
    acme.refresh_from_db()
    assert not acme.is_active and acme.suspended_reason == "abuse report"


def test_createtenant_makes_a_tenant(db, capsys):
    call_command("createtenant", "initech", "--profile", "data")
    tenant = Tenant.objects.get(slug="initech")
    assert tenant.profile.name == "Data" and tenant.storage_root().is_dir()
    assert "Created tenant initech with the Data profile." in capsys.readouterr().out


def test_createtenant_names_the_profiles_when_one_is_unknown(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Profiles: Basic, Interactive, Data, Advanced"):
        call_command("createtenant", "initech", "--profile", "gold")


def test_a_login_link_works_once(client, db, capsys):
    call_command("loginlink", "--base-url", "http://testserver")
    url = capsys.readouterr().out.split(": ", 1)[1].strip().replace("http://testserver", "")
    assert client.get(url).status_code == 302
    assert client.get("/admin/").status_code == 200
    client.logout()
    assert client.get(url).status_code == 403
    assert client.get("/admin/").status_code == 302
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser and not user.has_usable_password()


def test_a_forged_login_link_is_refused(client, db):
    assert client.get("/login/not-a-token/").status_code == 403


def test_the_profiles_exist_after_migrate(db):
    assert list(PermissionProfile.objects.values_list("name", flat=True)) == ["Basic", "Interactive", "Data", "Advanced"]


@pytest.mark.django_db(transaction=True)
def test_deleting_a_tenant_deletes_its_storage(admin_client, make_tenant):
    tenant = make_tenant("doomed", "Data")
    (tenant.storage_root() / "notes.txt").write_text("bye")
    response = admin_client.post(f"/admin/tenants/tenant/{tenant.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Tenant.objects.filter(slug="doomed").exists()
    assert not tenant.storage_root().exists()
