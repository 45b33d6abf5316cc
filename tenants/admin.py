import csv
import json

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.html import format_html

from tenants.models import (
    AuditLog,
    BlockRun,
    Membership,
    PermissionProfile,
    PolicyOverride,
    Tenant,
    TenantSecret,
)


@admin.register(PermissionProfile)
class PermissionProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "files_access", "network_access", "canvas_size", "database_access", "process_allowed", "memory_mb", "time_limit_seconds"]
    fieldsets = [
        (None, {"fields": ["name", "description"]}),
        ("Files", {"fields": ["files_access", "max_file_size", "storage_quota", "blocked_extensions", "files_rate_per_minute"]}),
        ("Network", {"fields": ["network_access", "cdn_domains", "network_rate_per_minute", "max_response_size"]}),
        ("Canvas", {"fields": ["canvas_max_width", "canvas_max_height", "canvas_formats", "canvas_max_ops", "canvas_max_per_run", "canvas_rate_per_minute"]}),
        ("Database", {"fields": ["database_access", "database_rate_per_minute", "database_statement_timeout_ms", "database_max_rows", "database_max_result_bytes"]}),
        ("Process execution", {"fields": ["process_allowed", "process_commands", "process_timeout_seconds", "process_max_output", "process_rate_per_minute"]}),
        ("Key-value store", {"fields": ["kv_max_keys", "kv_max_bytes", "kv_rate_per_minute"]}),
        ("Email", {"fields": ["email_per_hour", "email_max_recipients", "email_max_bytes", "email_max_attachment_bytes"]}),
        ("Images", {"fields": ["image_formats", "image_max_frames", "image_rate_per_minute"]}),
        ("Realtime channels", {"fields": ["realtime_max_message_bytes", "realtime_rate_per_minute"]}),
        ("Runs", {"fields": ["memory_mb", "time_limit_seconds", "cpu_time_limit_ms", "console_output_cap", "concurrent_runs", "concurrent_calls"]}),
        ("Saved blocks", {"fields": ["api_rate_per_minute", "endpoint_max_body_bytes", "max_schedules", "schedule_min_interval_minutes"]}),
    ]

    def save_model(self, request, obj, form, change):
        if change and form.changed_data:
            changes = ", ".join(f"{f}={str(form.cleaned_data.get(f))[:40]}" for f in form.changed_data)
            record_admin_action(request, "profile.change", obj.name, f"changed the {obj.name} profile: {changes}")
        super().save_model(request, obj, form, change)

    @admin.display(description="Canvas")
    def canvas_size(self, obj):
        return f"{obj.canvas_max_width}x{obj.canvas_max_height}" if obj.canvas_max_width else "none"


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class PolicyOverrideInline(admin.TabularInline):
    model = PolicyOverride
    extra = 0
    verbose_name = "limit override"
    verbose_name_plural = "Limit overrides (replace one profile setting for this tenant)"


class TenantSecretForm(forms.ModelForm):
    """The value is write-only: after saving, the admin shows a masked form of it, and
    leaving the field empty keeps the stored value. A sealed secret is given to blocks
    as a placeholder and sent only to its hosts (docs/policy.md)."""

    new_value = forms.CharField(
        label="Value", required=False, strip=False, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave empty to keep the stored value.",
    )

    class Meta:
        model = TenantSecret
        fields = ["name", "sealed", "sealed_hosts"]
        labels = {"sealed": "Sealed", "sealed_hosts": "May be sent to (sealed)"}
        widgets = {"sealed_hosts": forms.Textarea(attrs={"rows": 2, "cols": 30})}

    def clean(self):
        cleaned = super().clean()
        if not self.instance.pk and not cleaned.get("new_value") and cleaned.get("name"):
            self.add_error("new_value", "A new secret needs a value.")
        if cleaned.get("new_value"):
            # The model's own checks (a sealed value's length) see the value being set.
            self.instance.value = cleaned["new_value"]
        return cleaned

    def save(self, commit=True):
        if self.cleaned_data.get("new_value"):
            self.instance.value = self.cleaned_data["new_value"]
        return super().save(commit)


