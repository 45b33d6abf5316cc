"""Memory-heavy calls (canvas exports, image transforms) share one budget per server
process (capabilities/memory_budget.py), besides each call's own bound: exports side by
side wait their turn instead of adding up to more than the server holds."""

import io
import threading
import time

import pytest
from PIL import Image

from capabilities.base import CapabilityError
from capabilities.image.handlers import image_transform
from capabilities.memory_budget import MB, MemoryBudget, process_budget
from tenants.ratelimit import reset_limiter
from tests.helpers import context_for

pytestmark = [pytest.mark.django_db(transaction=True)]


def status_kb(name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise LookupError(name)


def reset_peak_rss():
    """Start the kernel's high-water mark of this process's resident memory afresh."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# Eight 8K canvases exported at once, from one block: what took a server to 1.9 GB.
PARALLEL_EXPORTS = """
const ids = [];
for (let i = 0; i < 8; i++) {
  const { canvasId } = await symposium.canvas.createCanvas(7680, 4320);
  await symposium.canvas.draw(canvasId, [
    { type: 'fillRect', x: 0, y: 0, width: 7680, height: 4320, style: `rgb(${i * 30}, 90, 160)` },
    { type: 'fillRect', x: 100 * i, y: 100, width: 2000, height: 1500, style: 'white' },
  ]);
  ids.push(canvasId);
}
const outcomes = await Promise.allSettled(ids.map((id) => symposium.canvas.exportImage(id, 'png')));
export default () => outcomes.map((o) => o.status === 'fulfilled'
  ? { ok: true, size: o.value.size }
  : { ok: false, code: o.reason.code, message: o.reason.message });
"""


def test_cant_exhaust_server_memory_with_parallel_exports(run_block, make_tenant, settings):
    reset_limiter()
    settings.SYMPOSIUM_RQ_CAPABILITIES = []  # inline: the exports run in this process
    tenant = make_tenant("painter", "Advanced")
    budget_mb = settings.SYMPOSIUM_HEAVY_MEMORY_MB
    resident_before = status_kb("VmRSS")
    reset_peak_rss()
    run = run_block(tenant, PARALLEL_EXPORTS, timeout=300)
    growth_mb = (status_kb("VmHWM") - resident_before) / 1024
    assert run.status == "succeeded", (run.error_code, run.error)
    outcomes = run.result
    assert len(outcomes) == 8
    # The server's memory grew by less than the budget (whose estimates are generous),
    # not by the eight exports' sum.
    assert growth_mb < budget_mb, growth_mb
    # Exports took turns: at least one finished; any that could not get its turn in time
    # was refused plainly, with a retry hint, never left hanging.
    assert any(o["ok"] and o["size"] > 0 for o in outcomes)
    for refused in (o for o in outcomes if not o["ok"]):
        assert refused["code"] == "RATE_LIMITED", refused
        assert "this server's memory for such work is in use by other calls" in refused["message"]
    assert process_budget().in_use == 0
    reset_limiter()


def test_it_lets_memory_heavy_calls_take_turns_first_come_first_served():
    budget = MemoryBudget(100 * MB)
    order, started = [], threading.Event()

    def hold(name, nbytes, seconds):
        with budget.reserve(nbytes, None, name):
            order.append(name)
            started.set()
            time.sleep(seconds)

    first = threading.Thread(target=hold, args=("large", 80 * MB, 0.3))
    first.start()
    started.wait(5)
    # A second large call arrives before a small one that would fit now: it goes first,
    # so a stream of small calls can never starve a large one.
    second = threading.Thread(target=hold, args=("large again", 80 * MB, 0))
    second.start()
    time.sleep(0.05)
    third = threading.Thread(target=hold, args=("small", 10 * MB, 0))
    third.start()
    for thread in (first, second, third):
        thread.join(10)
    assert order == ["large", "large again", "small"]
    assert budget.in_use == 0


def test_cant_wait_forever_for_the_memory_budget():
    budget = MemoryBudget(100 * MB)
    release = threading.Event()
    holding = threading.Event()

    def hold():
        with budget.reserve(90 * MB, None, "Exporting this canvas"):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)

    class ShortDeadline:
        def timeout(self, cap):
            return min(cap, 0.2)

    started = time.monotonic()
    with pytest.raises(CapabilityError) as refused:
        with budget.reserve(20 * MB, ShortDeadline(), "Exporting this canvas"):
            pass
    assert time.monotonic() - started < 2
    assert refused.value.code == "RATE_LIMITED" and refused.value.retry_after == 1
    assert refused.value.message.startswith("Exporting this canvas needs about 20 MB")
    release.set()
    holder.join(5)
    assert budget.in_use == 0


def test_cant_reserve_more_than_the_whole_budget():
    with pytest.raises(CapabilityError) as refused:
        with MemoryBudget(100 * MB).reserve(200 * MB, None, "Transforming this image"):
            pass
    assert refused.value.code == "QUOTA_EXCEEDED"
    assert refused.value.message == (
        "Transforming this image would need about 200 MB; this server runs memory-heavy work of at most 100 MB at once.")


def test_it_reserves_an_image_transforms_memory_before_decoding(make_tenant, settings):
    tenant = make_tenant("photos", "Advanced")
    picture = Image.new("RGB", (3000, 2000), "teal")
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    (tenant.storage_root() / "big.png").write_bytes(buffer.getvalue())
    ctx = context_for(tenant)
    # 3000 x 2000 pixels, 12 bytes each: 68 MB, more than a 50 MB budget allows.
    settings.SYMPOSIUM_HEAVY_MEMORY_MB = 50
    with pytest.raises(CapabilityError) as refused:
        image_transform(ctx, {"path": "big.png", "steps": [{"type": "grayscale"}], "output": "small.png"})
    assert refused.value.code == "QUOTA_EXCEEDED" and "about 68 MB" in refused.value.message
    assert not (tenant.storage_root() / "small.png").exists()
    # An enlarging step counts the picture it makes: 6000 x 4000 does not fit 200 MB.
    settings.SYMPOSIUM_HEAVY_MEMORY_MB = 200
    assert image_transform(ctx, {"path": "big.png", "steps": [{"type": "grayscale"}], "output": "small.png"})["size"] > 0
    with pytest.raises(CapabilityError) as refused:
        image_transform(ctx, {"path": "big.png", "steps": [{"type": "resize", "width": 6000}], "output": "large.png"})
    assert refused.value.code == "QUOTA_EXCEEDED" and "about 274 MB" in refused.value.message
    assert process_budget().in_use == 0
