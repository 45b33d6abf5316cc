"""Benchmark: isolate start-up and the cost of a capability call.

    .venv/bin/python bench/isolates.py [--runs 200] [--calls 5000] [--redis redis://127.0.0.1:6379/2]

Prints, as p50 / p99 in milliseconds:
- cold start: from asking for a run to the block's first statement, with no warm isolate,
  next to its floor, measured between the cold starts: a bare `deno run` of a script that
  starts one Web Worker (zero permissions, from a blob, as the runtime's), from asking
  for the process to the Worker's first statement: no launcher, sandbox, runtime or
  broker, what Deno alone takes to start a process with a Worker;
- warm start: the same with the pool's warm isolates;
- fileExists round trip from inside a block, inline, and through RQ when --redis is given
  (a real `rqworker` process is started), the latter next to RQ's own floor: an empty
  job enqueued from here that only tells it ran (a Redis list the bench waits on);
- a call with 8 KB of arguments (realtime.publish of an 8 KB message), inline: frames
  over ~1 KB once waited 40 ms for a delayed ACK (isolates/quickack.py);
- two floors measured in the same run: a bare Deno Worker postMessage round trip, and a
  websocket echo through the same server (Daphne + Channels, an echo consumer that does
  nothing else) relayed by a Worker as a block's calls are: what a call costs with no
  broker at all.
and, for the inline calls, the server's CPU per call (this process's user + system time
over the calls, divided by their number: the isolate is another process) and the calls a
second from one block with 20 in flight.

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

COLD_FLOOR_SCRIPT = """
const src = "postMessage(performance.timeOrigin + performance.now());";
const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
const worker = new Worker(url, { type: "module", deno: { permissions: "none" } });
worker.onmessage = (event) => {
  console.log(event.data);
  Deno.exit(0);
};
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


# The same relay as an isolate's (Worker -> main -> websocket -> main -> Worker), to an
# echo consumer on the benchmark's own server: the floor a call through the broker has.
ECHO_FLOOR_SCRIPT = """
const src = `
  const n = %d;
  const times = [];
  let resolve;
  self.onmessage = () => resolve();
  for (let i = 0; i < n + 50; i++) {
    const t0 = performance.now();
    await new Promise((r) => { resolve = r; self.postMessage({ type: "call", id: i, op: "fileExists", args: { path: "bench.txt" } }); });
    if (i >= 50) times.push(performance.now() - t0);
  }
  self.postMessage({ type: "done", times });
`;
const url = URL.createObjectURL(new Blob([src], { type: "application/javascript" }));
const ws = new WebSocket("ws://127.0.0.1:%d/bench/echo/");
await new Promise((r) => (ws.onopen = r));
const worker = new Worker(url, { type: "module" });
ws.onmessage = (event) => worker.postMessage(JSON.parse(event.data));
worker.onmessage = (event) => {
  if (event.data.type === "done") {
    console.log(JSON.stringify(event.data.times));
    Deno.exit(0);
  }
  ws.send(JSON.stringify(event.data));
};
"""

# Twenty calls in flight from one block, for as long as it takes to make `n` of them.
THROUGHPUT_BLOCK = """
const n = %d;
for (let i = 0; i < 20; i++) await symposium.fileExists('warmup.txt');
let left = n;
const t0 = performance.now();
await Promise.all(Array.from({ length: 20 }, async () => {
  while (left-- > 0) await symposium.fileExists('bench.txt');
}));
export default () => ({ calls: n, ms: performance.now() - t0 });
"""


def empty_job(key):
    """RQ's floor: a job that only says it ran (the RQ worker imports it from here)."""
    from rq import get_current_job

    get_current_job().connection.rpush(key, b"1")


