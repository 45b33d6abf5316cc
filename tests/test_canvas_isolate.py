"""The seed's canvas examples, verbatim, as blocks in a real isolate.

A real Deno isolate from the pool runs the block; the stub broker (tests/support/stub_broker.py)
answers its calls the way the platform's broker does: decide() first, then the handler
in a thread, its reply's fields sent as the envelope. So the code a block author copies
from the seed runs unchanged against these handlers, and gets back what it expects
(`canvas.canvasId`, `imageData.data.length` of a Uint8Array).
"""

import asyncio
import io

import pytest
from asgiref.sync import sync_to_async
from PIL import Image

from capabilities.base import CapabilityError
from capabilities.registry import OPERATIONS
from isolates.pool import IsolatePool
from isolates.protocol import decode_value
from tenants.policy import decide
from tests.helpers import context_for
from tests.support.stub_broker import StubBroker, run_block
from tests.test_canvas import isolated_run_state  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.django_db(transaction=True)

# The operations these blocks call, answered as the broker would; any other is refused.
ANSWERED = {name: OPERATIONS[name] for name in ("canvas.createCanvas", "canvas.draw", "canvas.exportImage", "writeFile")}

# The seed's "Canvas Operations" example, unchanged.
SEED_CANVAS_EXAMPLE = """
// Create a canvas
const canvas = await symposium.canvas.createCanvas(800, 600);
console.log(`Created canvas: ${canvas.canvasId}`);

// Draw on canvas
await symposium.canvas.draw(canvas.canvasId, [
  { type: 'fillRect', x: 10, y: 10, width: 100, height: 100, style: '#ff0000' },
  { type: 'fillText', text: 'Hello World', x: 20, y: 30, style: '#000000' },
  { type: 'beginPath' },
  { type: 'arc', x: 200, y: 200, radius: 50, startAngle: 0, endAngle: Math.PI * 2 },
  { type: 'stroke', style: '#00ff00' }
]);

// Export as image
const imageData = await symposium.canvas.exportImage(canvas.canvasId, 'png');
console.log(`Exported ${imageData.data.length} bytes of PNG data`);
"""

# The seed's "Interactive Dashboard with Canvas" example, unchanged, with the chart
# function it leaves to the author and a default export that calls it.
SEED_DASHBOARD = """
function generateChartOperations(data) {
  const ops = [];
  const max = Math.max(...data.map((d) => d.value));
  data.forEach((d, i) => {
    const h = 600 * d.value / max;
    ops.push({ type: 'fillRect', x: 100 + i * 150, y: 700 - h, width: 100, height: h, style: d.color });
    ops.push({ type: 'fillText', text: d.label, x: 150 + i * 150, y: 730, style: '#333', font: '16px sans-serif', textAlign: 'center' });
  });
  ops.push({ type: 'beginPath' }, { type: 'moveTo', x: 80, y: 700 }, { type: 'lineTo', x: 1150, y: 700 }, { type: 'stroke', style: '#000', lineWidth: 2 });
  return ops;
}

// Content block that creates interactive charts
async function createDashboard(data) {
  // Create canvas for chart
  const canvas = await symposium.canvas.createCanvas(1200, 800);

  // Draw background
  await symposium.canvas.draw(canvas.canvasId, [
    { type: 'fillRect', x: 0, y: 0, width: 1200, height: 800, style: '#f5f5f5' }
  ]);

  // Draw data visualization
  const chartOperations = generateChartOperations(data);
  await symposium.canvas.draw(canvas.canvasId, chartOperations);

  // Export as PNG
  const imageData = await symposium.canvas.exportImage(canvas.canvasId, 'png');

  // Save to file
  const filename = `charts/dashboard_${Date.now()}.png`;
  await symposium.writeFile(filename, imageData.data);

  return { success: true, filename, size: imageData.data.length };
}

export default (input) => createDashboard(input);
"""

