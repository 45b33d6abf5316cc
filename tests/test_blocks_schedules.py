"""Schedules: their limits through the API, the claim that fires each due time once,
and real scheduler processes firing real runs.

The scheduler's clock can run faster than the real one (blocks.schedules.ScaledClock):
at 60 times, a schedule due every minute fires every real second, so several minutes
of schedules take seconds.
"""

import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from blocks.models import ApiToken, Schedule, ScheduleFiring
from blocks import schedules
from blocks.schedules import ScaledClock, Scheduler, claim_due, latest_due, next_due, shortest_interval, zone
from blocks.service import deploy, save_block
from tenants.models import BlockRun
from tenants.ratelimit import reset_limiter

pytestmark = [pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
QUICK = "export default (input) => ({ fired: true, input });"
# Longer than a minute of the tests' clocks (one or two real seconds): the next firing
# overlaps.
SLOW = "await new Promise((r) => setTimeout(r, 2500)); export default () => 'slow';"
START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=dt_timezone.utc)


@pytest.fixture(autouse=True)
def fresh_limits():
    reset_limiter()
    yield
    reset_limiter()


@pytest.fixture
def data_tenant(make_tenant):
    # Data: up to 20 schedules, at most one firing a minute each.
    return make_tenant("acme", "Data")


def saved(tenant, slug, code):
    block, _, _ = save_block(tenant, slug, code=code)
    deploy(block, 1)
    return block


def test_it_computes_due_times_in_the_schedules_zone():
    now = datetime(2026, 3, 29, 0, 30, tzinfo=dt_timezone.utc)
    # 02:00 in Paris on the day summer time starts does not exist; cronsim moves it.
    assert next_due("0 9 * * *", "Europe/Paris", now) == datetime(2026, 3, 29, 7, 0, tzinfo=dt_timezone.utc)
    assert latest_due("*/15 * * * *", "UTC", datetime(2026, 1, 1, 0, 15, tzinfo=dt_timezone.utc)) == datetime(2026, 1, 1, 0, 15, tzinfo=dt_timezone.utc)
    assert shortest_interval("0,5 * * * *", zone("UTC")) == timedelta(minutes=5)
    assert shortest_interval("0 */6 * * *", zone("UTC")) == timedelta(hours=6)


def test_it_fires_once_for_the_latest_missed_time_after_downtime(data_tenant):
    block = saved(data_tenant, "quick", QUICK)
    now = timezone.now().replace(second=30, microsecond=0)
    schedule = Schedule.objects.create(block=block, cron="* * * * *", next_run=now - timedelta(minutes=10))
    claims = claim_due(now, "test")
    assert len(claims) == 1 and claims[0].due == now.replace(second=0)
    schedule.refresh_from_db()
    assert schedule.next_run == now.replace(second=0) + timedelta(minutes=1)
    # The same moment again: nothing more to take.
    assert claim_due(now, "another") == []
    assert ScheduleFiring.objects.count() == 1


