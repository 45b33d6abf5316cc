"""Load benchmark: many block runs at once, each making a mix of capability calls.

    .venv/bin/python bench/load.py [--steps 10,25,50,100,150,200] [--iterations 8]
                                   [--database sqlite|postgres] [--rq-workers 0]
                                   [--rate 20] [--rate-seconds 5] [--warm 110]

Phase 1, concurrency: for each N in --steps, N runs are started at once and run to the
end; each makes --iterations rounds of writeFile, readFile, fileExists, createCanvas,
draw, exportImage (PNG) and two database queries (about 9 calls a round), pausing 100 ms
between rounds so that all N are in flight together. It stops after the first step where
a run or a call fails, or the p99 call latency passes --p99-limit-ms (the breaking point).
For each step it prints runs/s, calls/s, p50/p99 call latency, server RSS, isolate RSS
and PSS (peak sums), event-loop lag, and where CPU time went (server vs isolates).

Phase 2, start rate: runs started at --rate per second for --rate-seconds with a warm
pool of --warm isolates; prints the p50/p99 time from asking for a run to the block's
first statement, and how many starts found no warm isolate.

Everything is throwaway and on loopback: a temporary folder, a SQLite database or a
private PostgreSQL cluster (--database postgres), a private Redis and real `rqworker`
processes with --rq-workers N (canvas and database calls then go through RQ). The
server is the real Daphne server, in this process (as `runblock` runs it), so "server
RSS" includes the benchmark's own driver (a few MB).
"""

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The private PostgreSQL and Redis of the fault tests (tests/support/platform.py).
from tests.support.platform import PrivatePostgres, PrivateRedis  # noqa: E402

TENANTS = 10  # runs are spread over this many tenants, each with its own database

LOAD_BLOCK = """
const times = {};
const errors = [];
async function timed(op, call) {
  const t0 = performance.now();
  try {
    const result = await call();
    (times[op] ??= []).push(performance.now() - t0);
    return result;
  } catch (e) {
    errors.push(`${op}: ${e.code} ${e.message}`);
  }
}
const id = symposium.utils.generateId();
const path = `load/${id}.txt`;
await timed("database.query", () => symposium.database.query("CREATE TABLE IF NOT EXISTS hits (run TEXT, n INTEGER)"));
for (let i = 0; i < %(iterations)d; i++) {
  await timed("writeFile", () => symposium.writeFile(path, "x".repeat(2048)));
  await timed("readFile", () => symposium.readFile(path));
  await timed("fileExists", () => symposium.fileExists(path));
  const canvas = await timed("canvas.createCanvas", () => symposium.canvas.createCanvas(200, 100));
  if (canvas) {
    await timed("canvas.draw", () => symposium.canvas.draw(canvas.canvasId, [
      { type: "fillRect", x: 0, y: 0, width: 200, height: 100, style: "#336" },
      { type: "fillText", text: "load " + i, x: 10, y: 50, style: "#fff" },
    ]));
    await timed("canvas.exportImage", () => symposium.canvas.exportImage(canvas.canvasId, "png"));
  }
  await timed("database.query", () => symposium.database.query("INSERT INTO hits (run, n) VALUES (?, ?)", [id, i]));
  await timed("database.query", () => symposium.database.query("SELECT count(*) AS n FROM hits WHERE run = ?", [id]));
  await new Promise((r) => setTimeout(r, 100));
}
await timed("deleteFile", () => symposium.deleteFile(path));
export default () => ({ times, errors });
"""

FIRST_STATEMENT_BLOCK = "const t = performance.timeOrigin + performance.now();\nexport default () => t;"


def percentile(values, fraction):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(fraction * (len(values) - 1))))]


def mb(n):
    return f"{n / 1024 / 1024:7.0f} MB"