MISTAKES = """
const canvas = await symposium.canvas.createCanvas(100, 100);
const codes = [];
for (const attempt of [
  () => symposium.canvas.createCanvas(100000, 100000),
  () => symposium.canvas.draw(canvas.canvasId, [{ type: 'fillCircle', x: 1, y: 1 }]),
  () => symposium.canvas.draw(canvas.canvasId, [{ type: 'fillRect', x: NaN, y: 0, width: 1, height: 1 }]),
  () => symposium.canvas.draw(canvas.canvasId, [{ type: 'fillRect', x: 0, y: 0, width: 1, height: 1, style: 'url(javascript:alert(1))' }]),
  () => symposium.canvas.draw(canvas.canvasId, [{ type: 'drawImage', path: '../../etc/passwd', dx: 0, dy: 0 }]),
  () => symposium.canvas.exportImage(canvas.canvasId, 'jpeg'),
  () => symposium.canvas.exportImage('c9-000000000000', 'png'),
]) {
  try { await attempt(); codes.push('resolved'); }
  catch (error) { codes.push(`${error.name} ${error.code}: ${error.message}`); }
}
export default () => codes;
"""


def answering_as(ctx):
    async def answer(op, args):
        args = decode_value(args)
        if op not in ANSWERED:
            return {"ok": False, "error": {"code": "INVALID_ARGUMENT", "message": f"Unknown operation {op!r}."}}
        decision = decide(ctx.policy, ANSWERED[op], args)
        if not decision.allowed:
            return {"ok": False, "error": {"code": decision.code, "message": decision.message}}
        try:
            reply = await asyncio.to_thread(ANSWERED[op].handler, ctx, args)
        except CapabilityError as error:
            return {"ok": False, "error": error.as_error()}
        return {"ok": True, "envelope": reply}

    return answer


async def run_seed_block(ctx, code, input=None):
    async with StubBroker() as broker:
        async with IsolatePool(broker.port, warm_size=0) as pool:
            run, done, _ = await run_block(pool, broker, code, memory_mb=128, cpu_seconds=20, wall_seconds=30, answer=answering_as(ctx), input=input)
    assert done is not None, run.console_text
    return run, done


async def test_it_runs_the_seeds_canvas_example_unchanged(acme):
    ctx = await sync_to_async(context_for)(acme)
    run, done = await run_seed_block(ctx, SEED_CANVAS_EXAMPLE)
    assert done.get("error") is None, done
    console = run.console_text
    assert "Created canvas: c1-" in console
    size = int(console.split("Exported ")[1].split(" bytes")[0])
    assert size > 1000
    assert [call["op"] for call in run.calls] == ["canvas.createCanvas", "canvas.draw", "canvas.exportImage"]


async def test_it_runs_the_seeds_dashboard_example_unchanged(acme):
    ctx = await sync_to_async(context_for)(acme)
    data = [{"label": "North", "value": 120, "color": "#4e79a7"}, {"label": "South", "value": 80, "color": "#f28e2b"},
            {"label": "East", "value": 45, "color": "#e15759"}]
    run, done = await run_seed_block(ctx, SEED_DASHBOARD, input=data)
    result = done["result"]
    assert result["success"] is True and result["filename"].startswith("charts/dashboard_")
    saved = (acme.storage_root() / result["filename"]).read_bytes()
    assert len(saved) == result["size"]
    image = Image.open(io.BytesIO(saved)).convert("RGBA")
    assert image.size == (1200, 800)
    assert image.getpixel((5, 5)) == (245, 245, 245, 255)
    assert image.getpixel((150, 650)) == (0x4E, 0x79, 0xA7, 255)  # the North bar, full height


async def test_cant_get_past_the_checks_from_a_block(acme):
    ctx = await sync_to_async(context_for)(acme)
    run, done = await run_seed_block(ctx, MISTAKES)
    assert done["result"] == [
        "SymposiumError QUOTA_EXCEEDED: A 100000x100000 canvas is larger than this tenant's limit of 1920x1080.",
        "SymposiumError INVALID_ARGUMENT: ops[0]: unknown operation 'fillCircle'",
        # JSON has no NaN: it reaches the server as null, and is refused as such.
        "SymposiumError INVALID_ARGUMENT: ops[0].x: must be a finite number (got null)",
        "SymposiumError INVALID_ARGUMENT: ops[0].style: 'url(javascript:alert(1))' is not a colour "
        "(a CSS colour name, #rgb, #rrggbb, #rrggbbaa, rgb()/rgba() or hsl()/hsla())",
        "SymposiumError INVALID_ARGUMENT: ops[0].path: The path may not contain '..'; paths stay inside your storage.",
        "SymposiumError PERMISSION_DENIED: Export format 'jpeg' is not available to this tenant (available: png).",
        "SymposiumError NOT_FOUND: No canvas 'c9-000000000000' in this run.",
    ]
