"""The rows of the key-value store: one per (tenant, key), in the platform's database."""

from django.db import models

from tenants.models import Tenant


class KeyValue(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="kv_entries")
    key = models.CharField(max_length=512)
    # JSON text (UTF-8) or the raw bytes the block gave, as `is_bytes` says.
    value = models.BinaryField()
    is_bytes = models.BooleanField(default=False)
    # Bytes of key and value together, counted against the profile's kv_max_bytes.
    size = models.PositiveIntegerField()
    expires = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "capabilities"
        verbose_name = "key-value entry"
        verbose_name_plural = "key-value entries"
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="kv_unique_tenant_key")]
        indexes = [models.Index(fields=["tenant", "expires"], name="kv_tenant_expires")]

    def __str__(self):
        return f"{self.tenant_id}:{self.key}"
