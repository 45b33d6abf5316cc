"""Benchmark of saved blocks: the run API, HTTP endpoints and schedules.

    .venv/bin/python bench/api.py [--runs 100] [--seconds 8] [--clients 1,10,50]
                                  [--warm 60] [--schedules 20] [--schedule-minutes 10]
                                  [--clock-speed 12]

1. API run with `wait`: a trivial block, run one request at a time through
   POST /api/v1/blocks/{slug}/runs {"wait": 30}; p50/p99 of the round trip.
2. HTTP endpoint: a block answering `new Response("ok")`, hit by one client for half as
   many requests as the warm pool holds (the latency from the warm pool), then by 1, 10
   and 50 concurrent clients for --seconds each, starting each level from a full pool;
   requests/s, p50/p99, errors; next to the floor measured first in the same run: the
   same request to a block that does not exist (Daphne, Django, the endpoint's lookup,
   a 404, no run), one client.
3. Schedules: --schedules schedules due every minute, fired by the scheduler for
   --schedule-minutes minutes of a clock running --clock-speed times faster than the
   real one; p50/p99 of the real time from a due time to the block's first statement.
   At the default 12x a minute lasts 5 s, in which the pool refills what a minute's
   firings took, as it does in real minutes; much faster, the firings come at the
   sustained endpoint rows' pace (an isolate start per run), which they measure already.

The platform is throwaway (bench/throwaway.py): SQLite, no Redis, one Advanced tenant
whose concurrency limit is raised for the 50 clients. The server is the real Daphne, in
this process (as runblock runs it); the HTTP clients run in a child process, so that
they do not share this process's interpreter with the server.
"""

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRIVIAL = "export default () => 1;"
ENDPOINT = 'export default { fetch: () => new Response("ok") };'
FIRST_STATEMENT = "const firstStatement = Date.now(); export default () => firstStatement;"


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# -- the client process ------------------------------------------------------------------


async def hammer(url, clients, seconds, headers, expect=200, count=0):
    import httpx

    latencies, errors = [], []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
        async def one_client():
            while time.monotonic() < deadline and not (count and len(latencies) + len(errors) >= count):
                t0 = time.perf_counter()
                try:
                    response = await client.get(url)
                    if response.status_code != expect or (expect == 200 and response.text != "ok"):
                        errors.append(f"{response.status_code} {response.text[:100]}")
                        continue
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

        started = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    return {"requests": len(latencies), "seconds": elapsed, "latencies": latencies, "errors": errors[:5],
            "error_count": len(errors)}


def client_main(args):
    print(json.dumps(asyncio.run(hammer(args.url, args.clients_n, args.seconds, {}, args.expect, args.count))))


# -- the server process ------------------------------------------------------------------


