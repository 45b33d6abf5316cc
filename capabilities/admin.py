from django.contrib import admin
from django.utils.html import format_html_join

from capabilities.email.models import OutboxMessage


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    """The embedded outbox: what blocks sent while no relay is configured. Read-only."""

    list_display = ["created", "tenant_slug", "from_email", "to", "subject"]
    list_filter = ["tenant_slug"]
    search_fields = ["subject", "to", "tenant_slug", "message_id"]
    fields = ["created", "tenant_slug", "run_id", "message_id", "from_email", "to", "cc", "bcc", "subject", "text", "html",
              "attachment_list"]
    readonly_fields = fields

    @admin.display(description="Attachments")
    def attachment_list(self, obj):
        return format_html_join(", ", "{} ({}, {} bytes)", ((a["filename"], a["contentType"], a["size"]) for a in obj.attachments)) or "-"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
