"""The embedded outbox: with no relay configured (SYMPOSIUM_EMAIL_URL empty), messages
are kept here, shown in the admin, and never leave the machine."""

from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class OutboxMessage(models.Model):
    created = models.DateTimeField(default=timezone.now, db_index=True)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.SET_NULL, related_name="outbox")
    tenant_slug = models.CharField(max_length=50)
    run_id = models.CharField(max_length=32, blank=True)
    message_id = models.CharField(max_length=300)
    from_email = models.CharField(max_length=320)
    to = models.TextField(blank=True)
    cc = models.TextField(blank=True)
    bcc = models.TextField(blank=True)
    subject = models.CharField(max_length=1000, blank=True)
    text = models.TextField(blank=True)
    html = models.TextField(blank=True)
    attachments = models.JSONField(default=list, help_text="Name, type and size of each attachment.")
    # The whole message as the relay would have received it (RFC 5322 bytes).
    raw = models.BinaryField()

    class Meta:
        app_label = "capabilities"
        ordering = ["-created", "-id"]
        verbose_name = "outbox message"

    def __str__(self):
        return f"{self.subject[:60]} to {self.to[:60]}"
