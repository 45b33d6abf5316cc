"""Daphne's development server, which on the embedded default also fires schedules.

`make up` runs this. On SQLite (one server process) the server itself fires due
schedules, so they work with nothing else started; with PostgreSQL the platform runs
`manage.py runschedules` processes instead (SYMPOSIUM_SCHEDULES_IN_SERVER says which).
"""

import asyncio

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings
# Daphne's modules above install the asyncio reactor, so twisted's comes after them.
from twisted.internet import reactor

from blocks.schedules import Scheduler

_scheduler_tasks = []


def start_scheduler(port):
    """Called by the reactor once it runs, on the server's event loop."""
    scheduler = Scheduler(port)
    _scheduler_tasks.append(asyncio.get_event_loop().create_task(scheduler.run()))


class Command(DaphneRunserver):
    help = DaphneRunserver.help + " Fires due schedules in-process when SYMPOSIUM_SCHEDULES_IN_SERVER is true."

    def inner_run(self, *args, **options):
        if settings.SYMPOSIUM_SCHEDULES_IN_SERVER:

            reactor.callWhenRunning(start_scheduler, int(self.port))
        return super().inner_run(*args, **options)
