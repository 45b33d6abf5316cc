"""A run's CPU budget and its memory bound, end to end: real isolates (Deno, locked down)
against the real broker in the in-process Daphne server, at each seed profile."""

import time

import pytest

from isolates import sandbox
from tenants.models import PolicyOverride
from tenants.profiles import PROFILES
from tenants.ratelimit import reset_limiter

pytestmark = [pytest.mark.django_db(transaction=True)]

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def fresh_limits():
    reset_limiter()
    yield
    reset_limiter()


def override(tenant, **values):
    for setting, value in values.items():
        PolicyOverride.objects.create(tenant=tenant, setting=setting, value=str(value))


# -- CPU time ----------------------------------------------------------------------------


def test_cant_keep_a_core_busy_past_the_cpu_budget(run_block, acme):
    # Thirty seconds of wall-clock time, half a second of CPU: the CPU budget ends it.
    override(acme, time_limit_seconds=30, cpu_time_limit_ms=500)
    started = time.monotonic()
    run = run_block(acme, "console.log('spinning'); while (true) {}")
    elapsed = time.monotonic() - started
    assert run.status == "failed" and run.error_code == "CPU_LIMIT", (run.status, run.error_code, run.error)
    assert run.error == "The run used up its CPU time limit of 500 ms and was stopped."
    assert elapsed < 10
    # Measured to the supervisor's last check: the budget, and at most a little more.
    assert 500 <= run.cpu_ms < 1500
    assert run.logs == ["spinning"]
    # The runner page's figures carry the run's CPU (its finished event).
    finished = [e for e in run.events if e.get("event") == "finished"]
    assert finished and finished[-1]["cpu_ms"] == run.cpu_ms


def test_it_keeps_the_wall_clock_timeout_distinct_from_the_cpu_limit(run_block, acme):
    override(acme, time_limit_seconds=2, cpu_time_limit_ms=60_000)
    run = run_block(acme, "while (true) {}")
    assert run.status == "timed_out" and run.error_code == "TIMEOUT"
    # What the spinning got of a core in two seconds (less on a busy machine; at most the
    # two seconds on each of the machine's cores), far from the CPU budget.
    assert run.cpu_ms is not None and 0 < run.cpu_ms <= 2 * 2000 + 500


def test_it_lets_a_waiting_block_run_past_its_cpu_budget_in_wall_time(run_block, acme):
    # Waiting (timers, capability calls) costs no CPU: the run may take its wall-clock
    # time, many times its CPU budget.
    override(acme, time_limit_seconds=30, cpu_time_limit_ms=300)
    code = """
    for (let i = 0; i < 30; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      await symposium.fileExists('notes.txt');
    }
    export default () => 'waited';
    """
    run = run_block(acme, code)
    assert run.status == "succeeded", (run.error_code, run.error)
    assert run.result == "waited"
    assert run.duration >= 1.5  # five times the CPU budget
    assert run.cpu_ms is not None and run.cpu_ms < 300


def test_it_shows_the_runs_cpu_on_the_admins_run_page(run_block, acme, admin_client):
    run = run_block(acme, "let x = 0; for (let i = 0; i < 1e6; i++) x += i; export default () => x;")
    assert run.status == "succeeded" and run.cpu_ms is not None
    page = admin_client.get(f"/admin/tenants/blockrun/{run.id}/change/").content.decode()
    assert "Cpu ms" in page and f">{run.cpu_ms}<" in page.replace("\n", "").replace(" ", "")


def test_it_takes_the_cpu_budget_from_the_profile(run_block, make_tenant):
    tenant = make_tenant("spinner", "Basic")
    basic = next(p for p in PROFILES if p["name"] == "Basic")
    override(tenant, cpu_time_limit_ms=400)  # the tenant's override replaces Basic's budget
    run = run_block(tenant, "while (true) {}")
    assert run.error_code == "CPU_LIMIT" and "400 ms" in run.error
    assert basic["cpu_time_limit_ms"] != 400


# -- memory outside the heap ----------------------------------------------------------

# Each attack holds memory outside the JavaScript heap, touching every page, and keeps
# going after a refusal with smaller pieces, as a block that wants the machine would.
# It reports what it holds every 32 MB.
ATTACK = """
const keep = [];
let held = 0, reported = 0, chunk = 16 << 20;
const GRAB;
while (true) {
  try {
    keep.push(grab(chunk));
    held += chunk;
    if (held - reported >= (32 << 20)) { console.log(String(held / (1 << 20))); reported = held; }
  } catch (e) {
    if (chunk > 65536) chunk >>= 2;
    else keep.push(new Array(4096).fill(held));
  }
}
"""
GRABS = {
    "array_buffers": "grab = (size) => { const b = new ArrayBuffer(size); new Uint8Array(b).fill(1); return b; }",
    "typed_arrays": "grab = (size) => new Float64Array(size / 8).fill(1.5)",
    "webassembly_memory": (
        "memory = new WebAssembly.Memory({ initial: 1, maximum: 65536 }), "
        "grab = (size) => { const before = memory.buffer.byteLength; memory.grow(size / 65536); "
        "new Uint8Array(memory.buffer, before).fill(1); return null; }"
    ),
}
# Resident pages that are no private memory: the Deno binary's own (about 90 MB mapped,
# a part of it resident), which every isolate shares.
SHARED_PAGES_MB = 96


@pytest.mark.parametrize("attack", GRABS)
@pytest.mark.parametrize("profile", [p["name"] for p in PROFILES])
def test_cant_use_more_memory_outside_the_heap_than_the_profile_allows(run_block, make_tenant, profile, attack):
    tenant = make_tenant(f"hoarder-{profile.lower()}", profile)
    memory_mb = next(p["memory_mb"] for p in PROFILES if p["name"] == profile)
    run = run_block(tenant, ATTACK.replace("GRAB", GRABS[attack]), timeout=120)
    assert run.status == "failed" and run.error_code == "MEMORY_LIMIT", (run.status, run.error_code, run.error)
    assert f"{memory_mb} MB" in run.error
    held = max(map(float, run.logs or ["0"]))
    # The profile's memory (with V8's young generation) and the runtime's headroom, which
    # the heap and everything outside it share: never the profile's memory twice over.
    bound = sandbox.heap_budget_mb(memory_mb) + sandbox.RUNTIME_DATA_MB
    assert memory_mb / 2 <= held <= bound, (held, bound)
    assert run.peak_memory_bytes <= (bound + SHARED_PAGES_MB) * MB
    # The server is unharmed: the next run, of another tenant, runs as usual.
    after = run_block(make_tenant(f"after-{profile.lower()}-{attack[:5]}", "Interactive"), "export default () => 'fine'")
    assert after.status == "succeeded" and after.result == "fine"
