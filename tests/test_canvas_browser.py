"""The canvas capability against a real browser's canvas.

Each case is an op list drawn twice: by the capability (through its handlers, as a
block would draw it) and by headless Chromium's CanvasRenderingContext2D, interpreting
the same ops with the same bundled fonts loaded as web fonts. The two PNGs are compared
with SSIM (structural similarity, Wang et al. 2004: 1.0 is identical, above ~0.95 a
person sees the same picture) and PSNR; each case must stay above its bound. The pairs
are saved under test-artifacts/canvas/ to look at.

Run with: .venv/bin/pytest tests/test_canvas_browser.py -q -s   (-s prints the figures)
"""

import base64
import io
import json
import math
import queue
import threading
from pathlib import Path

import numpy
import pytest
from PIL import Image

from capabilities.canvas import create_canvas, draw, export_image
from capabilities.canvas.fonts import FONT_FILES, FONTS_DIR, parse_font
from capabilities.canvas.render import FAMILY_NAMES
from tests.helpers import context_for
from tests.test_canvas import chart_operations, isolated_run_state  # noqa: F401 (an autouse fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db]


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "canvas"

# The reference: the same op vocabulary run on a real 2D context. Property fields on a
# drawing op apply to that op alone (save ... restore), as the capability documents.
REFERENCE_JS = """
async ({ops, width, height, fonts, images}) => {
  for (const f of fonts) {
    const face = new FontFace(f.family, `url(data:font/ttf;base64,${f.data})`, {weight: f.weight});
    await face.load();
    document.fonts.add(face);
  }
  const loaded = {};
  for (const [path, url] of Object.entries(images)) {
    const img = new Image();
    img.src = url;
    await img.decode();
    loaded[path] = img;
  }
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d');
  ctx.font = '10px CanvasSans';
  const PROPS = ['fillStyle', 'strokeStyle', 'lineWidth', 'lineCap', 'lineJoin', 'miterLimit',
                 'globalAlpha', 'font', 'textAlign', 'textBaseline'];
  const STYLE = {fillRect: 'fillStyle', fill: 'fillStyle', fillText: 'fillStyle', drawImage: null,
                 strokeRect: 'strokeStyle', stroke: 'strokeStyle', strokeText: 'strokeStyle'};
  const apply = (op) => { for (const p of PROPS) if (p in op) ctx[p] = op[p]; };
  for (const op of ops) {
    const t = op.type;
    if (PROPS.includes(t)) { ctx[t] = op.value; continue; }
    if (t === 'set') { apply(op); continue; }
    const scoped = t in STYLE && Object.keys(op).some(k => k === 'style' || PROPS.includes(k));
    if (scoped) { ctx.save(); if ('style' in op) ctx[STYLE[t]] = op.style; apply(op); }
    switch (t) {
      case 'fillRect': case 'strokeRect': case 'clearRect': case 'rect':
        ctx[t](op.x, op.y, op.width, op.height); break;
      case 'beginPath': case 'closePath': case 'save': case 'restore': case 'resetTransform': case 'stroke':
        ctx[t](); break;
      case 'fill': ctx.fill(op.fillRule || 'nonzero'); break;
      case 'moveTo': case 'lineTo': case 'translate': case 'scale': ctx[t](op.x, op.y); break;
      case 'arc': ctx.arc(op.x, op.y, op.radius, op.startAngle, op.endAngle, !!op.counterclockwise); break;
      case 'arcTo': ctx.arcTo(op.x1, op.y1, op.x2, op.y2, op.radius); break;
      case 'ellipse':
        ctx.ellipse(op.x, op.y, op.radiusX, op.radiusY, op.rotation || 0, op.startAngle, op.endAngle, !!op.counterclockwise);
        break;
      case 'quadraticCurveTo': ctx.quadraticCurveTo(op.cpx, op.cpy, op.x, op.y); break;
      case 'bezierCurveTo': ctx.bezierCurveTo(op.cp1x, op.cp1y, op.cp2x, op.cp2y, op.x, op.y); break;
      case 'fillText': case 'strokeText':
        if (op.maxWidth === undefined) ctx[t](op.text, op.x, op.y); else ctx[t](op.text, op.x, op.y, op.maxWidth);
        break;
      case 'rotate': ctx.rotate(op.angle); break;
      case 'setTransform': case 'transform': ctx[t](op.a, op.b, op.c, op.d, op.e, op.f); break;
      case 'drawImage': {
        const img = loaded[op.path];
        if ('sx' in op) ctx.drawImage(img, op.sx, op.sy, op.sw, op.sh, op.dx, op.dy, op.dw, op.dh);
        else if ('dw' in op) ctx.drawImage(img, op.dx, op.dy, op.dw, op.dh);
        else ctx.drawImage(img, op.dx, op.dy);
        break;
      }
      default: throw new Error('unknown op ' + t);
    }
    if (scoped) ctx.restore();
  }
  return canvas.toDataURL('image/png');
}
"""


