"""Schedules: checking a cron expression against the tenant's profile, and firing due
schedules exactly once per due time, however many scheduler processes run.

The claim. Every scheduler process looks for enabled schedules whose `next_run` has
passed. Taking one is a single transaction that (1) locks the schedule's row, skipping
rows another process holds (PostgreSQL's SELECT ... FOR UPDATE SKIP LOCKED; SQLite has
one writer at a time anyway), (2) moves `next_run` forward with a compare-and-set on
the old value, and (3) inserts the firing row, unique per (schedule, due time). A
process that lost any of the three steps takes nothing. So a due time is fired once,
on PostgreSQL across machines as on SQLite, and a process that dies after the claim
leaves a firing row saying what was taken.

Downtime: a schedule whose `next_run` is long past fires once, for the latest due time
that passed, and its next run is the first due time after now.
Overlap: when the schedule's previous run has not ended, the firing is recorded as
skipped and no run starts.
"""

import asyncio
import logging
import time
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from channels.db import database_sync_to_async
from cronsim import CronSim, CronSimError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from blocks.models import Schedule, ScheduleFiring
from blocks.service import start_block_run
from isolates import reaper
from isolates.runs import RunRefused
from tenants.models import BlockRun
from tenants.policy import effective_policy

logger = logging.getLogger(__name__)

# How many upcoming firings are compared to find a cron's shortest interval. Enough to
# cover the patterns that repeat within a day at minute resolution (and far more).
INTERVAL_SAMPLES = 1500
# How long a scheduler sleeps at most between two looks for due schedules: a schedule
# made or changed by another process is seen within this time.
POLL_SECONDS = 1.0
# A due schedule is claimed, and its run prepared (row, isolate, hello), up to this
# long before its due time; its block starts at the due time itself. What starting a
# run costs (the database, an isolate, twenty schedules due in the same minute) is paid
# before the due time instead of after it. Never more than 40% of a minute of the
# scheduler's clock, so that a schedule due every minute is not claimed while the
# previous firing still runs (a clock run faster in tests has shorter minutes).
LEAD_SECONDS = 1.0
# Due schedules one process takes per look; the rest wait for the next look (or for
# another process).
CLAIM_BATCH = 50


class ScheduleError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.message = message


def zone(name):
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{name!r} is not a time zone (use a name such as UTC or Europe/Paris).") from None


def parse_cron(expression, tz_name):
    """Check a 5-field cron expression and time zone; returns the zone."""
    tz = zone(tz_name)
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ScheduleError("A cron expression has five fields: minute hour day-of-month month day-of-week.")
    try:
        next(CronSim(expression, datetime.now(tz)))
    except (CronSimError, StopIteration) as e:
        raise ScheduleError(f"{expression!r} is not a cron expression: {e}") from None
    return tz


def shortest_interval(expression, tz, start=None):
    """The shortest time between two consecutive firings, over the next samples."""
    it = CronSim(expression, start or datetime(2026, 1, 1, tzinfo=tz))
    previous = next(it)
    shortest = None
    for _ in range(INTERVAL_SAMPLES):
        try:
            current = next(it)
        except StopIteration:
            break
        gap = current - previous
        shortest = gap if shortest is None or gap < shortest else shortest
        previous = current
    return shortest


def check_allowed(tenant, expression, tz_name, *, adding):
    """Refuse a schedule the tenant's profile does not allow, saying the limit."""
    tz = parse_cron(expression, tz_name)
    policy = effective_policy(tenant)
    if adding:
        count = Schedule.objects.filter(block__tenant=tenant).count()
        if policy.max_schedules == 0:
            raise ScheduleError(f"The {policy.profile_name} profile allows no schedules.")
        if count >= policy.max_schedules:
            raise ScheduleError(f"This tenant has {count} schedules, the limit of its {policy.profile_name} profile.")
    gap = shortest_interval(expression, tz)
    limit = timedelta(minutes=policy.schedule_min_interval_minutes)
    if gap is not None and gap < limit:
        raise ScheduleError(
            f"{expression!r} fires every {int(gap.total_seconds() // 60)} min at its most frequent; the "
            f"{policy.profile_name} profile allows at most one firing every {policy.schedule_min_interval_minutes} min."
        )
    return tz


def next_due(expression, tz_name, after):
    """The first due time strictly after `after` (aware), in UTC."""
    return next(CronSim(expression, after.astimezone(zone(tz_name)))).astimezone(dt_timezone.utc)


def latest_due(expression, tz_name, now):
    """The latest due time at or before `now`, in UTC."""
    # CronSim excludes its start; a due time exactly at `now` counts as passed.
    return next(CronSim(expression, (now + timedelta(seconds=1)).astimezone(zone(tz_name)), reverse=True)).astimezone(dt_timezone.utc)


def schedule_next_run(schedule, now=None):
    """Set the schedule's next due time from now (paused: none)."""
    schedule.next_run = next_due(schedule.cron, schedule.timezone, now or timezone.now()) if schedule.enabled else None


# -- clocks ---------------------------------------------------------------------------


class WallClock:
    """The real time."""

    speed = 1.0

    def now(self):
        return timezone.now()

    def real_time(self, moment):
        """The Unix time at which this clock shows `moment`."""
        return moment.timestamp()


@dataclass
class ScaledClock:
    """Time that passes `speed` times faster than the real time, from `start` (aware) at
    the real Unix time `origin`: for tests of schedules due every minute that must not
    take minutes. Every process given the same three numbers agrees on the time."""

    start: datetime
    origin: float
    speed: float

    def now(self):
        return self.start + timedelta(seconds=(time.time() - self.origin) * self.speed)

    def real_time(self, moment):
        return self.origin + (moment - self.start).total_seconds() / self.speed