class TenantSecretInline(admin.TabularInline):
    model = TenantSecret
    form = TenantSecretForm
    extra = 0
    fields = ["name", "new_value", "stored", "sealed", "sealed_hosts"]
    readonly_fields = ["stored"]
    verbose_name = "secret (process.env)"
    verbose_name_plural = "Secrets, read by blocks as process.env (a sealed one as a placeholder, sent only to its hosts)"

    @admin.display(description="Stored value")
    def stored(self, obj):
        return obj.masked() if obj.pk else "-"


class TenantForm(forms.ModelForm):
    new_webhook_secret = forms.CharField(
        label="Webhook signing secret", required=False, strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Webhooks are signed with it (Standard Webhooks). Leave empty to keep it; "
        "enter '-' to remove it.",
    )

    class Meta:
        model = Tenant
        fields = ["slug", "name", "profile", "is_active", "suspended_reason", "network_allowed_hosts",
                  "email_sender", "email_allowed_recipients", "realtime_public_channels"]

    def save(self, commit=True):
        value = self.cleaned_data.get("new_webhook_secret")
        if value == "-":
            self.instance.webhook_secret = ""
        elif value:
            self.instance.webhook_secret = value
        return super().save(commit)


def record_admin_action(request, operation, target, message, tenant=None):
    """An admin's change to policy, as an audit row naming who made it. Written in the
    request's own transaction (not through the audit writer's queue): the change and
    its row are committed together, or neither is."""
    AuditLog.objects.create(tenant=tenant, tenant_slug=tenant.slug if tenant else "", user=request.user,
                            capability="admin", operation=operation[:40], target=target[:300], outcome="allowed",
                            message=f"{request.user.get_username()}: {message}"[:300])


def record_policy_change(request, tenant, operation, message):
    record_admin_action(request, operation, tenant.slug, message, tenant=tenant)


