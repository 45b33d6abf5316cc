"""Benchmark: isolate start-up and the cost of a capability call.

    .venv/bin/python bench/isolates.py [--runs 200] [--calls 5000] [--redis redis://127.0.0.1:6379/2]

Prints, as p50 / p99 in milliseconds:
- cold start: from asking for a run to the block's first statement, with no warm isolate;
- warm start: the same with the pool's warm isolates;
- fileExists round trip from inside a block, inline, and through RQ when --redis is given
  (a real `rqworker` process is started);
- a call with 8 KB of arguments (realtime.publish of an 8 KB message), inline: frames
  over ~1 KB once waited 40 ms for a delayed ACK (isolates/quickack.py);
- the floor: a bare Deno Worker postMessage round trip, measured in the same run.

It uses a throwaway SQLite database and storage folder, never the project's own.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throwaway import throwaway_platform  # noqa: E402


def percentiles(values):
    values = sorted(values)
    if not values:
        return "n/a"
    p50 = statistics.median(values)
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    return f"p50 {p50:8.3f} ms   p99 {p99:8.3f} ms   (n={len(values)})"


FIRST_STATEMENT_BLOCK = "const t = performance.timeOrigin + performance.now();\nexport default () => t;"

CALLS_BLOCK = """
const n = %d;
const times = [];
for (let i = 0; i < 20; i++) await symposium.fileExists('warmup.txt');
for (let i = 0; i < n; i++) {
  const t0 = performance.now();
  await symposium.fileExists('bench.txt');
  times.push(performance.now() - t0);
}
export default () => times;
"""

LARGE_CALLS_BLOCK = """
const n = %d;
const message = "x".repeat(8 * 1024);
const times = [];
for (let i = 0; i < 20; i++) await symposium.realtime.publish("bench", message);
for (let i = 0; i < n; i++) {
  const t0 = performance.now();
  await symposium.realtime.publish("bench", message);
  times.push(performance.now() - t0);
}
export default () => times;
"""

FLOOR_SCRIPT = """
const src = `self.onmessage = (e) => self.postMessage(e.data);`;
const url = URL.createObjectURL(new Blob([src], { type: "application/javascript" }));
const worker = new Worker(url, { type: "module" });
const n = %d;
const times = [];
let resolve;
worker.onmessage = () => resolve();
for (let i = 0; i < n + 50; i++) {
  const t0 = performance.now();
  await new Promise((r) => { resolve = r; worker.postMessage({ id: i, op: "fileExists", args: { path: "bench.txt" } }); });
  if (i >= 50) times.push(performance.now() - t0);
}
console.log(JSON.stringify(times));
worker.terminate();
"""


def deno_floor(n):
    import deno

    with tempfile.NamedTemporaryFile("w", suffix=".js", delete=False) as f:
        f.write(FLOOR_SCRIPT % n)
    out = subprocess.run([deno.find_deno_bin(), "run", "--quiet", "--no-config", f.name], capture_output=True, text=True, timeout=120)
    os.unlink(f.name)
    return json.loads(out.stdout)


async def start_times(service, tenant, runs):
    times = []
    for _ in range(runs):
        asked = time.time() * 1000
        run = await service.start(tenant, FIRST_STATEMENT_BLOCK, name="bench.js")
        run = await service.wait(run.id)
        if run.status != "succeeded":
            raise SystemExit(f"run failed: {run.error_code} {run.error}")
        times.append(run.result - asked)
    return times


async def call_times(service, tenant, calls, block=CALLS_BLOCK):
    run = await service.start(tenant, block % calls, name="bench.js")
    run = await service.wait(run.id)
    if run.status != "succeeded":
        raise SystemExit(f"run failed: {run.error_code} {run.error}")
    return run.result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--redis", default="", help="a Redis URL to also measure the RQ path (its database is flushed)")
    options = parser.parse_args()

    # The benchmark makes thousands of calls a minute; rate limits are not what it measures.
    tenant = throwaway_platform(options.redis, overrides={"files_rate_per_minute": 0, "realtime_rate_per_minute": 0, "concurrent_runs": 1000})
    from django.conf import settings

    from isolates.runs import RunService
    from isolates.server import local_server

    server = local_server()
    print(f"Symposium isolate benchmark: {options.runs} runs per start measurement, {options.calls} calls per path")

    async def make_service(warm):
        service = RunService(server.port, warm_size=warm)
        if warm:
            await service.warm_up()
            await service.pool.fill()
        return service

    cold_service = server.call(make_service(0))
    cold = server.call(start_times(cold_service, tenant, max(20, options.runs // 4)), 3600)
    print(f"cold start to first statement      {percentiles(cold)}")

    warm_service = server.call(make_service(4))

    async def warm_runs():
        times = []
        for _ in range(options.runs):
            await warm_service.pool.fill()  # measure a warm start each time, as a steady pool gives
            times.extend(await start_times(warm_service, tenant, 1))
        return times

    warm = server.call(warm_runs(), 3600)
    print(f"warm start to first statement      {percentiles(warm)}")

    settings.SYMPOSIUM_RQ_CAPABILITIES = []
    inline = server.call(call_times(warm_service, tenant, options.calls), 3600)
    print(f"fileExists round trip, inline      {percentiles(inline)}")
    large = server.call(call_times(warm_service, tenant, max(100, options.calls // 10), LARGE_CALLS_BLOCK), 3600)
    print(f"8 KB-argument call, inline         {percentiles(large)}")

    if options.redis:
        import django_rq

        django_rq.get_queue("capabilities").connection.flushdb()
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "capabilities", "--worker-class", "rq.SimpleWorker"],
            cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)
            settings.SYMPOSIUM_RQ_CAPABILITIES = ["files"]
            rq_times = server.call(call_times(warm_service, tenant, options.calls), 3600)
            print(f"fileExists round trip, RQ          {percentiles(rq_times)}")
        finally:
            worker.terminate()
            worker.wait(10)

    floor = deno_floor(options.calls)
    print(f"floor: Deno Worker postMessage     {percentiles(floor)}")

    server.call(cold_service.shutdown(), 60)
    server.call(warm_service.shutdown(), 60)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
