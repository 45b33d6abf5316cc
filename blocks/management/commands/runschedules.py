import asyncio
import os
import signal
import sys
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError

from blocks.schedules import ScaledClock, Scheduler
from isolates.runs import service_for_port
from isolates.server import local_server


class Command(BaseCommand):
    help = (
        "Fire due schedules, running their blocks in this process (it starts its own "
        "broker on a loopback port, as runblock does). Any number of these may run, on any "
        "number of machines, against one PostgreSQL database: each due time fires once. "
        "Runs until stopped (SIGTERM or Ctrl-C)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--for", type=float, default=None, dest="seconds",
                            help="Stop after this many seconds (default: run until stopped)")
        # A clock that runs faster than the real one, for tests of schedules that are due
        # every minute: every process given the same three values agrees on the time.
        parser.add_argument("--clock-start", default=None, help="(testing) the clock's time at --clock-origin, ISO 8601")
        parser.add_argument("--clock-origin", type=float, default=None, help="(testing) a real Unix time")
        parser.add_argument("--clock-speed", type=float, default=1.0, help="(testing) clock seconds per real second")

    def handle(self, seconds, clock_start, clock_origin, clock_speed, **options):
        clock = None
        if clock_start is not None:
            try:
                start = datetime.fromisoformat(clock_start)
            except ValueError:
                raise CommandError("--clock-start is an ISO 8601 time such as 2026-01-01T00:00:00+00:00") from None
            if start.tzinfo is None or clock_origin is None or clock_speed <= 0:
                raise CommandError("--clock-start needs a time zone, --clock-origin and a positive --clock-speed.")
            clock = ScaledClock(start, clock_origin, clock_speed)

        server = local_server()
        scheduler = Scheduler(server.port, clock=clock)
        self.stderr.write(f"Firing schedules as {scheduler.server} (broker on 127.0.0.1:{server.port}).")

        stopping = {}

        async def main():
            stop = stopping["event"] = asyncio.Event()
            task = asyncio.ensure_future(scheduler.run())
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except asyncio.TimeoutError:
                pass
            scheduler.stop()
            await task
            # Runs this process started end with it, recorded as stopped, rather than
            # being left to the reaper.
            await service_for_port(server.port).shutdown()

        def stop(*_):
            if "event" in stopping:
                server.loop.call_soon_threadsafe(stopping["event"].set)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        server.call(main())
        self.stderr.write(f"Stopped; fired {scheduler.fired} schedules.")
        sys.stdout.flush()
        sys.stderr.flush()
        # The in-process server's threads are daemons; leave without waiting for them.
        os._exit(0)
