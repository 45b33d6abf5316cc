"""Floods that would cost the platform: raw writes to an isolate's stderr, forged
launcher lines, refused calls by the thousand, console lines of nothing. Each test is the
attack, on real isolates (and, for refusals and the console, the real broker in a real
server), and checks what it must not get."""

import asyncio
import statistics
import sys
import threading
import time
import tracemalloc

import pytest
from django.conf import settings

from isolates import floods
from isolates.pool import STDERR_MAX_BYTES, STDERR_TAIL_BYTES, Isolate, IsolatePool
from tenants import audit
from tenants.models import AuditLog
from tenants.ratelimit import reset_limiter
from tests.support.stub_broker import StubBroker, run_block


@pytest.fixture
async def broker():
    async with StubBroker() as broker:
        yield broker


@pytest.fixture
async def pool(broker):
    pool = IsolatePool(broker.port, warm_size=0)
    yield pool
    await pool.shutdown()


# -- raw stderr, from a real isolate --------------------------------------------------------

# Every way to the isolate's standard streams that Deno 2 gives a worker, each tried with
# 1 MB at a time for up to half a second (gigabytes, were any open).
STDERR_ROUTES = {
    "core.writeSync": "Deno[Deno.internal].core.writeSync(2, bytes)",
    "core.print": "Deno[Deno.internal].core.print(text, true)",
    "core.ops": "Deno[Deno.internal].core.ops.op_print(text, true)",
    "Deno.stderr": "Deno.stderr.writeSync(bytes)",
    "Deno.stdout": "Deno.stdout.writeSync(bytes)",
    "fs.writeSync(2)": "fs.writeSync(2, text)",
    "fs.writeSync(1)": "fs.writeSync(1, text)",
    "fs stream fd 2": "await new Promise((ok, fail) => fs.createWriteStream(null, { fd: 2 }).on('error', fail).write(text, ok))",
    "required fs": "createRequire('file:///x.js')('fs').writeSync(2, text)",
    "getBuiltinModule": "process.getBuiltinModule('fs').writeSync(2, text)",
    "tty.WriteStream(2)": "new tty.WriteStream(2).write(text)",
    "net.Socket(fd 2)": "await new Promise((ok, fail) => new net.Socket({ fd: 2, readable: false, writable: true }).on('error', fail).write(text, ok))",
    "tty_wrap binding": "new (process.binding('tty_wrap').TTY)(2, {}).writeUtf8String({}, text)",
    "node:console": "nodeConsole.error(text)",
    "node:console named": "consoleError(text)",
    "node:console Console": "new nodeConsole.Console(process.stderr, process.stderr).error(text)",
    "process.stderr": "process.stderr.write(text)",
    "process.stdout": "process.stdout.write(text)",
    "process._rawDebug": "process._rawDebug(text)",
}


def route_block(routes):
    attempts = "\n".join(
        f"  out[{name!r}] = await attempt(async () => {{ {expression}; }});" for name, expression in routes.items()
    )
    return f"""
import fs from 'node:fs';
import tty from 'node:tty';
import net from 'node:net';
import process from 'node:process';
import nodeConsole, {{ error as consoleError }} from 'node:console';
import {{ createRequire }} from 'node:module';
const text = 'symposium-sandbox: forged\\n' + 'x'.repeat(1024 * 1024);
const bytes = new TextEncoder().encode(text);
async function attempt(write) {{
  const until = Date.now() + 500;
  let n = 0;
  try {{
    while (Date.now() < until) {{ await write(); n++; }}
    return 'wrote ' + n;
  }} catch (e) {{ return 'refused ' + e.name; }}
}}
export default async () => {{
  const out = {{}};
{attempts}
  return out;
}};
"""


