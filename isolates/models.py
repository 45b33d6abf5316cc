"""What the platform knows about its server processes.

Every server process that supervises runs (Daphne, or the in-process server of
`runblock`) keeps a `ServerProcess` row fresh while it lives. A run's `BlockRun.server`
names the process that supervises it; when that process's heartbeat goes stale (it was
killed, its machine died), the reaper (`isolates/reaper.py`) fails the run instead of
leaving it `running` for ever. The rows live in the platform's database, so any process
on any machine can tell which runs lost their server.
"""

from django.db import models
from django.utils import timezone


class ServerProcess(models.Model):
    # "host:pid-nonce", as written into BlockRun.server. The nonce tells apart two
    # processes with the same pid (a container restarted with the same hostname).
    name = models.CharField(max_length=100, unique=True)
    host = models.CharField(max_length=100)
    pid = models.PositiveIntegerField()
    # Which kernel and pid namespace `pid` belongs to, and when that process started
    # (in clock ticks since boot): a process on the same machine can then tell at once,
    # without waiting for the heartbeat to go stale, that the process is gone; a pid
    # reused by another process does not fool it.
    machine = models.CharField(max_length=100, blank=True)
    pid_started = models.BigIntegerField(null=True, blank=True)
    started = models.DateTimeField(default=timezone.now)
    heartbeat = models.DateTimeField(default=timezone.now, db_index=True)
    runs_in_flight = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class NpmPackage(models.Model):
    """An npm package at one exact version that an administrator has vetted, and whom
    for. Blocks import it as `npm:NAME@VERSION` once `addpackage` has fetched it into the
    package cache (isolates/packages.py); the row records which bundle that is."""

    name = models.CharField(max_length=214, help_text="The package's name on npm, with its @scope/ if it has one.")
    version = models.CharField(max_length=64, help_text="One exact version, such as 2.1.3: never a range.")
    all_tenants = models.BooleanField(default=False, help_text="Every tenant may import it.")
    tenants = models.ManyToManyField(
        "tenants.Tenant", blank=True, related_name="npm_packages", help_text="The tenants that may import it (besides every tenant, when that is ticked)."
    )
    # Set by addpackage: the bundle in the cache is named by its SHA-256, which a run
    # checks again before linking it (a cache file changed since is not used).
    sha256 = models.CharField(max_length=64, blank=True, editable=False)
    size = models.PositiveIntegerField(null=True, blank=True, editable=False)
    fetched = models.DateTimeField(null=True, blank=True, editable=False)
    added = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name", "version"]
        verbose_name = "npm package"
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="npm_package_name_version")]

    def __str__(self):
        return self.specifier

    @property
    def specifier(self):
        return f"npm:{self.name}@{self.version}"

    def clean(self):
        from django.core.exceptions import ValidationError

        from isolates.packages import PackageError, parse_specifier

        try:
            parse_specifier(self.specifier)
        except PackageError as exc:
            raise ValidationError(str(exc)) from None
