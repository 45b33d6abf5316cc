"""Figures for docs/isolates.md: start-up to the block's first statement (cold and warm),
a capability call's round trip, the postMessage floor under it, and an idle isolate's
memory. Run with `pytest tests/test_pool_bench.py -m slow -s` to see the table (it takes
about 20 s, so it runs only when slow tests are asked for); the assertions only catch
regressions by an order of magnitude."""

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from isolates.pool import IsolatePool, find_deno
from tests.support.stub_broker import StubBroker

pytestmark = pytest.mark.slow

RUNS = 50
FIRST_STATEMENT = "export default () => 1;"


def percentiles(samples_ms):
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50": round(statistics.median(ordered), 2), "p99": round(p99, 2), "n": len(ordered)}


async def time_to_first_statement(pool, broker):
    run = broker.add_run(FIRST_STATEMENT)
    asked = time.monotonic()
    isolate = await pool.acquire(memory_mb=128, cpu_seconds=60)
    await isolate.assign(broker.url, run.token)
    await run.finished()
    await isolate.wait()
    return (run.started_at - asked) * 1000


@pytest.fixture(autouse=True)
def only_when_asked(request):
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("a benchmark: run with -m slow")


async def test_start_up_times_and_idle_memory():
    figures = {}
    async with StubBroker() as broker:
        async with IsolatePool(broker.port, warm_size=0) as pool:
            figures["cold start to first statement (ms)"] = percentiles([await time_to_first_statement(pool, broker) for _ in range(RUNS)])

        async with IsolatePool(broker.port, warm_size=10, warm_limits=[(128, 60)]) as pool:
            warm = []
            for _ in range(RUNS // 10):
                # Measure with the pool full, as a server between bursts would be; the
                # refill of the previous batch would otherwise compete for the 2 cores.
                await pool.fill()
                idle = list(pool._warm[(128, 60)])
                figures.setdefault("idle isolate RSS (MB)", round(statistics.mean(i.rss() for i in idle) / 2**20, 1))
                figures.setdefault("idle isolate PSS (MB)", round(statistics.mean(i.pss() for i in idle) / 2**20, 1))
                for _ in range(10):
                    warm.append(await time_to_first_statement(pool, broker))
                    while pool._refill_task is not None and not pool._refill_task.done():
                        await asyncio.sleep(0.05)  # let the refill finish before the next sample
            figures["warm start to first statement (ms)"] = percentiles(warm)

        async with IsolatePool(broker.port, warm_size=0) as pool:
            code = """
            const samples = [];
            for (let i = 0; i < 2000; i++) { const t = performance.now(); await symposium.fileExists('x'); samples.push(performance.now() - t); }
            samples.sort((a, b) => a - b);
            export default () => ({ p50: samples[1000], p99: samples[1980] });
            """
            run = broker.add_run(code, answer=lambda op, args: {"ok": True, "data": True})
            isolate = await pool.acquire(memory_mb=128, cpu_seconds=60)
            await isolate.assign(broker.url, run.token)
            result = (await run.finished(timeout=60))["result"]
            figures["capability call round trip, stub broker (ms)"] = {k: round(v, 3) for k, v in result.items()}

    figures["bare Worker postMessage round trip (ms)"] = postmessage_round_trip()
    print("\n" + json.dumps(figures, indent=2))

    cold = figures["cold start to first statement (ms)"]
    warm = figures["warm start to first statement (ms)"]
    assert warm["p50"] < cold["p50"]
    assert warm["p50"] < 100 and cold["p50"] < 2000
    assert figures["idle isolate PSS (MB)"] < 100


def postmessage_round_trip():
    """The floor: main <-> Worker messages in a plain Deno process, no sandbox, no broker."""
    main = """
    const worker = new Worker(URL.createObjectURL(new Blob(["self.onmessage = (e) => self.postMessage(e.data);"], { type: "text/javascript" })), { type: "module" });
    const samples = [];
    let t = 0;
    const next = () => { t = performance.now(); worker.postMessage({ id: samples.length, op: "fileExists", args: { path: "x" } }); };
    worker.onmessage = () => {
      samples.push(performance.now() - t);
      if (samples.length < 5000) return next();
      samples.sort((a, b) => a - b);
      console.log(JSON.stringify({ p50: samples[2500], p99: samples[4950] }));
      Deno.exit(0);
    };
    next();
    """
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "roundtrip.js"
        script.write_text(main)
        output = subprocess.run([find_deno(), "run", "--no-config", "--no-lock", str(script)], capture_output=True, timeout=60, check=True)
    return {k: round(v, 3) for k, v in json.loads(output.stdout).items()}