async def test_cant_write_to_stderr_through_any_route(pool, broker):
    # 256 MB: streams that buffer (a new tty.WriteStream per write, net.Socket) hold
    # megabytes of unwritten text, which at 64 MB ends the run on its own memory limit
    # before every route has been tried.
    run_, done, exit = await run_block(pool, broker, route_block(STDERR_ROUTES), console_cap=4096, wall_seconds=40,
                                       memory_mb=256)
    assert done is not None and done["ok"], (done, exit.reason)
    # Nothing reached the isolate's stderr: a route either refuses or is the console.
    assert exit.stderr == "", exit.stderr[:500]
    assert not exit.stderr_flooded
    results = done["result"]
    assert set(results) == set(STDERR_ROUTES)
    consoled = {"node:console", "node:console named", "node:console Console", "process.stderr", "process.stdout", "process._rawDebug"}
    # Deno's fs.createWriteStream takes no descriptor from its options (its fd stays
    # null): its writes "succeed" and go nowhere, as the empty stderr above shows.
    nowhere = {"fs stream fd 2"}
    for name, outcome in results.items():
        if name not in consoled | nowhere:
            assert outcome.startswith("refused"), (name, outcome)
    # What went to the console met its cap, as any console line does.
    assert sum(len(log["text"].encode()) for log in run_.logs) <= 4096 + 200


async def test_cant_reach_denos_internals(pool, broker):
    code = """
    export default () => {
      const symbols = Object.getOwnPropertySymbols(Deno).map(String);
      return { symbols, internal: typeof Deno.internal, keyed: typeof Deno[Symbol.for('Deno.internal')],
               core: typeof globalThis.Deno?.core, bootstrap: typeof globalThis.__bootstrap,
               frozen: Object.isFrozen(Deno), globalSymbols: Object.getOwnPropertySymbols(globalThis)
                 .map((s) => globalThis[s]).filter((v) => v && typeof v === 'object' && ('core' in v || 'ops' in v)).length };
    };
    """
    _, done, _ = await run_block(pool, broker, code)
    assert done["result"] == {"symbols": [], "internal": "undefined", "keyed": "undefined", "core": "undefined",
                              "bootstrap": "undefined", "frozen": True, "globalSymbols": 0}


async def test_the_runtimes_own_lines_after_the_assignment_keep_their_name(pool, broker):
    # The runtime ends on a malformed start frame (after the assignment: the block could
    # be running by then); its line carries the isolate's mark, so the pool keeps it as
    # the runtime's, and not as a line the block wrote.
    run = broker.add_run("export default () => 1", operations=["not a table"])
    isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
    await isolate.assign(broker.url, run.token)
    exit = await asyncio.wait_for(isolate.wait(), 15)
    assert exit.returncode == 11
    assert exit.stderr.startswith("symposium-runtime: the start frame"), exit.stderr
    assert isolate._mark not in exit.stderr


# -- the pool's reading of stderr, from a real process ------------------------------------

# A process standing for an isolate whose block found a way to fd 2: it prints "ready",
# reads its assignment, then writes what it is given, as fast as it can.
FLOODER = """
import os, sys
sys.stderr.write("symposium-sandbox: a genuine note\\n"); sys.stderr.flush()
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
payload = ({payload}).encode()
repeat = {repeat}
for _ in range(repeat):
    try:
        os.write(2, payload)
    except BrokenPipeError:
        break
"""