def server_main(args):
    os.environ["SYMPOSIUM_WARM_ISOLATES"] = str(args.warm)
    from bench.throwaway import throwaway_platform

    tenant = throwaway_platform(overrides={"concurrent_runs": 200, "api_rate_per_minute": 0, "max_schedules": 1000})
    from tenants.models import PermissionProfile

    # The pool keeps warm isolates for every profile; only the bench tenant's is used.
    PermissionProfile.objects.exclude(pk=tenant.profile_id).delete()

    import httpx

    from blocks.models import ApiToken
    from isolates.runs import service_for_port
    from isolates.server import local_server

    server = local_server()
    base = f"http://127.0.0.1:{server.port}"
    _, token = ApiToken.issue(tenant, name="bench", scope="deploy")
    api = httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"})
    for slug, code, public in (("trivial", TRIVIAL, False), ("hello", ENDPOINT, True), ("clock", FIRST_STATEMENT, False)):
        saved = api.put(f"/api/v1/blocks/{slug}", json={"code": code, "deploy": True, "publicEndpoint": public})
        assert saved.status_code == 201, saved.text

    async def warm_count():
        return service_for_port(server.port).pool.warm_count()

    def wait_for_pool(target):
        deadline = time.monotonic() + 120
        while server.call(warm_count()) < target and time.monotonic() < deadline:
            time.sleep(0.2)

    print(f"Saved blocks on this machine ({os.cpu_count()} cores); warm pool {args.warm} isolates.\n")
    # The first run starts the pool.
    api.post("/api/v1/blocks/trivial/runs", json={"wait": 30})

    wait_for_pool(args.warm)
    round_trips = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        body = api.post("/api/v1/blocks/trivial/runs", json={"wait": 30}).json()
        round_trips.append((time.perf_counter() - t0) * 1000)
        assert body["status"] == "succeeded", body
        if server.call(warm_count()) < 5:
            wait_for_pool(args.warm)  # measure warm starts, not the refill's pace
    print(f"API run with wait (trivial block, {args.runs} runs one at a time): "
          f"p50 {percentile(round_trips, 50):.1f} ms, p99 {percentile(round_trips, 99):.1f} ms\n")

    def hammer_from_child(path, clients, expect=200, count=0):
        child = subprocess.run(
            [sys.executable, __file__, "--client", f"{base}{path}", "--clients-n", str(clients),
             "--seconds", str(args.seconds), "--expect", str(expect), "--count", str(count)], capture_output=True, text=True,
            timeout=args.seconds + 120)
        if child.returncode != 0:
            print(child.stderr[-2000:])
            raise SystemExit(1)
        return json.loads(child.stdout)

    def row(label, result):
        lat = result["latencies"]
        print(f"| {label} | {result['requests']} | {result['requests'] / result['seconds']:.1f} | "
              f"{percentile(lat, 50):.1f} ms | {percentile(lat, 99):.1f} ms | {result['error_count']} |")
        if result["errors"]:
            print("  errors:", result["errors"])
        return percentile(lat, 50)

    print("HTTP endpoint (GET /b/bench/hello/, answers 'ok'):")
    print("| clients | requests | requests/s | p50 | p99 | errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    # The floor, in the same server and run: the same request to a block that does not
    # exist (Daphne, Django, the endpoint's one lookup, a 404; no run).
    logging.getLogger("django.request").setLevel(logging.ERROR)  # each 404 would be a line
    floor = row("floor: 1, no block", hammer_from_child("/b/bench/no-such-block/", 1, expect=404))
    single = from_pool = None
    levels = [int(c) for c in args.clients.split(",")]
    if 1 in levels:
        # One client served by warm isolates only: fewer requests than the pool holds
        # (its refill runs meanwhile, as it would). The rows below last --seconds, longer
        # than a pool serves back-to-back requests: their pace is then the refill's.
        wait_for_pool(args.warm)
        from_pool = row(f"1, first {args.warm // 2} from a full pool",
                        hammer_from_child("/b/bench/hello/", 1, count=args.warm // 2))
    for clients in levels:
        wait_for_pool(args.warm)
        p50 = row(str(clients), hammer_from_child("/b/bench/hello/", clients))
        if clients == 1:
            single = p50
    print()
    if from_pool is not None:
        print(f"One client's request from the warm pool costs {from_pool - floor:.1f} ms more than the floor: "
              f"the run (a warm isolate's start, the block, its outcome).")
    if single is not None:
        print(f"Sustained for {args.seconds:g} s, one client's requests are paced by the pool's refill: an isolate per "
              f"request, {single:.1f} ms p50.\n")

    if args.schedules > 0:
        wait_for_pool(args.warm)  # the firings start from a full pool, as the other figures do
    lateness = measure_schedules(server, tenant, args) if args.schedules > 0 else []
    if lateness:
        print(f"Schedule due time to the block's first statement ({len(lateness)} firings of {args.schedules} "
              f"schedules due every minute, clock at {args.clock_speed:g}x): p50 {percentile(lateness, 50):.0f} ms, "
              f"p99 {percentile(lateness, 99):.0f} ms, max {max(lateness):.0f} ms")
    elif args.schedules > 0:
        print("Schedules: no firing reached its block's first statement.")
    async def shutdown():
        await service_for_port(server.port).shutdown()

    server.call(shutdown(), 60)
    sys.stdout.flush()
    os._exit(0)


def measure_schedules(server, tenant, args):
    from datetime import datetime
    from datetime import timezone as dt_timezone

    from blocks.models import Block, Schedule, ScheduleFiring
    from blocks.schedules import ScaledClock, Scheduler, next_due
    from isolates.runs import service_for_port

    speed = args.clock_speed
    block = Block.objects.get(tenant=tenant, slug="clock")
    start = datetime(2026, 1, 1, 0, 0, 50, tzinfo=dt_timezone.utc)
    origin = time.time() + 1
    clock = ScaledClock(start, origin, speed)
    first = next_due("* * * * *", "UTC", start)
    for _ in range(args.schedules):
        Schedule.objects.create(block=block, cron="* * * * *", next_run=first)
    scheduler = Scheduler(server.port, clock=clock)

    async def run_for(seconds):
        task = asyncio.ensure_future(scheduler.run())
        await asyncio.sleep(seconds)
        scheduler.stop()
        await task
        # Let the last runs end.
        service = service_for_port(server.port)
        for task in list(service.supervisors.values()):
            await asyncio.wait_for(asyncio.shield(task), 30)

    server.call(run_for(1 + args.schedule_minutes * 60 / speed + 0.5), 600)
    lateness = []
    for firing in ScheduleFiring.objects.filter(outcome="started").select_related("run"):
        if firing.run is None or firing.run.status != "succeeded":
            continue
        due_real = origin + (firing.due - start).total_seconds() / speed
        lateness.append(firing.run.result - due_real * 1000)
    skipped = ScheduleFiring.objects.exclude(outcome="started").count()
    if skipped:
        print(f"  ({skipped} firings were not started: skipped or refused)")
    return lateness


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--warm", type=int, default=60)
    parser.add_argument("--schedules", type=int, default=20)
    parser.add_argument("--schedule-minutes", type=int, default=10)
    parser.add_argument("--clock-speed", type=float, default=12.0)
    parser.add_argument("--client", dest="url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--clients-n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.url:
        client_main(args)
    else:
        server_main(args)


if __name__ == "__main__":
    main()
