"""Tenants, their permission profiles and overrides, secrets, the audit log and block runs.

The limits of a profile are typed model fields with validators, so the admin refuses an
impossible value with a form error. `tenants.policy` turns a tenant (its profile plus its
overrides) into the effective policy that the broker checks every call against.
"""

import re
import secrets as pysecrets
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from tenants import crypto

MB = 1024 * 1024

FILE_ACCESS = [
    ("none", "No file access"),
    ("read", "Read only"),
    ("write", "Read, write and delete files"),
    ("all", "All operations, any file type"),
]
NETWORK_ACCESS = [
    ("none", "No network"),
    ("cdn", "CDN domains only"),
    ("all", "Any public host"),
]
DATABASE_ACCESS = [
    ("none", "No database"),
    ("full", "Full SQL in the tenant's own database"),
    ("complex", "Full SQL with higher limits"),
]
CANVAS_FORMATS = ["png", "jpeg", "webp", "gif", "bmp", "tiff"]


def validate_canvas_formats(value):
    formats = split_list(value)
    unknown = [f for f in formats if f not in CANVAS_FORMATS]
    if unknown:
        raise ValidationError(
            "Unknown image format: %(unknown)s. Known formats: %(known)s.",
            params={"unknown": ", ".join(unknown), "known": ", ".join(CANVAS_FORMATS)},
        )


def validate_domain_list(value):
    for domain in split_list(value):
        if not all(part and len(part) <= 63 for part in domain.lstrip("*.").split(".")) or "/" in domain or ":" in domain:
            raise ValidationError("%(domain)s is not a host name.", params={"domain": domain})


def validate_command_list(value):
    for command in split_list(value):
        if "/" in command or not command.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValidationError(
                "%(command)s is not a command name (a bare name such as ls, without a path).",
                params={"command": command},
            )


def validate_extension_list(value):
    for ext in split_list(value):
        if not ext.startswith(".") or not ext[1:].replace("_", "").isalnum():
            raise ValidationError("%(ext)s is not a file extension such as .exe.", params={"ext": ext})


def validate_recipient_list(value):
    for item in split_list(value):
        local, at, domain = item.rpartition("@")
        if not at or not domain or "." not in domain or any(c in item for c in "<>\"' ;"):
            raise ValidationError(
                "%(item)s is not an address (alice@example.org) or a domain (@example.org).", params={"item": item}
            )


# A realtime channel's name: letters, digits and - _ . :, at most 100 characters.
CHANNEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


def validate_channel_patterns(value):
    for item in split_list(value):
        if not re.fullmatch(CHANNEL_NAME_PATTERN, item.removesuffix("*") or "x"):
            raise ValidationError(
                "%(item)s is not a channel name (letters, digits, - _ . :), optionally ending in *.", params={"item": item}
            )


def split_list(value):
    """Items of an admin-entered list, one per line or separated by commas or spaces."""
    return [item.strip().lower() for item in (value or "").replace(",", " ").split() if item.strip()]


def positive(limit=None):
    validators = [MinValueValidator(0)]
    if limit is not None:
        validators.append(MaxValueValidator(limit))
    return validators