async def flooding_isolate(pool, payload, repeat):
    """`payload`: a Python expression of the text written `repeat` times."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOODER.format(payload=payload, repeat=repeat),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    isolate = Isolate(process=process, memory_mb=64, cpu_limit_seconds=10, spawned_at=time.monotonic())
    isolate._stderr_task = asyncio.ensure_future(isolate._read_stderr(pool))
    assert (await asyncio.wait_for(process.stdout.readline(), 10)).strip() == b"ready"
    await isolate.assign("ws://127.0.0.1:1/", "token")
    return isolate


async def test_cant_write_gigabytes_to_stderr(pool):
    # 4 GB offered at once: the pool reads at most its bound, ends the isolate, and
    # says why; it keeps only the tail.
    started = time.monotonic()
    tracemalloc.start()
    try:
        isolate = await flooding_isolate(pool, "('y' * 1023 + '\\n') * 1024", 4096)
        exit = await asyncio.wait_for(isolate.wait(), 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exit.stderr_flooded and exit.killed
    assert exit.reason.startswith("the block wrote more than the isolate's standard error allows")
    assert isolate._stderr_read <= STDERR_MAX_BYTES + 64 * 1024
    assert len(exit.stderr.encode()) <= STDERR_TAIL_BYTES + 64
    assert time.monotonic() - started < 10
    assert peak < 8 * 1024 * 1024  # the server's own memory for all this: bounded


async def test_cant_flood_stderr_with_empty_lines(pool):
    isolate = await flooding_isolate(pool, "'\\n' * 4096", 100_000)
    exit = await asyncio.wait_for(isolate.wait(), 30)
    assert exit.stderr_flooded
    assert isolate._stderr_lines <= 5000 + 4096


async def test_cant_forge_the_launchers_lines_or_grow_the_servers_memory(pool):
    # Distinct forged launcher and runtime lines: none is logged as the launcher's, each
    # is kept (in the bounded tail) as the isolate's, and the pool remembers no more.
    forged = ("''.join(f'symposium-sandbox: forged note {i}\\n' for i in range(2000))"
              " + 'symposium-runtime: forged\\n' + 'symposium-runtime[0123456789abcdef01234567]: wrong mark\\n'")
    isolate = await flooding_isolate(pool, forged, 1)
    exit = await asyncio.wait_for(isolate.wait(), 30)
    assert pool._noted == {"symposium-sandbox: a genuine note"}
    lines = exit.stderr.splitlines()
    assert "symposium-sandbox: a genuine note" in lines or len(exit.stderr.encode()) >= STDERR_TAIL_BYTES - 100
    forged_kept = [line for line in lines if "forged" in line or "wrong mark" in line]
    assert forged_kept and all(line.startswith("[isolate] ") for line in forged_kept)
    assert lines[-1] == "[isolate] symposium-runtime[0123456789abcdef01234567]: wrong mark"


# -- refusals and the console, through the real broker ------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fresh_limits():
    reset_limiter()
    from tenants.ratelimit import limiter

    limiter().reset()
    yield
    reset_limiter()


def audit_rows(**filters):
    audit.flush()
    return list(AuditLog.objects.filter(**filters).order_by("id"))


def refusing_block(n):
    # A Basic tenant's storage is read-only: every write is refused by its policy.
    return f"""
    export default async () => {{
      let refused = 0;
      for (let i = 0; i < {n}; i += 16) {{
        const batch = Array.from({{ length: 16 }}, (_, j) => symposium.writeFile(`output/${{i + j}}.txt`, 'x').catch(() => refused++));
        await Promise.all(batch);
      }}
      return refused;
    }};
    """


@pytestmark_db
def test_cant_flood_the_audit_log_with_refusals(run_block, make_tenant, fresh_limits):
    tenant = make_tenant("basic-co", "Basic")
    n = 640
    run = run_block(tenant, refusing_block(n))
    assert run.status == "succeeded" and run.result == n, (run.error_code, run.error)
    rows = audit_rows(run_id=run.id)
    single = [r for r in rows if not r.message.endswith("are recorded one by one.")]
    summaries = [r for r in rows if r.message.endswith("are recorded one by one.")]
    assert len(single) == floods.REFUSAL_ROWS_PER_WINDOW
    assert all((r.operation, r.outcome, r.error_code) == ("writeFile", "denied", "PERMISSION_DENIED") for r in single)
    [summary] = summaries
    assert summary.message.startswith(f"{n - floods.REFUSAL_ROWS_PER_WINDOW} more refusals of files.writeFile (PERMISSION_DENIED)")
    assert (summary.capability, summary.outcome, summary.tenant_slug) == ("files", "denied", "basic-co")


@pytestmark_db
def test_cant_keep_making_refused_calls(run_block, make_tenant, fresh_limits):
    tenant = make_tenant("basic-co", "Basic")
    started = time.monotonic()
    run = run_block(tenant, refusing_block(50_000))
    assert time.monotonic() - started < 30
    assert run.status == "failed" and run.error_code == "RATE_LIMITED"
    assert run.error.startswith(f"The run was ended: it made more than {floods.REFUSALS_TO_END} calls that were refused")
    rows = audit_rows(run_id=run.id)
    assert len(rows) <= floods.REFUSAL_ROWS_PER_WINDOW + 2, "\n".join(f"{r.time:%S.%f} {r.capability} {r.operation} {r.error_code} {r.message[:70]}" for r in rows)
    assert rows[-1].operation in ("flood", "writeFile")


@pytestmark_db
def test_cant_write_empty_console_lines_for_free(run_block, make_tenant, fresh_limits):
    from tenants.models import PolicyOverride

    tenant = make_tenant("acme", "Interactive")
    PolicyOverride.objects.create(tenant=tenant, setting="console_output_cap", value=str(100 * floods.CONSOLE_LINE_COST))
    run = run_block(tenant, "export default () => { for (let i = 0; i < 1000; i++) console.log(); return 'survived'; };")
    assert run.status == "succeeded" and run.result == "survived", run.error
    # 100 empty lines fill a cap of 100 lines' framing; the rest is dropped.
    assert run.console_truncated
    assert len([line for line in run.console.split("\n") if line == ""]) <= 100


def latencies_block(n):
    return f"""
    export default async () => {{
      const times = [];
      for (let i = 0; i < {n}; i++) {{
        const t = performance.now();
        await symposium.fileExists('data/config.json');
        times.push(performance.now() - t);
      }}
      return times;
    }};
    """


def alongside(run_block, flooder, code):
    """Run `code` for another tenant while `flooder` floods; its run and the flood's."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("flood", run_block(*flooder)))
    thread.start()
    time.sleep(0.3)  # the flood is under way
    measured = run_block(*code)
    thread.join(60)
    return measured, result["flood"]


