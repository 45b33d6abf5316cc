"""Saved blocks: a block and its immutable versions, the API tokens applications call
with, and the schedules that run blocks on a cron.

A block belongs to one tenant and is named by a slug unique in that tenant. Its code
lives in versions (1, 2, 3 ... per block), which are never changed once written; the
block points at the one that is deployed. docs/blocks.md says how each is used.
"""

import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone as dj_timezone

from tenants.models import BlockRun, Tenant

LANGUAGES = [("javascript", "JavaScript"), ("typescript", "TypeScript")]
# The file name a run of a block gets: the isolate's runtime reads the language from it
# (a .ts module is TypeScript to Deno), and stack traces name the block by it.
EXTENSIONS = {"javascript": "js", "typescript": "ts"}
# Code of one version, in bytes: the runner page's limit on pasted code too.
MAX_CODE_BYTES = 512 * 1024

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$",
    "A block's slug is 1 to 64 lowercase letters, digits and dashes, not starting or ending with a dash.",
)


def code_sha256(code):
    return hashlib.sha256(code.encode()).hexdigest()


class Block(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="blocks")
    slug = models.CharField(max_length=64, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    language = models.CharField(max_length=10, choices=LANGUAGES, default="javascript")
    deployed_version = models.ForeignKey(
        "BlockVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The version that API runs, HTTP requests and schedules run.",
    )
    public_endpoint = models.BooleanField(
        default=False, help_text="Whether /b/<tenant>/<block>/ answers without a run token."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(default=dj_timezone.now)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "slug"]
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="block_slug_unique_in_tenant")]

    def __str__(self):
        return f"{self.tenant.slug}/{self.slug}"

    @property
    def file_name(self):
        return f"{self.slug}.{EXTENSIONS.get(self.language, 'js')}"

    def latest_version(self):
        return self.versions.order_by("-number").first()


class BlockVersion(models.Model):
    """One saved state of a block's code. Never changed once written."""

    block = models.ForeignKey(Block, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    code = models.TextField()
    sha256 = models.CharField(max_length=64)
    message = models.CharField(max_length=500, blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Who made it when no person did: the API token's name.
    author_token = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(default=dj_timezone.now)

    class Meta:
        ordering = ["block", "-number"]
        constraints = [models.UniqueConstraint(fields=["block", "number"], name="block_version_number_unique")]

    def __str__(self):
        return f"{self.block} v{self.number}"

    def save(self, *args, **kwargs):
        if self.pk:
            raise ValidationError("A block version cannot be changed; save a new version instead.")
        self.sha256 = code_sha256(self.code)
        super().save(*args, **kwargs)

    @property
    def author_name(self):
        if self.author_id:
            return self.author.get_username()
        return f"token {self.author_token}" if self.author_token else ""


TOKEN_PREFIX = "sym_"
SCOPES = [("run", "Run blocks"), ("deploy", "Create, save, deploy and run blocks; manage schedules")]


def token_digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    """A tenant's key to the HTTP API. Only the SHA-256 of the token is kept: it is
    shown once, when it is made, and cannot be read back."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=10, choices=SCOPES, default="run")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters, so that a person can tell tokens apart in lists and logs.
    prefix = models.CharField(max_length=16, editable=False)
    expires = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    last_used = models.DateTimeField(null=True, blank=True, editable=False)
    revoked = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(default=dj_timezone.now)

    class Meta:
        ordering = ["tenant", "-created"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.prefix}…, {self.scope})"

    @classmethod
    def issue(cls, tenant, *, name, scope, expires=None, created_by=None):
        """Make a token; returns (record, the token itself, which is not stored)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = cls.objects.create(tenant=tenant, name=name, scope=scope, expires=expires, created_by=created_by,
                                    digest=token_digest(token), prefix=token[:12])
        return record, token

    def usable(self, now=None):
        now = now or dj_timezone.now()
        return self.revoked is None and (self.expires is None or self.expires > now)

    def allows(self, scope):
        return self.scope == "deploy" or scope == "run"


class Schedule(models.Model):
    block = models.ForeignKey(Block, on_delete=models.CASCADE, related_name="schedules")
    cron = models.CharField(max_length=100, help_text="Five fields: minute hour day-of-month month day-of-week.")
    timezone = models.CharField(max_length=64, default="UTC")
    input = models.JSONField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    next_run = models.DateTimeField(null=True, blank=True, db_index=True, help_text="The next due time (empty while paused).")
    last_run = models.ForeignKey(BlockRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_fired = models.DateTimeField(null=True, blank=True, help_text="The due time of the last firing, run or skipped.")
    last_status = models.CharField(max_length=20, blank=True, help_text="started, skipped or refused, then the run's own status.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(default=dj_timezone.now)

    class Meta:
        ordering = ["block", "id"]

    def __str__(self):
        return f"{self.block} at {self.cron} ({self.timezone})"


class ScheduleFiring(models.Model):
    """One due time of a schedule, taken by exactly one scheduler process: the unique
    constraint is what two processes that both think they won cannot get past."""

    OUTCOMES = [("started", "Started"), ("skipped", "Skipped (the previous run still runs)"), ("refused", "Refused")]

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="firings")
    due = models.DateTimeField()
    fired = models.DateTimeField(default=dj_timezone.now)
    outcome = models.CharField(max_length=10, choices=OUTCOMES, default="started")
    message = models.CharField(max_length=300, blank=True)
    run = models.ForeignKey(BlockRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    server = models.CharField(max_length=100, blank=True, help_text="The scheduler process that took it.")

    class Meta:
        ordering = ["-due"]
        constraints = [models.UniqueConstraint(fields=["schedule", "due"], name="one_firing_per_due_time")]

    def __str__(self):
        return f"{self.schedule_id} at {self.due:%Y-%m-%d %H:%M} {self.outcome}"