class PermissionProfile(models.Model):
    """What blocks of a tenant may do, and how much. The seed's four profiles are made
    by a data migration (0002); admins may edit them or add their own."""

    name = models.CharField(max_length=50, unique=True)
    description = models.TextField(blank=True)

    # Files, in the tenant's own storage.
    files_access = models.CharField(max_length=10, choices=FILE_ACCESS, default="read")
    max_file_size = models.BigIntegerField(
        default=5 * MB, validators=positive(), help_text="Largest file a block may write, in bytes."
    )
    storage_quota = models.BigIntegerField(
        default=100 * MB, validators=positive(), help_text="Total bytes of the tenant's storage."
    )
    blocked_extensions = models.TextField(
        blank=True,
        validators=[validate_extension_list],
        help_text="File extensions blocks may not write (such as .exe .sh). Executable content "
        "(ELF, PE, scripts with #!) is refused too whatever the name, unless file access is 'all'.",
    )
    files_rate_per_minute = models.PositiveIntegerField(default=600, help_text="0 means no limit.")

    # Network.
    network_access = models.CharField(max_length=10, choices=NETWORK_ACCESS, default="none")
    cdn_domains = models.TextField(
        blank=True,
        validators=[validate_domain_list],
        help_text="Hosts reachable with CDN-only access, one per line. *.example.com matches subdomains.",
    )
    network_rate_per_minute = models.PositiveIntegerField(default=10, help_text="0 means no limit.")
    max_response_size = models.BigIntegerField(
        default=10 * MB, validators=positive(), help_text="Largest HTTP response body a block may receive, in bytes."
    )

    # Canvas.
    canvas_max_width = models.PositiveIntegerField(default=0, validators=positive(32768), help_text="0: no canvas.")
    canvas_max_height = models.PositiveIntegerField(default=0, validators=positive(32768), help_text="0: no canvas.")
    canvas_formats = models.CharField(
        max_length=100, blank=True, validators=[validate_canvas_formats], help_text="Export formats, e.g. png jpeg."
    )
    canvas_max_ops = models.PositiveIntegerField(default=50000, help_text="Drawing operations per canvas.")
    canvas_max_per_run = models.PositiveIntegerField(default=10, help_text="Canvases one run may create.")
    canvas_rate_per_minute = models.PositiveIntegerField(default=600, help_text="0 means no limit.")

    # Database.
    database_access = models.CharField(max_length=10, choices=DATABASE_ACCESS, default="none")
    database_rate_per_minute = models.PositiveIntegerField(default=100, help_text="0 means no limit.")
    database_statement_timeout_ms = models.PositiveIntegerField(default=5000, validators=[MinValueValidator(1)])
    database_max_rows = models.PositiveIntegerField(default=10000, validators=[MinValueValidator(1)])
    database_max_result_bytes = models.BigIntegerField(default=10 * MB, validators=[MinValueValidator(1)])

    # Process execution.
    process_allowed = models.BooleanField(default=False)
    process_commands = models.TextField(
        blank=True,
        validators=[validate_command_list],
        help_text="Commands blocks may run (bare names), unless a tenant has its own list.",
    )
    process_timeout_seconds = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    process_max_output = models.BigIntegerField(default=1 * MB, validators=[MinValueValidator(1)])
    process_rate_per_minute = models.PositiveIntegerField(default=60, help_text="0 means no limit.")

    # Key-value state between runs (docs/kv.md).
    kv_max_keys = models.PositiveIntegerField(
        default=0, help_text="Keys a tenant may keep in its key-value store. 0: no key-value store."
    )
    kv_max_bytes = models.BigIntegerField(
        default=0, validators=positive(), help_text="Total bytes of the tenant's keys and values together."
    )
    kv_rate_per_minute = models.PositiveIntegerField(default=600, help_text="0 means no limit.")

    # Email (docs/email.md). The sender and allowed recipients are the tenant's own.
    email_per_hour = models.PositiveIntegerField(default=0, help_text="Messages a tenant may send per hour. 0: no email.")
    email_max_recipients = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(1000)], help_text="To, Cc and Bcc of one message together."
    )
    email_max_bytes = models.BigIntegerField(
        default=2 * MB, validators=[MinValueValidator(1024)], help_text="Largest message (text, HTML and attachments), in bytes."
    )
    email_max_attachment_bytes = models.BigIntegerField(
        default=1 * MB, validators=[MinValueValidator(1)], help_text="Largest single attachment, in bytes."
    )

    # Image processing (docs/image.md). The largest picture is the canvas size above.
    image_formats = models.CharField(
        max_length=100, blank=True, validators=[validate_canvas_formats],
        help_text="Formats images may be read from and written to, e.g. png jpeg. Empty: no image processing.",
    )
    image_max_frames = models.PositiveIntegerField(
        default=50, validators=[MinValueValidator(1)], help_text="Frames an animated image may have."
    )
    image_rate_per_minute = models.PositiveIntegerField(default=120, help_text="0 means no limit.")

    # Realtime channels (docs/realtime.md).
    realtime_max_message_bytes = models.PositiveIntegerField(
        default=0, validators=positive(1 * MB), help_text="Largest published message, in bytes of JSON. 0: no realtime."
    )
    realtime_rate_per_minute = models.PositiveIntegerField(default=600, help_text="0 means no limit.")

    # The run itself.
    memory_mb = models.PositiveIntegerField(
        default=128, validators=[MinValueValidator(16), MaxValueValidator(8192)], help_text="V8 heap of a run, in MB."
    )
    time_limit_seconds = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(86400)], help_text="Wall-clock limit of a run."
    )
    # CPU time is a limit of its own: a run that waits (on calls, timers) costs no CPU and
    # may use its whole wall-clock time; one that computes is stopped at this budget even
    # when its wall-clock time is far from over (docs/isolates.md, "Time").
    cpu_time_limit_ms = models.PositiveIntegerField(
        default=30_000, validators=[MinValueValidator(10), MaxValueValidator(86_400_000)],
        help_text="CPU time of a run (all its threads, start-up excluded), in milliseconds. "
        "Separate from the wall-clock limit: past it the run ends with CPU_LIMIT.",
    )
    console_output_cap = models.PositiveIntegerField(
        default=1 * MB, validators=[MinValueValidator(1024)], help_text="Bytes of console output kept per run."
    )
    concurrent_runs = models.PositiveIntegerField(default=5, validators=[MinValueValidator(1)])
    concurrent_calls = models.PositiveIntegerField(
        default=4, validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Calls of a tenant that run at once on one server's threads, and RQ jobs it has in flight from one "
                  "server; never more than half of either. More wait in the tenant's own queue.",
    )

    # Saved blocks run by applications, HTTP requests and schedules (docs/blocks.md).
    api_rate_per_minute = models.PositiveIntegerField(
        default=120, help_text="API requests per minute per API token. 0 means no limit."
    )
    endpoint_max_body_bytes = models.BigIntegerField(
        default=1 * MB, validators=[MinValueValidator(0), MaxValueValidator(64 * MB)],
        help_text="Largest request body a block's HTTP endpoint accepts, in bytes.",
    )
    max_schedules = models.PositiveIntegerField(default=0, help_text="Schedules per tenant. 0: none.")
    schedule_min_interval_minutes = models.PositiveIntegerField(
        default=15, validators=[MinValueValidator(1)], help_text="Shortest time between two firings of a schedule."
    )

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.name

    def clean(self):
        width, height = self.canvas_max_width, self.canvas_max_height
        if (width == 0) != (height == 0):
            raise ValidationError("A canvas needs both a width and a height, or neither (0 and 0 for no canvas).")
        if width and not split_list(self.canvas_formats):
            raise ValidationError({"canvas_formats": "A profile with a canvas needs at least one export format."})
        if split_list(self.image_formats) and not width:
            raise ValidationError({"image_formats": "Image processing needs a canvas size: it bounds the largest picture."})
        if self.max_file_size > self.storage_quota:
            raise ValidationError({"max_file_size": "The largest file cannot be larger than the storage quota."})