class ScheduleApi:
    def __init__(self, server, token):
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30,
                                   headers={"Authorization": f"Bearer {token}"})

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_the_api_manages_schedules_within_the_profile(server, make_tenant, run_block):
    tenant = make_tenant("acme", "Interactive")  # 5 schedules, every 15 min at most
    basic = make_tenant("basic", "Basic")  # none
    saved(tenant, "report", QUICK)
    saved(basic, "report", QUICK)
    api = ScheduleApi(server, ApiToken.issue(tenant, name="ci", scope="deploy")[1])

    too_often = api.post("/api/v1/blocks/report/schedules", json={"cron": "*/5 * * * *"})
    assert too_often.status_code == 400
    assert "every 5 min" in too_often.json()["error"]["message"] and "every 15 min" in too_often.json()["error"]["message"]
    bad = api.post("/api/v1/blocks/report/schedules", json={"cron": "every day"})
    assert bad.status_code == 400 and "five fields" in bad.json()["error"]["message"]
    bad_zone = api.post("/api/v1/blocks/report/schedules", json={"cron": "0 9 * * *", "timezone": "Mars/Olympus"})
    assert bad_zone.status_code == 400 and "time zone" in bad_zone.json()["error"]["message"]

    made = api.post("/api/v1/blocks/report/schedules", json={"cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "input": {"k": 1}})
    assert made.status_code == 201, made.text
    document = made.json()
    assert document["cron"] == "0 9 * * 1-5" and document["enabled"] and document["lastRun"] is None
    assert datetime.fromisoformat(document["nextRun"]) > timezone.now()
    assert [s["id"] for s in api.get("/api/v1/blocks/report/schedules").json()] == [document["id"]]

    paused = api.patch(f"/api/v1/schedules/{document['id']}", json={"enabled": False})
    assert paused.status_code == 200 and paused.json()["enabled"] is False and paused.json()["nextRun"] is None
    assert api.patch(f"/api/v1/schedules/{document['id']}", json={"cron": "* * * * *"}).status_code == 400
    for _ in range(4):
        assert api.post("/api/v1/blocks/report/schedules", json={"cron": "30 * * * *"}).status_code == 201
    sixth = api.post("/api/v1/blocks/report/schedules", json={"cron": "30 * * * *"})
    assert sixth.status_code == 400 and "5 schedules" in sixth.json()["error"]["message"]
    assert api.delete(f"/api/v1/schedules/{document['id']}").status_code == 204

    run_only = ScheduleApi(server, ApiToken.issue(tenant, name="app", scope="run")[1])
    assert run_only.post("/api/v1/blocks/report/schedules", json={"cron": "30 * * * *"}).status_code == 403
    none_allowed = ScheduleApi(server, ApiToken.issue(basic, name="ci", scope="deploy")[1])
    refused = none_allowed.post("/api/v1/blocks/report/schedules", json={"cron": "0 9 * * *"})
    assert refused.status_code == 400 and "allows no schedules" in refused.json()["error"]["message"]


def first_due(clock_start):
    return next_due("* * * * *", "UTC", clock_start)


def run_scheduler_for(server, scheduler, seconds):
    """Run the scheduler on the server's loop for `seconds`, then stop it."""
    async def run_for():
        import asyncio

        task = asyncio.ensure_future(scheduler.run())
        await asyncio.sleep(seconds)
        scheduler.stop()
        await task

    server.call(run_for(), 30)


def make_schedules(tenant, clock_start):
    quick, slow, paused = saved(tenant, "quick", QUICK), saved(tenant, "slow", SLOW), saved(tenant, "paused", QUICK)
    due = first_due(clock_start)
    return {
        "quick": Schedule.objects.create(block=quick, cron="* * * * *", next_run=due, input={"n": 1}),
        "slow": Schedule.objects.create(block=slow, cron="* * * * *", next_run=due),
        "paused": Schedule.objects.create(block=paused, cron="* * * * *", next_run=due, enabled=False),
    }


def check_overlaps(firings):
    """Each firing started a run unless the schedule's previous run was still going."""
    previous_run = None
    for firing in firings:
        if firing.outcome == "skipped":
            assert previous_run is not None and (previous_run.finished is None or previous_run.finished > firing.fired), \
                f"the firing due at {firing.due} was skipped though no run of its schedule was going"
            assert firing.message == "The previous run of this schedule was still running."
        else:
            assert firing.outcome == "started" and firing.run_id, (firing.due, firing.outcome, firing.message)
            previous_run = BlockRun.objects.get(pk=firing.run_id)


def check_firings(schedules, clock_end):
    quick = list(ScheduleFiring.objects.filter(schedule=schedules["quick"]).order_by("due"))
    dues = [f.due for f in quick]
    # Every minute from the first firing (the latest due time when the schedulers came
    # up: the earlier ones were missed, and are fired once) to the last that passed:
    # none missed, none twice.
    assert len(dues) >= 4, dues
    expected_count = int((clock_end - dues[0]).total_seconds() // 60) + 1
    assert len(dues) >= expected_count - 2, (len(dues), expected_count)
    assert dues == [dues[0] + timedelta(minutes=i) for i in range(len(dues))], dues
    check_overlaps(quick)
    started = [f for f in quick if f.outcome == "started"]
    assert len(started) >= len(quick) // 2, "most quick runs end within a minute of the clock"
    runs = BlockRun.objects.filter(block=schedules["quick"].block, source="schedule")
    assert runs.count() == len(started)
    assert Counter(f.run_id for f in started).most_common(1)[0][1] == 1
    assert all(r.input == {"n": 1} for r in runs)

    slow = list(ScheduleFiring.objects.filter(schedule=schedules["slow"]).order_by("due"))
    outcomes = [f.outcome for f in slow]
    assert "skipped" in outcomes and "started" in outcomes, outcomes
    check_overlaps(slow)
    slow_runs = BlockRun.objects.filter(block=schedules["slow"].block, source="schedule").count()
    assert slow_runs == outcomes.count("started")

    assert not ScheduleFiring.objects.filter(schedule=schedules["paused"]).exists()
    assert not BlockRun.objects.filter(block=schedules["paused"].block).exists()
    return quick


def test_the_servers_scheduler_fires_due_schedules(server, data_tenant, run_block):
    schedules = make_schedules(data_tenant, START)
    clock = ScaledClock(START, time.time(), 60)
    scheduler = Scheduler(server.port, clock=clock)

    run_scheduler_for(server, scheduler, 6.5)
    run_block.stop_all()
    check_firings(schedules, clock.now())


@pytest.mark.skipif(not settings.USING_POSTGRES, reason="many scheduler processes share a PostgreSQL database (the suite's second run)")
def test_three_runschedules_processes_fire_each_due_time_once(data_tenant, tmp_path):
    schedules = make_schedules(data_tenant, START)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    db = connection.settings_dict
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env["SYMPOSIUM_STORAGE_ROOT"] = str(settings.TENANT_STORAGE_ROOT)
    env["SYMPOSIUM_RQ_CAPABILITIES"] = ""
    env["SYMPOSIUM_WARM_ISOLATES"] = "1"  # three processes on two cores
    origin = time.time() + 5  # the processes start meanwhile
    seconds = 22
    speed = 30  # a minute every two seconds: a quick run ends well within it on a busy machine
    processes = [
        subprocess.Popen(
            [sys.executable, "manage.py", "runschedules", "--for", str(seconds), "--clock-start", START.isoformat(),
             "--clock-origin", str(origin), "--clock-speed", str(speed)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=90) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err[-2000:] for _, err in outputs]
    # The processes stopped a moment ago: every due time up to a minute of the clock
    # before now has passed while they ran.
    quick = check_firings(schedules, ScaledClock(START, origin, speed).now() - timedelta(minutes=1))
    servers = {f.server for f in ScheduleFiring.objects.all()}
    print(f"{len(quick)} due times of one schedule fired by {len(servers)} processes")
    assert len(servers) >= 2, "one process took every firing: the test shows nothing about sharing"


def test_a_schedules_run_is_prepared_ahead_and_its_block_starts_at_the_due_time(server, data_tenant, run_block, monkeypatch):
    # The block records when its first statement ran. The scheduler claims the firing
    # and makes the run up to its lead ahead, but holds the block until the due time.
    # A lead of 3 s, longer than a busy machine takes to prepare a run: a block that
    # was not held would start seconds early.
    monkeypatch.setattr(schedules, "LEAD_SECONDS", 3.0)
    block = saved(data_tenant, "clock", "const first = Date.now(); export default () => first;")
    origin = time.time()
    clock = ScaledClock(START, origin, 5)  # a minute of the clock in 12 s
    due = first_due(START)  # 30 s of the clock after START: 6 s of real time
    schedule = Schedule.objects.create(block=block, cron="* * * * *", next_run=due)
    scheduler = Scheduler(server.port, clock=clock)

    run_scheduler_for(server, scheduler, 8)
    firing = ScheduleFiring.objects.get(schedule=schedule, due=due)
    run = run_block.wait(firing.run_id)
    assert run.status == "succeeded", run.error
    due_real = clock.real_time(due)
    assert run.created.timestamp() < due_real - 1.5, "the run was made only at its due time, not ahead of it"
    assert run.result >= due_real * 1000 - 5, f"the block started {due_real * 1000 - run.result:.0f} ms before its due time"