@pytestmark_db
def test_cant_flood_the_console_with_empty_lines(run_block, make_tenant, seeded, fresh_limits):
    flooder = make_tenant("flood-co", "Interactive")
    other = seeded("acme", "Interactive")
    alone = run_block(other, latencies_block(40))
    assert alone.status == "succeeded", alone.error
    code = "export default () => { for (let i = 0; i < 2_000_000; i++) console.log(); return 'survived'; };"
    measured, flood = alongside(run_block, (flooder, code), (other, latencies_block(40)))
    assert flood.status == "failed" and flood.error_code == "RATE_LIMITED"
    assert flood.error.startswith("The run was ended: it wrote console lines faster than")
    # It was ended once past its burst and rate of lines: at most that many lines were
    # written in the time it ran (the broker, on a loaded machine, may read them late).
    seconds = (flood.finished - flood.started).total_seconds()
    assert seconds < 60
    assert flood.console.count("\n") + 1 <= floods.CONSOLE_BURST + floods.CONSOLE_LINES_PER_SECOND * seconds
    assert measured.status == "succeeded", measured.error
    median_alone, median = statistics.median(alone.result), statistics.median(measured.result)
    assert median < max(4 * median_alone, median_alone + 50), (median_alone, median)


@pytestmark_db
def test_cant_slow_another_tenant_with_refused_calls(run_block, make_tenant, seeded, fresh_limits):
    flooder = make_tenant("basic-co", "Basic")
    other = seeded("acme", "Interactive")
    alone = run_block(other, latencies_block(40))
    measured, flood = alongside(run_block, (flooder, refusing_block(50_000)), (other, latencies_block(40)))
    assert flood.status == "failed" and flood.error_code == "RATE_LIMITED"
    assert measured.status == "succeeded", measured.error
    median_alone, median = statistics.median(alone.result), statistics.median(measured.result)
    assert median < max(4 * median_alone, median_alone + 50), (median_alone, median)


@pytestmark_db
def test_cant_hide_refusals_by_spreading_them_over_windows(acme):
    # Refusals spread over three minutes: each window has its own rows and its own count,
    # and the counts add up to every refusal made.
    now = [0.0]
    log = floods.RefusalLog(clock=lambda: now[0])
    log.bind(tenant_id=acme.pk, tenant_slug=acme.slug, run_id=None, user_id=None)
    rowed = 0
    for minute in range(3):
        for i in range(100):
            now[0] = minute * floods.REFUSAL_WINDOW + i * 0.1
            rowed += log.admit("files", "writeFile", "PERMISSION_DENIED")
    log.close()
    assert rowed == 3 * floods.REFUSAL_ROWS_PER_WINDOW
    assert log.flood is None
    summaries = audit_rows(tenant_slug=acme.slug)
    assert [int(r.message.split()[0]) for r in summaries] == [100 - floods.REFUSAL_ROWS_PER_WINDOW] * 3
    assert all("more refusals of files.writeFile (PERMISSION_DENIED)" in r.message for r in summaries)


