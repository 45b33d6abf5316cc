"""The admin's view of saved blocks: blocks with their versions (read only: a version
is never changed), schedules, and API tokens (a new token is shown once; revoking is an
action). Token creation and revocation are audit rows naming the admin."""

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from blocks import schedules as scheduling
from blocks.models import ApiToken, Block, BlockVersion, Schedule, ScheduleFiring
from tenants.admin import record_admin_action


class VersionInline(admin.TabularInline):
    model = BlockVersion
    fields = ["number", "sha256", "message", "author", "author_token", "created"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Block)
class BlockAdmin(admin.ModelAdmin):
    list_display = ["slug", "tenant", "language", "deployed_version", "public_endpoint", "updated"]
    list_filter = ["tenant", "language", "public_endpoint"]
    search_fields = ["slug", "name", "tenant__slug"]
    fields = ["tenant", "slug", "name", "description", "language", "public_endpoint", "deployed_version", "created_by", "created"]
    readonly_fields = ["deployed_version", "created_by", "created"]
    inlines = [VersionInline]

    def get_readonly_fields(self, request, obj=None):
        # A block's tenant and slug name it in URLs and runs: fixed once made.
        return self.readonly_fields + (["tenant", "slug"] if obj else [])


@admin.register(BlockVersion)
class BlockVersionAdmin(admin.ModelAdmin):
    list_display = ["block", "number", "sha256", "message", "author", "author_token", "created"]
    list_filter = ["block__tenant"]
    search_fields = ["block__slug", "message", "sha256"]
    readonly_fields = ["block", "number", "code", "sha256", "message", "author", "author_token", "created"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = ["block", "cron", "timezone", "input", "enabled"]

    def clean(self):
        data = super().clean()
        block = data.get("block")
        if block is not None and data.get("cron"):
            try:
                scheduling.check_allowed(block.tenant, data["cron"], data.get("timezone") or "UTC",
                                         adding=self.instance.pk is None)
            except scheduling.ScheduleError as e:
                raise forms.ValidationError(e.message) from None
        return data


class FiringInline(admin.TabularInline):
    model = ScheduleFiring
    fields = ["due", "fired", "outcome", "message", "run", "server"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    ordering = ["-due"]


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ["block", "cron", "timezone", "enabled", "next_run", "last_fired", "last_status"]
    list_filter = ["enabled", "block__tenant"]
    readonly_fields = ["next_run", "last_run", "last_fired", "last_status"]
    inlines = [FiringInline]

    def save_model(self, request, obj, form, change):
        scheduling.schedule_next_run(obj)
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


class TokenForm(forms.ModelForm):
    expires_in_days = forms.IntegerField(required=False, min_value=1, help_text="Empty: never expires.")

    class Meta:
        model = ApiToken
        fields = ["tenant", "name", "scope"]


def record_token(request, token, operation, message):
    record_admin_action(request, operation, token.prefix, message, tenant=token.tenant)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "scope", "prefix", "created", "expires", "last_used", "revoked"]
    list_filter = ["tenant", "scope"]
    search_fields = ["name", "prefix", "tenant__slug"]
    actions = ["revoke"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = TokenForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["tenant", "name", "scope", "expires_in_days"]
        return ["tenant", "name", "scope", "prefix", "created", "created_by", "expires", "last_used", "revoked"]

    def get_readonly_fields(self, request, obj=None):
        return ["tenant", "name", "scope", "prefix", "created", "created_by", "expires", "last_used", "revoked"] if obj else []

    def has_change_permission(self, request, obj=None):
        # A token is made and revoked, never edited (its scope is what was handed out).
        return obj is None and super().has_change_permission(request)

    def save_model(self, request, obj, form, change):
        days = form.cleaned_data.get("expires_in_days")
        record, token = ApiToken.issue(obj.tenant, name=obj.name, scope=obj.scope, created_by=request.user,
                                       expires=timezone.now() + timedelta(days=days) if days else None)
        obj.pk, obj.digest, obj.prefix = record.pk, record.digest, record.prefix
        record_token(request, record, "token.create", f"made the {record.scope} token {record.name}")
        messages.warning(request, f"The new token, shown this once (only its hash is kept): {token}")

    def message_user(self, request, message, *args, **kwargs):
        # The "was added successfully" line would come after the token: keep it short.
        if "was added successfully" in str(message):
            return None
        return super().message_user(request, message, *args, **kwargs)

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        tokens = list(queryset.filter(revoked__isnull=True).select_related("tenant"))
        for token in tokens:
            record_token(request, token, "token.revoke", f"revoked the {token.scope} token {token.name}")
        ApiToken.objects.filter(pk__in=[t.pk for t in tokens]).update(revoked=timezone.now())
        messages.success(request, f"Revoked {len(tokens)} token(s); requests with them now get 401.")