class SuspendActionForm(ActionForm):
    reason = forms.CharField(required=False, max_length=200, label="Reason (to suspend)")


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    action_form = SuspendActionForm
    list_display = ["slug", "name", "profile", "is_active", "has_webhook_secret", "created"]
    list_filter = ["profile", "is_active"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline, PolicyOverrideInline, TenantSecretInline]
    actions = ["suspend", "reactivate"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "profile", "is_active", "suspended_reason"]}),
        ("Network", {"fields": ["network_allowed_hosts", "new_webhook_secret", "webhook_secret_state"]}),
        ("Email", {"fields": ["email_sender", "email_allowed_recipients"]}),
        ("Realtime channels", {"fields": ["realtime_public_channels"]}),
    ]
    readonly_fields = ["webhook_secret_state"]

    @admin.display(description="Webhook secret", boolean=True)
    def has_webhook_secret(self, obj):
        return bool(obj._webhook_secret)

    @admin.display(description="Stored webhook secret")
    def webhook_secret_state(self, obj):
        return "set (hidden)" if obj._webhook_secret else "none"

    @admin.action(description="Suspend the selected tenants (give a reason)")
    def suspend(self, request, queryset):
        reason = (request.POST.get("reason") or "").strip()[:200]
        if not reason:
            messages.error(request, "Say why the tenants are suspended (the Reason field next to the action).")
            return
        for tenant in queryset:
            record_policy_change(request, tenant, "suspend", f"suspended the tenant: {reason}")
        count = queryset.update(is_active=False, suspended_reason=reason)
        messages.success(request, f"Suspended {count} tenant(s): their next runs and calls are refused.")

    @admin.action(description="Reactivate the selected tenants")
    def reactivate(self, request, queryset):
        for tenant in queryset:
            record_policy_change(request, tenant, "reactivate", "reactivated the tenant")
        count = queryset.update(is_active=True, suspended_reason="")
        messages.success(request, f"Reactivated {count} tenant(s).")

    def save_model(self, request, obj, form, change):
        if change:
            for field in ("profile", "is_active", "suspended_reason", "network_allowed_hosts"):
                if field in form.changed_data:
                    value = form.cleaned_data.get(field)
                    record_policy_change(request, obj, f"tenant.{field}"[:40], f"set {field} to {str(value)[:150]!r}")
        super().save_model(request, obj, form, change)

    def save_formset(self, request, form, formset, change):
        if formset.model is PolicyOverride:
            for inline in formset.forms:
                if inline in formset.deleted_forms and inline.instance.pk:
                    record_policy_change(request, form.instance, "override.delete", f"removed the override of {inline.instance.setting}")
                elif inline.has_changed() and inline not in formset.deleted_forms:
                    setting, value = inline.cleaned_data.get("setting"), inline.cleaned_data.get("value")
                    record_policy_change(request, form.instance, "override.set", f"set {setting} to {str(value)[:150]!r}")
        if formset.model is TenantSecret:
            for inline in formset.forms:
                # Sealing, unsealing and where a sealed secret may go are policy: audited
                # (never the value).
                if inline in formset.deleted_forms or not ({"sealed", "sealed_hosts"} & set(inline.changed_data)):
                    continue
                if inline.cleaned_data.get("sealed"):
                    hosts = " ".join(inline.instance.hosts())
                    record_policy_change(request, form.instance, "secret.seal", f"sealed {inline.instance.name} to {hosts[:150]}")
                elif "sealed" in inline.changed_data:
                    record_policy_change(request, form.instance, "secret.unseal", f"unsealed {inline.instance.name}: blocks read its value")
        super().save_formset(request, form, formset, change)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class Echo:
    def write(self, value):
        return value


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    # Narrow enough for the changelist and its filters to fit a 1440 px screen: long
    # targets are cut (their full text is the cell's tooltip), bytes share a column.
    list_display = ["when", "tenant_name", "user", "run_link", "qualified_operation", "short_target", "outcome_badge",
                    "error_code", "duration", "bytes_in_out"]
    list_display_links = ["when"]
    list_filter = ["outcome", "capability", "tenant", ("user", admin.RelatedOnlyFieldListFilter), ("time", admin.DateFieldListFilter)]
    search_fields = ["tenant_slug", "target", "operation", "error_code", "message", "run__id", "user__username"]
    date_hierarchy = "time"
    list_select_related = ["run", "user"]
    actions = ["export_csv"]
    CSV_FIELDS = ["time", "tenant_slug", "run_id", "user_id", "capability", "operation", "target", "outcome", "error_code", "message", "duration_ms", "bytes_in", "bytes_out"]

    @admin.display(description="Time (UTC)" if settings.TIME_ZONE == "UTC" else "Time", ordering="time")
    def when(self, obj):
        # To the millisecond: a run's calls often fall within the same second, and the
        # admin's default format stops at minutes.
        local = timezone.localtime(obj.time)
        return format_html('<span class="sym-time" title="{}">{}</span>', local.isoformat(),
                           f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d}")

    @admin.display(description="Tenant", ordering="tenant_slug")
    def tenant_name(self, obj):
        return obj.tenant_slug or "-"

    @admin.display(description="Operation", ordering="operation")
    def qualified_operation(self, obj):
        return obj.qualified_operation

    @admin.display(description="Run", ordering="run_id")
    def run_link(self, obj):
        return obj.run_id or "-"

    @admin.display(description="Target", ordering="target")
    def short_target(self, obj):
        return format_html('<span class="sym-cut" title="{}">{}</span>', obj.target, obj.target) if obj.target else "-"

    @admin.display(description="ms", ordering="duration_ms")
    def duration(self, obj):
        return f"{obj.duration_ms:.1f}" if obj.duration_ms is not None else "-"

    @admin.display(description="Bytes in/out")
    def bytes_in_out(self, obj):
        return f"{obj.bytes_in or 0} / {obj.bytes_out or 0}"

    @admin.display(description="Outcome", ordering="outcome")
    def outcome_badge(self, obj):
        colour = {"allowed": "#2e7d32", "denied": "#c62828", "failed": "#ef6c00"}[obj.outcome]
        return format_html('<b style="color:{}">{}</b>', colour, obj.get_outcome_display())

    def get_actions(self, request):
        # The CSV export is the only action; it must work although rows are read-only.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Export the selected rows as CSV")
    def export_csv(self, request, queryset):
        return self.csv_response(queryset)

    def changelist_view(self, request, extra_context=None):
        if request.GET.get("format") == "csv":
            # Export everything the current filters select, not only one page.
            request.GET = request.GET.copy()
            del request.GET["format"]
            return self.csv_response(self.get_changelist_instance(request).get_queryset(request))
        extra_context = {**(extra_context or {}), "csv_export": True}
        return super().changelist_view(request, extra_context)

    def csv_response(self, queryset):
        writer = csv.writer(Echo())

        def rows():
            yield writer.writerow(self.CSV_FIELDS)
            for row in queryset.order_by("time", "id").values_list(*self.CSV_FIELDS).iterator():
                yield writer.writerow(row)

        response = StreamingHttpResponse(rows(), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="symposium-audit.csv"'
        return response


# A run's fields that hold code or text printed by code, and how each is shown.
RUN_CODE_FIELDS = {"code": "code", "console": "console", "input": "json", "result": "json", "error": "code"}


@admin.register(BlockRun)
class BlockRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "tenant", "user", "source", "block", "version", "name", "status", "created", "duration", "calls", "error_code"]
    list_filter = ["status", "source", "tenant", "block"]
    search_fields = ["id", "name", "tenant__slug", "error"]
    date_hierarchy = "created"
    # Code, console, input, result and error are shown as code (monospaced, as written);
    # the rest as the admin shows any read-only field.
    CODE_FIELDS = RUN_CODE_FIELDS
    # console_times is shown with the console it dates.
    fields = readonly_fields = [f"{f.name}_shown" if f.name in RUN_CODE_FIELDS else f.name
                                for f in BlockRun._meta.fields if f.name != "console_times"]

    class Media:
        css = {"all": ["symposium/admin.css"]}

    def shown(self, obj, name):
        value = getattr(obj, name)
        if value in (None, ""):
            return "-"
        kind = self.CODE_FIELDS[name]
        text = json.dumps(value, indent=2, ensure_ascii=False) if kind == "json" else str(value)
        return format_html('<pre class="sym-pre {}">{}</pre>', kind, text)

    @admin.display(description="Code")
    def code_shown(self, obj):
        return self.shown(obj, "code")

    @admin.display(description="Input")
    def input_shown(self, obj):
        return self.shown(obj, "input")

    @admin.display(description="Result")
    def result_shown(self, obj):
        return self.shown(obj, "result")

    @admin.display(description="Error")
    def error_shown(self, obj):
        return self.shown(obj, "error")

    @admin.display(description="Console")
    def console_shown(self, obj):
        entries = obj.console_entries()
        if not any(entry["ms"] is not None for entry in entries):
            return self.shown(obj, "console")
        # Each entry with when it was printed (from the run's start), as the runner shows it.
        lines = []
        for entry in entries:
            stamp = f"+{entry['ms'] / 1000:.3f}s" if entry["ms"] is not None else ""
            level = f"[{entry['level']}] " if entry["level"] != "log" else ""
            lines.append(f"{stamp:>9}  {level}{entry['text']}")
        return format_html('<pre class="sym-pre console">{}</pre>', "\n".join(lines))