def test_cant_hold_the_platform_with_events_faster_than_they_are_sent():
    """A run's events wait in memory until the channel layer takes them: a burst of
    console lines faster than that keeps at most EVENT_BACKLOG of them (watchers get one
    notice; the record keeps every line), and its end is never dropped."""
    from channels.layers import InMemoryChannelLayer

    from isolates.runevents import EVENT_BACKLOG, RunEvents, run_group

    async def main():
        layer = InMemoryChannelLayer(capacity=100_000)
        watcher = await layer.new_channel()
        await layer.group_add(run_group("r1"), watcher)
        events = RunEvents(layer, "r1")
        for i in range(20_000):  # all before the sender runs once
            events.publish({"event": "log", "level": "log", "text": str(i), "t": 0})
        events.publish({"event": "done", "ok": True, "result": 1})
        waiting = events.queue.qsize()
        await asyncio.wait_for(events.flush(), 10)
        received = []
        while True:
            try:
                received.append(await asyncio.wait_for(layer.receive(watcher), 0.05))
            except asyncio.TimeoutError:
                break
        events.close()
        return waiting, received

    waiting, received = asyncio.run(main())
    assert waiting == EVENT_BACKLOG + 2  # the backlog, the one notice, the end
    assert [e["text"] for e in received[:3]] == ["0", "1", "2"]
    assert "faster than they can be shown live" in received[-2]["text"]
    assert received[-1]["event"] == "done"


def watch_test_layers():
    from channels.layers import InMemoryChannelLayer

    layers = [("memory", lambda: InMemoryChannelLayer(capacity=1000))]
    if settings.REDIS_URL:
        from channels_redis.core import RedisChannelLayer

        layers.append(("redis", lambda: RedisChannelLayer(hosts=[settings.REDIS_URL], prefix="symposium-test-watch")))
    return layers


@pytest.mark.parametrize("kind", [name for name, _ in watch_test_layers()])
def test_a_runs_calls_are_shown_to_whoever_watches_it_and_not_sent_to_nobody(kind, monkeypatch):
    """Calls and console lines are published only while the run's group has a member
    (isolates/runevents.py): a watcher that joins mid-run sees them from within
    WATCH_CHECK_SECONDS of joining; its start and end are published whoever watches."""
    from isolates import runevents
    from isolates.runevents import RunEvents, run_group

    monkeypatch.setattr(runevents, "WATCH_GRACE_SECONDS", 0.2)
    make_layer = dict(watch_test_layers())[kind]

    async def publish_for(events, seconds, first):
        n = first
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            events.publish({"event": "call", "op": "fileExists", "n": n})
            n += 1
            await asyncio.sleep(0.01)
        return n

    async def received(layer, channel):
        got = []
        while True:
            try:
                got.append(await asyncio.wait_for(layer.receive(channel), 0.2))
            except asyncio.TimeoutError:
                return got

    async def main():
        layer = make_layer()
        sent = []  # what the run hands the channel layer
        group_send = layer.group_send

        async def counting_group_send(name, message):
            sent.append(message["event"])
            await group_send(name, message)

        layer.group_send = counting_group_send
        group = run_group(f"watch-{kind}-{time.time_ns()}")
        events = RunEvents(layer, group[len("run-"):])
        events.publish({"event": "started", "t": 0})
        # Nobody watches: past the grace, calls are dropped before they are queued.
        n = await publish_for(events, 0.8, 0)
        await events.flush()
        sent_unwatched = [event for event in sent if event == "call"]
        watcher = await layer.new_channel()
        await layer.group_add(group, watcher)
        joined = time.monotonic()
        n_joined = n
        n = await publish_for(events, 1.2, n)
        events.publish({"event": "done", "ok": True, "result": 1})
        await asyncio.wait_for(events.flush(), 10)
        got = await received(layer, watcher)
        events.close()
        await layer.group_discard(group, watcher)
        return sent_unwatched, got, n_joined, n, joined

    sent_unwatched, got, n_joined, n, joined = asyncio.run(main())
    # The grace (0.2 s here) and one check's answer at most: 20-odd of the 80 calls.
    assert len(sent_unwatched) <= 40, len(sent_unwatched)
    calls = [e["n"] for e in got if e["event"] == "call"]
    # From within WATCH_CHECK_SECONDS (0.5 s, 50 calls at one per 10 ms) of joining, all
    # of them, in order; none of those made before the watcher joined.
    assert calls, got
    assert calls[0] >= n_joined and calls[0] <= n_joined + 70, (calls[0], n_joined)
    assert calls == list(range(calls[0], n)), calls
    assert got[-1]["event"] == "done"