# -- claiming and firing ----------------------------------------------------------------


@dataclass
class Claim:
    firing_id: int
    schedule_id: int
    due: datetime
    overlap: bool


def claim_due(now, server, lead=timedelta(0)):
    """Take the schedules due at `now` (or within `lead` after it) that no other
    process took. Returns claims; a claim's due time may be up to `lead` ahead."""
    claims = []
    horizon = now + lead
    with transaction.atomic():
        due = Schedule.objects.filter(enabled=True, next_run__lte=horizon).order_by("next_run")
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True, of=("self",))
        for schedule in list(due[:CLAIM_BATCH]):
            claim = _claim_one(schedule, now, horizon, server)
            if claim is not None:
                claims.append(claim)
    return claims


def _claim_one(schedule, now, horizon, server):
    due = latest_due(schedule.cron, schedule.timezone, horizon)
    if due < schedule.next_run:
        # The cron or time zone changed since next_run was set: nothing passed yet.
        due = schedule.next_run
    overlap = schedule.last_run_id is not None and BlockRun.objects.filter(
        pk=schedule.last_run_id, status__in=("queued", "running")).exists()
    if overlap and due > now:
        # Ahead of time, the previous run may yet end before the due time: decide
        # about the overlap at the due time, as without a lead.
        return None
    following = next_due(schedule.cron, schedule.timezone, horizon)
    moved = Schedule.objects.filter(pk=schedule.pk, enabled=True, next_run=schedule.next_run).update(next_run=following)
    if moved != 1:
        return None  # another process moved it first
    try:
        with transaction.atomic():
            firing = ScheduleFiring.objects.create(
                schedule=schedule, due=due, server=server, outcome="skipped" if overlap else "started",
                message="The previous run of this schedule was still running." if overlap else "",
            )
    except IntegrityError:
        return None  # this due time was fired already
    if overlap:
        Schedule.objects.filter(pk=schedule.pk).update(last_fired=due, last_status="skipped")
    return Claim(firing.pk, schedule.pk, due, overlap)


def record_started(claim, run):
    ScheduleFiring.objects.filter(pk=claim.firing_id).update(run=run)
    Schedule.objects.filter(pk=claim.schedule_id).update(last_run=run, last_fired=claim.due, last_status="started")


def record_refused(claim, message):
    ScheduleFiring.objects.filter(pk=claim.firing_id).update(outcome="refused", message=message[:300])
    Schedule.objects.filter(pk=claim.schedule_id).update(last_fired=claim.due, last_status="refused")


def schedule_for_run(schedule_id):
    schedule = Schedule.objects.select_related("block__tenant__profile", "block__deployed_version").get(pk=schedule_id)
    return schedule, schedule.block, schedule.block.deployed_version


def earliest_next_run():
    return Schedule.objects.filter(enabled=True, next_run__isnull=False).order_by("next_run").values_list("next_run", flat=True).first()


class Scheduler:
    """Fires due schedules on the run service of one server process, for as long as
    `run()` runs. Any number of schedulers may run against one database."""

    def __init__(self, port, clock=None, server=None):
        self.port = port
        self.clock = clock or WallClock()
        self.server = server or reaper.new_server_name()
        self.fired = 0
        self.stopping = None
        # The lead in the clock's time (LEAD_SECONDS of real time, at most 40% of one
        # of the clock's minutes).
        self.lead = timedelta(seconds=min(LEAD_SECONDS * self.clock.speed, 24.0))

    def stop(self):
        """Stop after the look in progress (call on the loop it runs on): a due time it
        claimed is always fired, never left half done."""
        if self.stopping is not None:
            self.stopping.set()

    async def run(self):
        self.stopping = asyncio.Event()
        while not self.stopping.is_set():
            try:
                claims = await database_sync_to_async(claim_due)(self.clock.now(), self.server, self.lead)
                # Schedules due at the same time start together, not one after another.
                outcomes = await asyncio.gather(*(self.fire(claim, start_block_run) for claim in claims if not claim.overlap),
                                                return_exceptions=True)
                for outcome in outcomes:
                    if isinstance(outcome, Exception):
                        logger.error("starting the run of a due schedule failed", exc_info=outcome)
                soonest = await database_sync_to_async(earliest_next_run)()
            except Exception:
                # The database restarting, say: the next look tries again.
                logger.exception("looking for due schedules failed")
                soonest = None
            wait = POLL_SECONDS
            if soonest is not None:
                wait = min(wait, max(0.0, (soonest - self.lead - self.clock.now()).total_seconds() / self.clock.speed))
            try:
                await asyncio.wait_for(self.stopping.wait(), max(wait, 0.01))
            except asyncio.TimeoutError:
                pass

    async def fire(self, claim, start_block_run):
        try:
            schedule, block, version = await database_sync_to_async(schedule_for_run)(claim.schedule_id)
            if version is None:
                return await database_sync_to_async(record_refused)(claim, "The block has no deployed version.")
            run = await start_block_run(self.port, block, version, input=schedule.input, source="schedule",
                                        not_before=self.clock.real_time(claim.due))
        except RunRefused as e:
            return await database_sync_to_async(record_refused)(claim, e.message)
        except Schedule.DoesNotExist:
            return None
        except Exception:
            # The firing row must not claim a run that never started.
            try:
                await database_sync_to_async(record_refused)(claim, "The platform could not start the run; the error is logged.")
            except Exception:
                pass  # the database itself is down; the firing row stays as claimed
            raise
        self.fired += 1
        await database_sync_to_async(record_started)(claim, run)