def rq_floor(queue, n):
    """Enqueue an empty job and wait for it to say it ran, n times: RQ's own round trip
    (enqueue, a worker taking and running it, one Redis write back)."""
    times = []
    for i in range(n + 20):
        key = f"bench:rq-floor:{i}"
        t0 = time.perf_counter()
        queue.enqueue("bench.isolates.empty_job", key)  # by name: this file runs as __main__
        if queue.connection.blpop([key], timeout=10) is None:
            raise SystemExit("the RQ worker ran no empty job within 10 s")
        if i >= 20:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def deno_script(path, *flags, timeout=300):
    """What `deno run` of the script at `path` prints (its floor measurement)."""
    import deno

    out = subprocess.run([deno.find_deno_bin(), "run", "--quiet", "--no-config", *flags, path], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise SystemExit(f"the floor's script failed: {out.stderr[-2000:]}")
    return out.stdout


def run_deno(script, *flags):
    with tempfile.NamedTemporaryFile("w", suffix=".js", delete=False) as f:
        f.write(script)
    try:
        return json.loads(deno_script(f.name, *flags))
    finally:
        os.unlink(f.name)


def cold_floor_once(path):
    """One bare Deno process with one Worker: ms from asking for it to the Worker's first
    statement (the cold start's floor)."""
    asked = time.time() * 1000
    return float(deno_script(path, "--no-lock", "--no-code-cache", "--unstable-worker-options", timeout=60)) - asked


def deno_floor(n):
    return run_deno(FLOOR_SCRIPT % n)


def echo_floor(n, port):
    return run_deno(ECHO_FLOOR_SCRIPT % (n, port), f"--allow-net=127.0.0.1:{port}")


def bench_application():
    """The project's application with one more route, /bench/echo/: a Channels consumer
    that sends back each text frame it is given."""
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import URLRouter
    from django.urls import path

    from symposium.asgi import application

    class Echo(AsyncWebsocketConsumer):
        async def receive(self, text_data=None, bytes_data=None):
            await self.send(text_data=text_data)

    echo = URLRouter([path("bench/echo/", Echo.as_asgi())])

    async def app(scope, receive, send):
        if scope["type"] == "websocket" and scope["path"] == "/bench/echo/":
            return await echo(scope, receive, send)
        return await application(scope, receive, send)

    return app


def cpu_seconds():
    usage = os.times()
    return usage.user + usage.system


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
    from isolates.server import LocalServer

    server = LocalServer(bench_application()).start()
    print(f"Symposium isolate benchmark: {options.runs} runs per start measurement, {options.calls} calls per path")

    async def make_service(warm):
        service = RunService(server.port, warm_size=warm)
        if warm:
            await service.warm_up()
            await service.pool.fill()
        return service

    cold_service = server.call(make_service(0))
    # Cold starts and their floor taken in turn, so that both see the machine alike.
    cold, cold_floor = [], []
    with tempfile.NamedTemporaryFile("w", suffix=".js") as script:
        script.write(COLD_FLOOR_SCRIPT)
        script.flush()
        for _ in range(max(20, options.runs // 4)):
            cold.extend(server.call(start_times(cold_service, tenant, 1), 3600))
            cold_floor.append(cold_floor_once(script.name))
    print(f"cold start to first statement      {percentiles(cold)}")
    print(f"  floor: a bare Deno process + Worker {percentiles(cold_floor)}")

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
    cpu = cpu_seconds()
    inline = server.call(call_times(warm_service, tenant, options.calls), 3600)
    cpu = cpu_seconds() - cpu
    print(f"fileExists round trip, inline      {percentiles(inline)}")
    print(f"  server CPU per call (one at a time)    {1000 * cpu / (options.calls + 20):.3f} ms")
    cpu = cpu_seconds()
    throughput = server.call(call_times(warm_service, tenant, options.calls, THROUGHPUT_BLOCK), 3600)
    cpu = cpu_seconds() - cpu
    print(f"  20 in flight from one block            {1000 * throughput['calls'] / throughput['ms']:.0f} calls/s, "
          f"server CPU per call {1000 * cpu / (options.calls + 20):.3f} ms")
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
            floor = rq_floor(django_rq.get_queue("capabilities"), max(100, options.calls // 4))
            print(f"floor: an empty RQ job             {percentiles(floor)}")
        finally:
            worker.terminate()
            worker.wait(10)

    floor = deno_floor(options.calls)
    print(f"floor: Deno Worker postMessage     {percentiles(floor)}")
    cpu = cpu_seconds()
    floor = echo_floor(options.calls, server.port)
    cpu = cpu_seconds() - cpu
    print(f"floor: websocket echo via Worker   {percentiles(floor)}")
    print(f"  server CPU per echo                    {1000 * cpu / (options.calls + 50):.3f} ms")

    server.call(cold_service.shutdown(), 60)
    server.call(warm_service.shutdown(), 60)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