# SSIM, as in Wang, Bovik, Sheikh & Simoncelli (2004): an 11x11 Gaussian window with
# sigma 1.5, K1 = 0.01, K2 = 0.03, on 8-bit channels; the mean over the image.
def _gaussian_blur(channel, size=11, sigma=1.5):
    offsets = numpy.arange(size) - size // 2
    kernel = numpy.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    windows = numpy.lib.stride_tricks.sliding_window_view(channel, size, axis=0)
    blurred = windows @ kernel
    windows = numpy.lib.stride_tricks.sliding_window_view(blurred, size, axis=1)
    return windows @ kernel


def ssim(a, b):
    """Mean SSIM of two RGB images (float arrays, 0-255), averaged over the channels."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for channel in range(3):
        x, y = a[..., channel], b[..., channel]
        mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
        var_x = _gaussian_blur(x * x) - mu_x**2
        var_y = _gaussian_blur(y * y) - mu_y**2
        cov = _gaussian_blur(x * y) - mu_x * mu_y
        index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        scores.append(index.mean())
    return float(numpy.mean(scores))


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def on_grey(png):
    """An RGBA PNG composited onto light grey, as float RGB: transparent pixels compare
    as a page would show them, and differ from white ones."""
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    background = Image.new("RGBA", image.size, (224, 224, 224, 255))
    return numpy.asarray(Image.alpha_composite(background, image).convert("RGB"), dtype=numpy.float64)


def browser_ops(ops):
    """The ops with every font rewritten to the bundled font's web-font name, the way the
    capability maps font families onto its fonts."""

    def css(value):
        spec = parse_font(value)
        return f"{'italic ' if spec.italic else ''}{'bold ' if spec.bold else ''}{spec.size}px {FAMILY_NAMES[spec.family]}"

    rewritten = []
    for op in ops:
        op = dict(op)
        if op["type"] == "font":
            op["value"] = css(op["value"])
        elif "font" in op:
            op["font"] = css(op["font"])
        rewritten.append(op)
    return rewritten


class ChromiumReference:
    """Headless Chromium in a thread of its own. Playwright's sync API keeps an event
    loop running in the thread that uses it, and Django refuses database access from a
    thread with a running loop; so the browser lives in another thread and the test
    hands it op lists through a queue."""

    def __init__(self):
        self.requests = queue.Queue()
        self.ready = queue.Queue()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        failure = self.ready.get(timeout=60)
        if failure:
            raise RuntimeError(failure)

    def serve(self):
        from playwright.sync_api import sync_playwright

        fonts = [
            {"family": FAMILY_NAMES[family], "weight": "700" if bold else "400",
             "data": base64.b64encode((FONTS_DIR / filename).read_bytes()).decode()}
            for (family, bold), filename in FONT_FILES.items()
        ]
        try:
            playwright = sync_playwright().start()
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )
            page = chromium.new_page()
        except Exception as e:
            self.ready.put(f"Chromium did not start: {e}")
            return
        self.ready.put(None)
        while (request := self.requests.get()) is not None:
            (ops, width, height, images), reply = request
            try:
                url = page.evaluate(REFERENCE_JS, {"ops": browser_ops(ops), "width": width, "height": height, "fonts": fonts, "images": images})
                reply.put(("ok", base64.b64decode(url.split(",", 1)[1])))
            except Exception as e:
                reply.put(("error", e))
        chromium.close()
        playwright.stop()

    def render(self, ops, width, height, images):
        reply = queue.Queue()
        self.requests.put(((ops, width, height, images), reply))
        status, value = reply.get(timeout=60)
        if status == "error":
            raise value
        return value

    def close(self):
        self.requests.put(None)
        self.thread.join(30)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed: the browser comparison needs a real Chromium")
    reference = ChromiumReference()
    yield reference.render
    reference.close()


@pytest.fixture
def sample_image(acme):
    """A 64x48 PNG in Acme's storage: a colour gradient with an alpha ramp and a frame."""
    y, x = numpy.mgrid[0:48, 0:64]
    rgba = numpy.stack([x * 4, y * 5, 255 - x * 4, 80 + x * 2], axis=-1).astype(numpy.uint8)
    rgba[0, :] = rgba[-1, :] = rgba[:, 0] = rgba[:, -1] = (20, 20, 20, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    (acme.storage_root() / "images").mkdir(exist_ok=True)
    (acme.storage_root() / "images" / "sample.png").write_bytes(buffer.getvalue())
    return {"images/sample.png": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}


def star(cx, cy, outer, inner, points=5):
    ops = [{"type": "beginPath"}]
    for i in range(points * 2):
        radius = outer if i % 2 == 0 else inner
        angle = -math.pi / 2 + i * math.pi / points
        ops.append({"type": "moveTo" if i == 0 else "lineTo", "x": cx + radius * math.cos(angle), "y": cy + radius * math.sin(angle)})
    ops.append({"type": "closePath"})
    return ops


def pentagram(cx, cy, radius):
    # A self-intersecting star: its centre is inside under nonzero, outside under evenodd.
    ops = [{"type": "beginPath"}]
    for i in range(5):
        angle = -math.pi / 2 + i * 4 * math.pi / 5
        ops.append({"type": "moveTo" if i == 0 else "lineTo", "x": cx + radius * math.cos(angle), "y": cy + radius * math.sin(angle)})
    ops.append({"type": "closePath"})
    return ops


CASES = {
    "seed_example": (
        (400, 300),
        [
            {"type": "fillRect", "x": 10, "y": 10, "width": 100, "height": 100, "style": "#ff0000"},
            {"type": "fillText", "text": "Hello World", "x": 20, "y": 30, "style": "#000000"},
            {"type": "beginPath"},
            {"type": "arc", "x": 200, "y": 200, "radius": 50, "startAngle": 0, "endAngle": math.pi * 2},
            {"type": "stroke", "style": "#00ff00"},
        ],
        0.99,
    ),
    "rects_with_alpha": (
        (320, 240),
        [
            {"type": "fillRect", "x": 20, "y": 20, "width": 160, "height": 120, "style": "rgba(255, 0, 0, 0.6)"},
            {"type": "fillRect", "x": 90, "y": 70, "width": 160, "height": 120, "style": "rgb(0 0 255 / 50%)"},
            {"type": "globalAlpha", "value": 0.5},
            {"type": "fillRect", "x": 150.5, "y": 30.25, "width": 120.3, "height": 60.6, "style": "hsl(120, 100%, 25%)"},
            {"type": "globalAlpha", "value": 1},
            {"type": "strokeRect", "x": 10.5, "y": 10.5, "width": 300, "height": 220, "style": "#333", "lineWidth": 1},
            {"type": "strokeRect", "x": 40, "y": 160, "width": 80, "height": 50, "style": "#0a0a", "lineWidth": 6},
            {"type": "clearRect", "x": 110, "y": 95, "width": 40, "height": 30},
            {"type": "fillRect", "x": 200, "y": 150, "width": -60, "height": -30, "style": "orange"},
        ],
        0.98,
    ),
    "arcs_and_circles": (
        (320, 240),
        [
            {"type": "beginPath"},
            {"type": "arc", "x": 70, "y": 70, "radius": 50, "startAngle": 0, "endAngle": 2 * math.pi},
            {"type": "fill", "style": "#2a7ae2"},
            {"type": "beginPath"},
            {"type": "arc", "x": 200, "y": 70, "radius": 45, "startAngle": 0.25 * math.pi, "endAngle": 1.5 * math.pi},
            {"type": "stroke", "style": "#c0392b", "lineWidth": 5},
            {"type": "beginPath"},
            {"type": "arc", "x": 270, "y": 170, "radius": 40, "startAngle": 0, "endAngle": math.pi / 2, "counterclockwise": True},
            {"type": "stroke", "style": "#8e44ad", "lineWidth": 3},
            {"type": "beginPath"},
            {"type": "moveTo", "x": 100, "y": 180},
            {"type": "arc", "x": 100, "y": 180, "radius": 55, "startAngle": -0.5, "endAngle": 1.2},
            {"type": "closePath"},
            {"type": "fill", "style": "rgba(39, 174, 96, 0.8)"},
            {"type": "beginPath"},
            {"type": "ellipse", "x": 190, "y": 180, "radiusX": 50, "radiusY": 20, "rotation": 0.4, "startAngle": 0, "endAngle": 2 * math.pi},
            {"type": "stroke", "style": "#e67e22", "lineWidth": 2},
        ],
        0.98,
    ),
    "curves": (
        (320, 240),
        [
            {"type": "beginPath"},
            {"type": "moveTo", "x": 20, "y": 200},
            {"type": "bezierCurveTo", "cp1x": 80, "cp1y": 20, "cp2x": 160, "cp2y": 260, "x": 300, "y": 40},
            {"type": "stroke", "style": "#1abc9c", "lineWidth": 3},
            {"type": "beginPath"},
            {"type": "moveTo", "x": 20, "y": 40},
            {"type": "quadraticCurveTo", "cpx": 160, "cpy": 240, "x": 300, "y": 120},
            {"type": "stroke", "style": "#34495e", "lineWidth": 1.5},
            {"type": "beginPath"},
            {"type": "moveTo", "x": 120, "y": 120},
            {"type": "quadraticCurveTo", "cpx": 160, "cpy": 60, "x": 200, "y": 120},
            {"type": "bezierCurveTo", "cp1x": 220, "cp1y": 180, "cp2x": 100, "cp2y": 200, "x": 120, "y": 120},
            {"type": "fill", "style": "rgba(231, 76, 60, 0.7)"},
            {"type": "beginPath"},
            {"type": "moveTo", "x": 30, "y": 110},
            {"type": "arcTo", "x1": 110, "y1": 110, "x2": 110, "y2": 190, "radius": 30},
            {"type": "lineTo", "x": 110, "y": 230},
            {"type": "stroke", "style": "#2c3e50", "lineWidth": 2},
        ],
        0.98,
    ),
    "thick_lines_caps_joins": (
        (360, 240),
        [
            *[
                op
                for i, (cap, join) in enumerate([("butt", "miter"), ("round", "round"), ("square", "bevel")])
                for op in [
                    {"type": "beginPath"},
                    {"type": "moveTo", "x": 30 + i * 110, "y": 200},
                    {"type": "lineTo", "x": 60 + i * 110, "y": 60},
                    {"type": "lineTo", "x": 90 + i * 110, "y": 200},
                    {"type": "stroke", "style": "#2d3436", "lineWidth": 16, "lineCap": cap, "lineJoin": join},
                ]
            ],
            {"type": "set", "lineWidth": 10, "miterLimit": 2, "strokeStyle": "rgba(9, 132, 227, 0.7)"},
            {"type": "beginPath"},
            {"type": "moveTo", "x": 20, "y": 30},
            {"type": "lineTo", "x": 180, "y": 40},
            {"type": "lineTo", "x": 20, "y": 50},
            {"type": "stroke"},
            {"type": "beginPath"},
            {"type": "moveTo", "x": 200, "y": 20},
            {"type": "lineTo", "x": 340, "y": 21},
            {"type": "stroke", "lineWidth": 0.5, "strokeStyle": "black"},
        ],
        0.98,
    ),
    "transforms": (
        (320, 240),
        [
            {"type": "save"},
            {"type": "translate", "x": 160, "y": 120},
            {"type": "rotate", "angle": math.pi / 6},
            {"type": "fillRect", "x": -60, "y": -30, "width": 120, "height": 60, "style": "#6c5ce7"},
            {"type": "scale", "x": 2, "y": 0.5},
            {"type": "beginPath"},
            {"type": "arc", "x": 0, "y": 0, "radius": 40, "startAngle": 0, "endAngle": 2 * math.pi},
            {"type": "stroke", "style": "#d63031", "lineWidth": 4},
            {"type": "restore"},
            {"type": "setTransform", "a": 1, "b": 0.2, "c": -0.3, "d": 1, "e": 30, "f": 20},
            {"type": "strokeRect", "x": 0, "y": 0, "width": 80, "height": 50, "style": "#00b894", "lineWidth": 3},
            {"type": "resetTransform"},
            {"type": "transform", "a": 0.8, "b": 0, "c": 0, "d": 0.8, "e": 230, "f": 170},
            {"type": "fillText", "text": "scaled", "x": 0, "y": 0, "font": "20px sans-serif", "style": "#2d3436"},
            {"type": "resetTransform"},
            # The path is built under one transform and stroked under another: each point
            # keeps the transform it was added with; the line width follows the last one.
            {"type": "beginPath"},
            {"type": "moveTo", "x": 20, "y": 200},
            {"type": "scale", "x": 3, "y": 1},
            {"type": "lineTo", "x": 40, "y": 230},
            {"type": "stroke", "style": "#e17055", "lineWidth": 2},
        ],
        0.97,
    ),
    "text": (
        (420, 300),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 420, "height": 300, "style": "#ffffff"},
            {"type": "fillText", "text": "Hello, Symposium! AVATAR To fi", "x": 10, "y": 30, "font": "20px sans-serif", "style": "#111"},
            {"type": "fillText", "text": "Bold heading 16px", "x": 10, "y": 60, "font": "bold 16px Arial, sans-serif", "style": "#222"},
            {"type": "fillText", "text": "Italic serif text", "x": 10, "y": 90, "font": "italic 18px Georgia, serif", "style": "#333"},
            {"type": "fillText", "text": "monospace 0123456789", "x": 10, "y": 120, "font": "14px 'Courier New', monospace", "style": "#444"},
            {"type": "strokeText", "text": "Outlined", "x": 10, "y": 170, "font": "bold 40px sans-serif", "style": "#c0392b", "lineWidth": 1.5},
            {"type": "set", "font": "16px sans-serif", "fillStyle": "#2c3e50"},
            {"type": "fillText", "text": "right", "x": 410, "y": 200, "textAlign": "right"},
            {"type": "fillText", "text": "center", "x": 210, "y": 200, "textAlign": "center"},
            {"type": "fillText", "text": "top", "x": 10, "y": 230, "textBaseline": "top"},
            {"type": "fillText", "text": "middle", "x": 60, "y": 230, "textBaseline": "middle"},
            {"type": "fillText", "text": "bottom", "x": 130, "y": 230, "textBaseline": "bottom"},
            {"type": "fillText", "text": "hanging", "x": 200, "y": 230, "textBaseline": "hanging"},
            {"type": "fillText", "text": "ideographic", "x": 280, "y": 230, "textBaseline": "ideographic"},
            {"type": "fillText", "text": "squeezed into 120 pixels wide", "x": 10, "y": 280, "maxWidth": 120},
            {"type": "fillText", "text": "10px default", "x": 250, "y": 280, "font": "10px sans-serif"},
        ],
        0.95,
    ),
    "evenodd_fill": (
        (320, 200),
        [
            *pentagram(80, 100, 70),
            {"type": "fill", "style": "#0984e3"},
            *pentagram(240, 100, 70),
            {"type": "fill", "style": "#0984e3", "fillRule": "evenodd"},
            {"type": "beginPath"},
            {"type": "rect", "x": 140, "y": 150, "width": 40, "height": 40},
            {"type": "rect", "x": 150, "y": 160, "width": 20, "height": 20},
            {"type": "fill", "fillRule": "evenodd", "style": "#d63031"},
            *star(160, 60, 30, 12),
            {"type": "stroke", "style": "#2d3436", "lineJoin": "round", "lineWidth": 2},
        ],
        0.98,
    ),
    "draw_image": (
        (320, 200),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 320, "height": 200, "style": "#fafafa"},
            {"type": "drawImage", "path": "images/sample.png", "dx": 10, "dy": 10},
            {"type": "drawImage", "path": "images/sample.png", "dx": 90, "dy": 10, "dw": 128, "dh": 96},
            {"type": "drawImage", "path": "images/sample.png", "sx": 16, "sy": 12, "sw": 32, "sh": 24, "dx": 230, "dy": 10, "dw": 80, "dh": 60},
            {"type": "drawImage", "path": "images/sample.png", "dx": 20, "dy": 120, "globalAlpha": 0.5},
        ],
        0.97,
    ),
    # Corners of the spec, where a naive interpreter differs from a browser.
    "spec_corners": (
        (360, 240),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 360, "height": 240, "style": "#ffffff"},
            # A transform that cannot be inverted: nothing is drawn or added to the path.
            {"type": "scale", "x": 0, "y": 1},
            {"type": "fillRect", "x": 0, "y": 0, "width": 360, "height": 240, "style": "red"},
            {"type": "resetTransform"},
            # lineTo with no subpath starts one; after closePath a line starts where the
            # closed subpath began; an arc joins the current point with a line.
            {"type": "beginPath"},
            {"type": "lineTo", "x": 20, "y": 20},
            {"type": "lineTo", "x": 80, "y": 20},
            {"type": "lineTo", "x": 80, "y": 60},
            {"type": "closePath"},
            {"type": "lineTo", "x": 20, "y": 100},
            {"type": "arc", "x": 60, "y": 100, "radius": 20, "startAngle": -7, "endAngle": 8, "counterclockwise": True},
            {"type": "stroke", "style": "#2d3436", "lineWidth": 2},
            # One side of zero length: strokeRect draws a line.
            {"type": "strokeRect", "x": 110, "y": 20, "width": 0, "height": 80, "style": "#0984e3", "lineWidth": 4, "lineCap": "round"},
            {"type": "beginPath"},
            {"type": "ellipse", "x": 180, "y": 60, "radiusX": 40, "radiusY": 20, "rotation": -0.6, "startAngle": 0.5, "endAngle": 4, "counterclockwise": True},
            {"type": "stroke", "style": "#6c5ce7", "lineWidth": 3, "globalAlpha": 0.6},
            # arcTo under a non-uniform scale is an elliptical corner.
            {"type": "save"},
            {"type": "scale", "x": 2, "y": 1},
            {"type": "beginPath"},
            {"type": "moveTo", "x": 120, "y": 20},
            {"type": "arcTo", "x1": 170, "y1": 20, "x2": 170, "y2": 100, "radius": 25},
            {"type": "lineTo", "x": 170, "y": 100},
            {"type": "restore"},
            {"type": "stroke", "style": "#00b894", "lineWidth": 3},
            # Whitespace in text becomes spaces; text that fits maxWidth is not squeezed.
            {"type": "fillText", "text": "tab\tand\nnewline", "x": 10, "y": 150, "font": "16px sans-serif", "maxWidth": 300},
            # A source rectangle reaching outside the image draws only what exists.
            {"type": "drawImage", "path": "images/sample.png", "sx": 32, "sy": 24, "sw": 64, "sh": 48, "dx": 200, "dy": 120, "dw": 128, "dh": 96},
            # clearRect under a rotation clears a turned square, whatever globalAlpha is.
            {"type": "translate", "x": 80, "y": 200},
            {"type": "rotate", "angle": 0.5},
            {"type": "globalAlpha", "value": 0.3},
            {"type": "clearRect", "x": -20, "y": -20, "width": 40, "height": 40},
        ],
        0.97,
    ),
    "dashboard_chart": (
        (600, 400),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 600, "height": 400, "style": "#f5f5f5"},
            *chart_operations([12, 19, 3, 5, 2, 3, 14], 600, 400),
        ],
        0.97,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_it_draws_what_chromium_draws(case, browser, make_tenant, acme, sample_image, capsys):
    (width, height), ops, bound = CASES[case]
    ctx = context_for(acme, run_id=f"browser-{case}")
    canvas = create_canvas(ctx, {"width": width, "height": height})
    draw(ctx, {"canvasId": canvas["canvasId"], "ops": ops})
    ours = export_image(ctx, {"canvasId": canvas["canvasId"], "format": "png"})["data"]
    theirs = browser(ops, width, height, sample_image)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{case}.ours.png").write_bytes(ours)
    (ARTIFACTS / f"{case}.chromium.png").write_bytes(theirs)
    a, b = on_grey(ours), on_grey(theirs)
    side_by_side = numpy.concatenate([a, numpy.full((a.shape[0], 8, 3), 128.0), b], axis=1).astype(numpy.uint8)
    Image.fromarray(side_by_side).save(ARTIFACTS / f"{case}.side-by-side.png")

    score, peak = ssim(a, b), psnr(a, b)
    with capsys.disabled():
        print(f"\n  canvas vs chromium  {case:24s} SSIM {score:.4f}  PSNR {peak:5.1f} dB  (bound {bound})")
    (ARTIFACTS / f"{case}.json").write_text(json.dumps({"ssim": score, "psnr": peak, "bound": bound}))
    assert a.shape == b.shape
    assert score >= bound, f"{case}: SSIM {score:.4f} below {bound}; see {ARTIFACTS}/{case}.side-by-side.png"