# The profile fields an admin may override per tenant. Everything but the name.
OVERRIDABLE_FIELDS = [f.name for f in PermissionProfile._meta.local_fields if f.name not in ("id", "name", "description")]


class Tenant(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    profile = models.ForeignKey(PermissionProfile, on_delete=models.PROTECT, related_name="tenants")
    is_active = models.BooleanField(default=True, help_text="A suspended tenant can start no run and make no call.")
    suspended_reason = models.CharField(max_length=200, blank=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="tenants")
    network_allowed_hosts = models.TextField(
        blank=True,
        validators=[validate_domain_list],
        help_text="Hosts this tenant may reach even on a private or loopback address, one per line. "
        "This is the only way past the platform's SSRF guard; name hosts you run.",
    )
    email_sender = models.EmailField(
        blank=True, help_text="The From address of every message this tenant's blocks send. Empty: they send none."
    )
    email_allowed_recipients = models.TextField(
        blank=True, validators=[validate_recipient_list],
        help_text="Addresses (alice@example.org) or domains (@example.org) blocks may send to, one per line. "
        "Empty: any address.",
    )
    realtime_public_channels = models.TextField(
        blank=True, validators=[validate_channel_patterns],
        help_text="Realtime channels anyone may listen to without logging in, one per line; "
        "a name ending in * matches every channel it begins. Other channels are for members only.",
    )
    _webhook_secret = models.TextField(blank=True, db_column="webhook_secret")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.slug

    @property
    def webhook_secret(self):
        return crypto.decrypt(self._webhook_secret) if self._webhook_secret else ""

    @webhook_secret.setter
    def webhook_secret(self, value):
        self._webhook_secret = crypto.encrypt(value) if value else ""

    def storage_root(self):
        return settings.TENANT_STORAGE_ROOT / self.slug


class Membership(models.Model):
    ROLES = [("owner", "Owner"), ("member", "Member"), ("viewer", "Viewer (sees runs, cannot run)")]
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    role = models.CharField(max_length=10, choices=ROLES, default="member")

    class Meta:
        unique_together = [("tenant", "user")]

    def __str__(self):
        return f"{self.user} in {self.tenant} ({self.role})"

    @property
    def can_run(self):
        return self.role in ("owner", "member")


class PolicyOverride(models.Model):
    """One profile limit replaced for one tenant. The value is validated with the
    profile field's own form field, so an override is as typed as the profile."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="overrides")
    setting = models.CharField(max_length=50, choices=[(n, n.replace("_", " ")) for n in OVERRIDABLE_FIELDS])
    value = models.TextField(blank=True)

    class Meta:
        unique_together = [("tenant", "setting")]

    def __str__(self):
        return f"{self.setting} = {self.value}"

    def typed_value(self):
        field = PermissionProfile._meta.get_field(self.setting)
        value = field.formfield().clean(self.value)
        field.run_validators(value)
        return value

    def clean(self):
        if self.setting not in OVERRIDABLE_FIELDS:
            raise ValidationError({"setting": "Unknown setting."})
        try:
            self.typed_value()
        except ValidationError as e:
            raise ValidationError({"value": e.messages}) from None


secret_name_validator = RegexValidator(
    r"^[A-Z_][A-Z0-9_]*$", "A secret's name is an environment variable name: capitals, digits and _."
)


# The shortest value that can be sealed. The platform finds a sealed value in what comes
# back from the network and in its own messages by its text; a short one would be
# found in ordinary answers (and its redaction would garble them) and is guessable.
SEALED_MIN_LENGTH = 8


class TenantSecret(models.Model):
    """A value blocks of the tenant read as process.env[NAME]. Encrypted at rest.

    A sealed secret is never given to the block: process.env holds a placeholder that
    is different in every run, and the network capability puts the value in where the
    placeholder appears in a request over HTTPS to one of `sealed_hosts`, and refuses
    the request anywhere else (capabilities.network.sealed, docs/policy.md)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=100, validators=[secret_name_validator])
    encrypted_value = models.TextField()
    sealed = models.BooleanField(
        default=False,
        help_text="Blocks see a placeholder instead of the value; the platform sends the value only to the hosts below, over HTTPS.",
    )
    sealed_hosts = models.TextField(
        blank=True, validators=[validate_domain_list],
        help_text="Hosts a sealed secret may be sent to, one per line (*.example.com for its subdomains).",
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        unique_together = [("tenant", "name")]
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def value(self):
        return crypto.decrypt(self.encrypted_value)

    @value.setter
    def value(self, plaintext):
        self.encrypted_value = crypto.encrypt(plaintext)

    def masked(self):
        plain = self.value
        return "•" * 8 + (plain[-2:] if len(plain) >= 12 and not self.sealed else "")

    def hosts(self):
        """The hosts a sealed secret may be sent to, lower case."""
        return [h.lower().rstrip(".") for h in split_list(self.sealed_hosts)]

    def clean(self):
        if self.sealed and not self.hosts():
            raise ValidationError({"sealed_hosts": "A sealed secret needs at least one host it may be sent to."})
        if self.sealed and self.encrypted_value and len(self.value) < SEALED_MIN_LENGTH:
            raise ValidationError({"sealed": f"A sealed secret must be at least {SEALED_MIN_LENGTH} characters long."})

    def for_run(self):
        """What a run is given of this secret (see RunSecret)."""
        if self.sealed:
            return RunSecret(self.name, None, self.encrypted_value, tuple(self.hosts()))
        return RunSecret(self.name, self.value, "", ())


@dataclass(frozen=True, repr=False)
class RunSecret:
    """One secret as a run gets it: the value of a plain one; of a sealed one only its
    ciphertext and hosts, decrypted by the network capability at the moment it sends it.
    Its repr names it and never shows either."""

    name: str
    value: str | None
    encrypted_value: str
    hosts: tuple

    @property
    def sealed(self):
        return self.value is None

    def __repr__(self):
        return f"<RunSecret {self.name}{' sealed for ' + ' '.join(self.hosts) if self.sealed else ''}>"


def new_run_id():
    return pysecrets.token_hex(8)


class BlockRun(models.Model):
    STATUSES = [
        ("queued", "Queued"),
        ("running", "Running"),
        ("succeeded", "Succeeded"),
        ("failed", "Failed"),
        ("timed_out", "Timed out"),
        ("killed", "Killed"),
    ]
    FINISHED = ("succeeded", "failed", "timed_out", "killed")

    id = models.CharField(primary_key=True, max_length=32, default=new_run_id, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="runs")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    source = models.CharField(max_length=20, default="runblock", db_index=True,
                              help_text="runblock, runner, api, http or schedule")
    # The saved block and version that ran; empty for pasted code. By name: the blocks
    # app builds on this one, not the other way round.
    block = models.ForeignKey("blocks.Block", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    version = models.ForeignKey("blocks.BlockVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    name = models.CharField(max_length=200, blank=True, help_text="The block's file name, where it had one.")
    code = models.TextField()
    input = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=STATUSES, default="queued", db_index=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=30, blank=True)
    error = models.TextField(blank=True)
    # The rest of a failed run's error, in the block's terms (isolates/errors.py):
    # {name, stack, frames: [{file, line, column, function}], codeFrame}.
    error_detail = models.JSONField(null=True, blank=True)
    console = models.TextField(blank=True, help_text="Console output, capped by the profile.")
    # When each console entry was printed, in ms from the run's start, one item per entry
    # (a console call): an int, or [ms, lines] for an entry of several lines.
    console_times = models.JSONField(null=True, blank=True, editable=False)
    console_truncated = models.BooleanField(default=False)
    calls = models.PositiveIntegerField(default=0)
    bytes_in = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    cpu_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="CPU time the run used (all the isolate's threads, from its assignment on), in ms."
    )
    server = models.CharField(max_length=100, blank=True, help_text="The server process that ran it.")
    # The isolate proves which run it is with a one-time token; only its hash is kept.
    token_hash = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    token_used = models.BooleanField(default=False, editable=False)

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return f"run {self.id} of {self.tenant}"

    def console_entries(self):
        """The console as entries, one per console call: {level, text, ms}, where `ms` is
        when it was printed (from the run's start; None for runs recorded without times).
        The stored console keeps warnings, errors and debug output as "[level] text"."""
        if not self.console:
            return []
        lines = self.console.split("\n")
        times = self.console_times if isinstance(self.console_times, list) else []
        entries, at = [], 0
        for item in times:
            if at >= len(lines):
                break
            if isinstance(item, int):
                ms, count = item, 1
            elif isinstance(item, list) and len(item) == 2 and all(isinstance(n, int) for n in item):
                ms, count = item
            else:
                break
            entries.append(_console_entry("\n".join(lines[at:at + max(1, count)]), ms))
            at += max(1, count)
        entries.extend(_console_entry(line, None) for line in lines[at:])
        return entries

    @property
    def duration(self):
        if self.started and self.finished:
            return (self.finished - self.started).total_seconds()
        return None


def _console_entry(text, ms):
    for level in ("warn", "error", "debug"):
        if text.startswith(f"[{level}] "):
            return {"level": level, "text": text[len(level) + 3:], "ms": ms}
    return {"level": "log", "text": text, "ms": ms}


class AuditLog(models.Model):
    OUTCOMES = [("allowed", "Allowed"), ("denied", "Denied"), ("failed", "Failed")]

    time = models.DateTimeField(default=timezone.now, db_index=True)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.SET_NULL, related_name="audit")
    tenant_slug = models.CharField(max_length=50, help_text="Kept when the tenant is deleted.")
    run = models.ForeignKey(BlockRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    capability = models.CharField(max_length=20, db_index=True)
    operation = models.CharField(max_length=40)
    target = models.CharField(max_length=300, blank=True, help_text="Path, host, command or statement fingerprint.")
    outcome = models.CharField(max_length=10, choices=OUTCOMES, db_index=True)
    error_code = models.CharField(max_length=30, blank=True)
    message = models.CharField(max_length=300, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    bytes_in = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-time", "-id"]
        indexes = [models.Index(fields=["tenant", "time"])]

    def __str__(self):
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.tenant_slug} {self.qualified_operation} {self.outcome}"

    @property
    def qualified_operation(self):
        """The operation with its capability, once: most operations are named with it
        already (`process.execute`), the file operations are not (`readFile`)."""
        if self.operation.startswith(f"{self.capability}."):
            return self.operation
        return f"{self.capability}.{self.operation}"

    def save(self, *args, **kwargs):
        # Append-only: a row, once written, is never changed.
        if self.pk and not kwargs.pop("force_insert", False):
            raise ValidationError("Audit log rows cannot be changed.")
        super().save(*args, **kwargs)
