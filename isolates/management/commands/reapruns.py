import time

from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from isolates.reaper import announce, reap


class Command(BaseCommand):
    help = (
        "Fail the runs whose server process stopped (its heartbeat is older than "
        "SYMPOSIUM_HEARTBEAT_STALE_SECONDS, or it is gone from this machine), so that no run "
        "stays 'running' for ever. Every server process does this on its own as well; run "
        "this from cron or a timer (or with --every) where servers may all be down."
    )

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0,
                            help="Keep running, reaping every this many seconds (0: once and exit)")

    def handle(self, every, **options):
        if every < 0:
            raise CommandError("--every takes a number of seconds, 0 or more.")
        while True:
            try:
                reaped = reap()
                announce(reaped)
            except Exception as e:
                if not every:
                    raise
                # Looping (a service): the database or Redis may be restarting; try again.
                self.stderr.write(f"Reaping failed, trying again in {every:g} s: {str(e).strip()[:200]}")
                close_old_connections()
                reaped = []
            if reaped or not every:
                self.stdout.write(f"Failed {len(reaped)} run(s) of stopped servers." + (f" ({', '.join(sorted(reaped)[:10])})" if reaped else ""))
            if not every:
                return
            time.sleep(every)
