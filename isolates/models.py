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