def self_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def process_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def thread_cpu():
    """CPU seconds of this process's threads, by Python thread name (numbers dropped):
    the event loop (local-daphne), capability handlers (capability_), the database
    thread of sync_to_async, the audit writer, ..."""
    import re
    import threading

    names = {t.native_id: re.sub(r"[-_]?\d+(_\d+)?$", "", t.name) for t in threading.enumerate()}
    totals = {}
    for task in Path("/proc/self/task").iterdir():
        cpu = 0.0
        try:
            with open(task / "stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
        name = names.get(int(task.name), "other (non-Python threads)")
        totals[name] = totals.get(name, 0.0) + cpu
    return totals


# -- set-up ----------------------------------------------------------------------------


def start_services(options, folder):
    """Point the environment at throwaway services; returns what must be stopped."""
    started = []
    os.environ["SYMPOSIUM_VAR_DIR"] = str(folder / "var")
    os.environ["SYMPOSIUM_STORAGE_ROOT"] = str(folder / "storage")
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ["SYMPOSIUM_WARM_ISOLATES"] = "0"  # the pools below are sized per phase
    if options.database == "postgres" or options.rq_workers:
        pg = PrivatePostgres().init().start()
        pg.create_database("symposium")
        os.environ["DATABASE_URL"] = pg.url()
        started.append(pg.destroy)
    if options.rq_workers:
        redis = PrivateRedis().start()
        os.environ["REDIS_URL"] = redis.url
        os.environ["SYMPOSIUM_RQ_CAPABILITIES"] = "canvas,database"
        started.append(redis.stop)
    return started


def set_up_django(options):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "symposium.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from tenants.models import PermissionProfile, PolicyOverride, Tenant

    tenants = []
    for i in range(TENANTS):
        tenant = Tenant.objects.create(slug=f"load-{i}", name=f"Load {i}", profile=PermissionProfile.objects.get(name="Data"))
        tenant.storage_root().mkdir(parents=True, exist_ok=True)
        # Rate limits and concurrency are not what this measures.
        for setting, value in [("files_rate_per_minute", 0), ("canvas_rate_per_minute", 0), ("database_rate_per_minute", 0),
                               ("concurrent_runs", 10000)]:
            PolicyOverride.objects.create(tenant=tenant, setting=setting, value=str(value))
        tenants.append(tenant)
    settings.SYMPOSIUM_MAX_RUNS_PER_PROCESS = 100000
    return tenants


def start_workers(count):
    workers = []
    for i in range(count):
        workers.append(subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "capabilities", "--worker-class", "rq.SimpleWorker", "--name", f"load-{i}"],
            cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(3)
    return workers


# -- phase 1 -----------------------------------------------------------------------------


class Sampler:
    """Samples memory and event-loop lag on the server's loop while a step runs."""

    def __init__(self, service):
        self.service = service
        self.peak_server_rss = 0
        self.peak_isolate_rss = 0
        self.peak_isolate_pss = 0
        self.peak_in_flight = 0
        self.lags = []
        self.task = None

    def start(self):
        self.task = asyncio.ensure_future(self._run())

    async def stop(self):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    async def _run(self):
        tick = 0
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(0.05)
            self.lags.append((time.perf_counter() - asked - 0.05) * 1000)
            tick += 1
            if tick % 20:
                continue  # memory once a second: /proc reads of hundreds of isolates cost
            isolates = list(self.service.isolates.values())
            self.peak_in_flight = max(self.peak_in_flight, len(isolates))
            self.peak_server_rss = max(self.peak_server_rss, self_rss())
            # /proc reads for hundreds of isolates take a while: off the loop.
            rss, pss = await asyncio.get_running_loop().run_in_executor(None, self._isolate_memory, isolates)
            self.peak_isolate_rss = max(self.peak_isolate_rss, rss)
            self.peak_isolate_pss = max(self.peak_isolate_pss, pss)

    @staticmethod
    def _isolate_memory(isolates):
        rss = pss = 0
        for isolate in isolates:
            rss += isolate.rss() or 0
            pss += isolate.pss() or 0
        return rss, pss


async def concurrency_step(service, tenants, runs, iterations, workers):
    from channels.db import database_sync_to_async

    from tenants.models import BlockRun

    sampler = Sampler(service)
    sampler.start()
    cpu_before = os.times()
    threads_before = thread_cpu()
    workers_before = sum(process_cpu(w.pid) for w in workers)
    started = time.perf_counter()
    code = LOAD_BLOCK % {"iterations": iterations}
    started_runs = await asyncio.gather(*[service.start(tenants[i % len(tenants)], code, name="load.js") for i in range(runs)])
    finished = await asyncio.gather(*[service.wait(run.id) for run in started_runs])
    elapsed = time.perf_counter() - started
    cpu_after = os.times()
    threads_after = thread_cpu()
    await sampler.stop()
    ids = [run.id for run in finished]
    isolate_cpu = await database_sync_to_async(
        lambda: sum(BlockRun.objects.filter(id__in=ids).values_list("cpu_ms", flat=True).exclude(cpu_ms=None)) / 1000)()
    latencies, per_op, failures, calls = [], {}, [], 0
    for run in finished:
        if run.status != "succeeded":
            failures.append(f"run {run.status}: {run.error_code} {run.error[:120]}")
            continue
        failures.extend(run.result["errors"])
        for op, times in run.result["times"].items():
            per_op.setdefault(op, []).extend(times)
            latencies.extend(times)
            calls += len(times)
    calls += sum(1 for f in failures if not f.startswith("run "))
    return {
        "runs": runs, "elapsed": elapsed, "calls": calls, "latencies": latencies, "per_op": per_op,
        "failures": failures, "sampler": sampler,
        "server_cpu": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "isolate_cpu": isolate_cpu, "worker_cpu": sum(process_cpu(w.pid) for w in workers) - workers_before,
        "threads": {name: cpu - threads_before.get(name, 0.0) for name, cpu in threads_after.items()},
    }


def print_step(step):
    s = step["sampler"]
    lat = step["latencies"]
    print(f"N={step['runs']:4d}  {step['runs'] / step['elapsed']:6.1f} runs/s  {step['calls'] / step['elapsed']:7.0f} calls/s  "
          f"call p50 {percentile(lat, 0.5):7.2f} ms  p99 {percentile(lat, 0.99):8.2f} ms  failures {len(step['failures'])}")
    print(f"        in flight {s.peak_in_flight:4d}   server RSS {mb(s.peak_server_rss)}   isolates RSS {mb(s.peak_isolate_rss)}"
          f"   PSS {mb(s.peak_isolate_pss)} ({s.peak_isolate_pss / max(1, s.peak_in_flight) / 1024 / 1024:.0f} MB each)")
    calls = max(1, step["calls"])
    print(f"        loop lag p50 {percentile(s.lags, 0.5):6.1f} ms  p99 {percentile(s.lags, 0.99):7.1f} ms   CPU: server "
          f"{step['server_cpu']:6.1f} s ({step['server_cpu'] / calls * 1000:.2f} ms/call), isolates {step['isolate_cpu']:6.1f} s, "
          f"RQ workers {step['worker_cpu']:5.1f} s, over {step['elapsed']:.1f} s wall")


def print_breakdown(step):
    print("        server CPU by thread:")
    for name, cpu in sorted(step["threads"].items(), key=lambda kv: -kv[1])[:6]:
        label = {"local-daphne": "event loop (Daphne, broker, run service)", "capability": "capability handlers (inline)",
                 "ThreadPoolExecutor": "database thread (sync_to_async)", "audit-writer": "audit writer",
                 "asyncio": "default executor (RQ enqueues, memory sampler)"}.get(name, name)
        print(f"          {label:42s} {cpu:6.1f} s")
    print("        per operation (p50 / p99 ms):")
    for op, times in sorted(step["per_op"].items()):
        print(f"          {op:22s} {percentile(times, 0.5):8.2f} / {percentile(times, 0.99):8.2f}   n={len(times)}")
    if step["failures"]:
        print("        first failures:")
        for failure in step["failures"][:5]:
            print(f"          {failure[:160]}")


# -- phase 2 -----------------------------------------------------------------------------


async def rate_phase(service, tenant, rate, seconds):
    """Start runs at `rate` per second; the time from asking to the first statement."""
    pool = service.pool
    cold_before = pool_spawns(pool)
    interval = 1.0 / rate
    start = time.perf_counter()
    asked_at, runs = [], []
    for i in range(int(rate * seconds)):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        asked_at.append(time.time() * 1000)
        runs.append(await service.start(tenant, FIRST_STATEMENT_BLOCK, name="start.js"))
    finished = await asyncio.gather(*[service.wait(run.id) for run in runs])
    starts = [run.result - asked for run, asked in zip(finished, asked_at) if run.status == "succeeded"]
    failed = sum(1 for run in finished if run.status != "succeeded")
    return starts, failed, pool_spawns(pool) - cold_before


def pool_spawns(pool):
    return getattr(pool, "_bench_spawns", 0)


def count_spawns(pool):
    """Count the pool's spawns (warm refills and cold starts alike)."""
    original = pool._spawn

    async def spawn(*args, **kwargs):
        pool._bench_spawns = getattr(pool, "_bench_spawns", 0) + 1
        return await original(*args, **kwargs)

    pool._spawn = spawn


# -- main ----------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="10,25,50,100,150,200")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--p99-limit-ms", type=float, default=1000.0)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rq-workers", type=int, default=0, help="with N > 0: PostgreSQL, Redis and N rqworker processes")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--warm", type=int, default=110, help="warm isolates for the start-rate phase")
    parser.add_argument("--phase1-warm", type=int, default=8, help="warm isolates during phase 1")
    parser.add_argument("--skip-rate", action="store_true")
    options = parser.parse_args()
    steps = [int(n) for n in options.steps.split(",") if n.strip()]

    # Hundreds of isolates each hold descriptors of the server (pipes, sockets).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    folder = Path(tempfile.mkdtemp(prefix="symposium-load-"))
    stoppers = start_services(options, folder)
    workers = []
    try:
        tenants = set_up_django(options)
        workers = start_workers(options.rq_workers)
        from isolates.runs import RunService
        from isolates.server import local_server

        server = local_server()
        mode = f"{options.database if not options.rq_workers else 'postgres'}, " + (
            f"RQ with {options.rq_workers} workers for canvas and database" if options.rq_workers else "inline dispatch")
        print(f"Symposium load benchmark ({mode}; {os.cpu_count()} cores; Data profile, {TENANTS} tenants; "
              f"{options.iterations} rounds of 9 calls per run)")
        print()
        print("Phase 1: N runs at once")

        service = server.call(make_service(server.port, options.phase1_warm, tenants[0]), 60)
        server.call(service.pool.fill(), 600)
        # A tenant database is made on its first use (a schema and roles on PostgreSQL):
        # done here one tenant at a time, since steady load is what this measures.
        server.call(prepare_databases(service, tenants), 300)
        breaking = None
        for runs in steps:
            step = server.call(concurrency_step(service, tenants, runs, options.iterations, workers), 1800)
            print_step(step)
            broke = step["failures"] or percentile(step["latencies"], 0.99) > options.p99_limit_ms
            if broke:
                breaking = step
                print(f"  -> breaking point at N={runs}")
                print_breakdown(step)
                break
            last_good = step
        else:
            print(f"  -> no breaking point up to N={steps[-1]}")
            print_breakdown(last_good)
        server.call(service.shutdown(), 120)

        if not options.skip_rate:
            print()
            print(f"Phase 2: runs started at {options.rate:g}/s for {options.rate_seconds:g} s, warm pool of {options.warm}")
            rate_service = server.call(make_service(server.port, options.warm, tenants[0]), 60)
            count_spawns(rate_service.pool)
            filled = time.perf_counter()
            server.call(rate_service.pool.fill(), 600)
            print(f"        (filling the pool took {time.perf_counter() - filled:.1f} s)")
            starts, failed, spawns = server.call(rate_phase(rate_service, tenants[0], options.rate, options.rate_seconds), 600)
            print(f"        start to first statement p50 {percentile(starts, 0.5):6.1f} ms  p99 {percentile(starts, 0.99):6.1f} ms"
                  f"  max {max(starts):6.1f} ms  (n={len(starts)}, failed {failed}, isolates spawned meanwhile {spawns})")
            server.call(rate_service.shutdown(), 120)
        if breaking is None:
            print()
            print("No step broke; raise --steps to find the limit.")
    finally:
        for worker in workers:
            worker.terminate()
        for stop in stoppers:
            stop()
    sys.stdout.flush()
    os._exit(0)


async def prepare_databases(service, tenants):
    for tenant in tenants:
        run = await service.start(tenant, "await symposium.database.query('CREATE TABLE IF NOT EXISTS hits (run TEXT, n INTEGER)');",
                                  name="prepare.js")
        run = await service.wait(run.id)
        if run.status != "succeeded":
            raise SystemExit(f"preparing {tenant.slug}'s database failed: {run.error_code} {run.error}")


async def make_service(port, warm, tenant):
    from channels.db import database_sync_to_async

    from isolates.runs import RunService, cpu_rlimit_seconds
    from tenants.policy import effective_policy

    service = RunService(port, warm_size=warm)
    # Warm isolates for the benchmark's one profile only, not for every profile.
    policy = await database_sync_to_async(effective_policy)(tenant)
    service.warming = True
    service.pool.keep_warm([(policy.memory_mb, cpu_rlimit_seconds(policy))])
    await service.warm_up()
    return service


if __name__ == "__main__":
    main()
