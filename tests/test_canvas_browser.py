"""The canvas capability against a real browser's canvas.

Each case is an op list drawn twice: by the capability (through its handlers, as a
block would draw it) and by headless Chromium's CanvasRenderingContext2D, interpreting
the same ops, fonts included: Chromium finds `sans-serif`, `Arial` or `Courier New` among
the system's fonts as a browser on Linux does, so the comparison shows whether the
canvas picks the fonts a browser picks. The system needs the Liberation fonts the canvas
bundles (Debian's fonts-liberation2, which scripts/setup installs with Chromium);
Chromium is given a fontconfig file that draws `monospace` with Liberation Mono, as
browsers do on Windows, macOS and ChromeOS (Courier New's metrics), where Debian's
default would be DejaVu Sans Mono.

The two PNGs are compared with SSIM (structural similarity, Wang et al. 2004: 1.0 is
identical, above ~0.95 a person sees the same picture) over the inked area: the pixels
that are not background in either picture, so that a few words on a large empty canvas
count as much as a full drawing (over the whole picture, text in the wrong font still
scores 0.9). Every case must reach 0.97. PSNR and whole-picture SSIM are printed too.
The pairs are saved under test-artifacts/canvas/ to look at. measureText is compared
with Chromium's TextMetrics for the same fonts.

Run with: .venv/bin/pytest tests/test_canvas_browser.py -q -s   (-s prints the figures)
"""

import base64
import io
import json
import math
import os
import queue
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy
import pytest
from PIL import Image

from capabilities.canvas import create_canvas, draw, export_image
from capabilities.canvas.fonts import FACES, FONTS_DIR
from tests.helpers import context_for
from tests.test_canvas import chart_operations, isolated_run_state  # noqa: F401 (an autouse fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db]


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "canvas"

# The reference: the same op vocabulary run on a real 2D context. Property fields on a
# drawing op apply to that op alone (save ... restore), as the capability documents.
REFERENCE_JS = """
async ({ops, width, height, images}) => {
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


def ssim_map(a, b):
    """The SSIM index of two RGB images (float arrays, 0-255) at every pixel whose 11x11
    window lies inside the image, averaged over the channels: 10 pixels narrower and
    lower than the images."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    maps = []
    for channel in range(3):
        x, y = a[..., channel], b[..., channel]
        mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
        var_x = _gaussian_blur(x * x) - mu_x**2
        var_y = _gaussian_blur(y * y) - mu_y**2
        cov = _gaussian_blur(x * y) - mu_x * mu_y
        maps.append(((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
    return numpy.mean(maps, axis=0)


def ssim(a, b):
    """Mean SSIM of two RGB images over the whole picture."""
    return float(ssim_map(a, b).mean())


def inked_ssim(a, b):
    """Mean SSIM over the inked area: the pixels where either picture differs from the
    background (the reference's most common colour), anti-aliased fringes included."""
    colours, counts = numpy.unique(b.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    inked = (a != background).any(axis=-1) | (b != background).any(axis=-1)
    inked = inked[5:-5, 5:-5]  # where the SSIM map has values (see ssim_map)
    if not inked.any():
        return 1.0
    return float(ssim_map(a, b)[inked].mean())


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def on_grey(png):
    """An RGBA PNG composited onto light grey, as float RGB: transparent pixels compare
    as a page would show them, and differ from white ones."""
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    background = Image.new("RGBA", image.size, (224, 224, 224, 255))
    return numpy.asarray(Image.alpha_composite(background, image).convert("RGB"), dtype=numpy.float64)


# Chromium draws `monospace` with the font fontconfig prefers for it; this makes that
# Liberation Mono (see the module's docstring). Everything else is the system's setup.
FONTCONFIG = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig>
  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>
  <alias binding="strong"><family>monospace</family><prefer><family>Liberation Mono</family></prefer></alias>
</fontconfig>
"""


def system_font_file(fontconfig_file, pattern):
    environment = {**os.environ, "FONTCONFIG_FILE": fontconfig_file}
    found = subprocess.run(["fc-match", "-f", "%{file}", pattern], capture_output=True, text=True, env=environment)
    return Path(found.stdout.strip()) if found.returncode == 0 and found.stdout.strip() else None


def check_system_fonts(fontconfig_file):
    """Fails unless Chromium will find the very font files the canvas bundles for the
    families the comparison uses (another version of Liberation would differ by a few
    pixels, and DejaVu standing in for it by whole words)."""
    patterns = {
        "liberation-sans": "Liberation Sans", "liberation-serif": "Liberation Serif", "liberation-mono": "monospace",
    }
    styles = {(False, False): "regular", (True, False): "bold", (False, True): "italic", (True, True): "bold:italic"}
    for family, pattern in patterns.items():
        for style, filename in FACES[family].items():
            found = system_font_file(fontconfig_file, f"{pattern}:{styles[style]}")
            if found is None or found.read_bytes() != (FONTS_DIR / filename).read_bytes():
                pytest.fail(
                    f"Chromium would draw {pattern} ({styles[style]}) with {found}, not the bundled {filename}: "
                    "install Debian's fonts-liberation2 (SYMPOSIUM_BROWSER_TESTS=1 scripts/setup does)"
                )


class ChromiumReference:
    """Headless Chromium in a thread of its own. Playwright's sync API keeps an event
    loop running in the thread that uses it, and Django refuses database access from a
    thread with a running loop; so the browser lives in another thread and the test
    hands it op lists through a queue."""

    def __init__(self, fontconfig_file):
        self.fontconfig_file = fontconfig_file
        self.requests = queue.Queue()
        self.ready = queue.Queue()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        failure = self.ready.get(timeout=60)
        if failure:
            raise RuntimeError(failure)

    def serve(self):
        from playwright.sync_api import sync_playwright

        try:
            playwright = sync_playwright().start()
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
                env={**os.environ, "FONTCONFIG_FILE": self.fontconfig_file},
            )
            page = chromium.new_page()
        except Exception as e:
            self.ready.put(f"Chromium did not start: {e}")
            return
        self.ready.put(None)
        while (request := self.requests.get()) is not None:
            (script, argument), reply = request
            try:
                reply.put(("ok", page.evaluate(script, argument)))
            except Exception as e:
                reply.put(("error", e))
        chromium.close()
        playwright.stop()

    def evaluate(self, script, argument):
        reply = queue.Queue()
        self.requests.put(((script, argument), reply))
        status, value = reply.get(timeout=60)
        if status == "error":
            raise value
        return value

    def render(self, ops, width, height, images):
        url = self.evaluate(REFERENCE_JS, {"ops": ops, "width": width, "height": height, "images": images})
        return base64.b64decode(url.split(",", 1)[1])

    def close(self):
        self.requests.put(None)
        self.thread.join(30)


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed: the browser comparison needs a real Chromium")
    with tempfile.TemporaryDirectory() as folder:
        fontconfig_file = str(Path(folder) / "fonts.conf")
        Path(fontconfig_file).write_text(FONTCONFIG)
        check_system_fonts(fontconfig_file)
        reference = ChromiumReference(fontconfig_file)
        yield reference
        reference.close()


@pytest.fixture(scope="module")
def browser(chromium):
    return chromium.render


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
    # Text at many sizes: hinting and anti-aliasing of small glyphs, outlines of big ones.
    "text_sizes": (
        (640, 360),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 640, "height": 360, "style": "#ffffff"},
            {"type": "set", "fillStyle": "#1b1b1b"},
            *[
                {"type": "fillText", "text": f"{size}px Quick brown fox, 0123", "x": 8, "y": y, "font": f"{size}px sans-serif"}
                for size, y in [(8, 14), (10, 30), (12, 48), (14, 68), (16, 90), (20, 116), (24, 146), (32, 184), (48, 236), (72, 316)]
            ],
            {"type": "fillText", "text": "9", "x": 600, "y": 40, "font": "9px serif"},
            {"type": "fillText", "text": "Ag", "x": 560, "y": 340, "font": "110px serif"},
        ],
        0.97,
    ),
    # Weights: normal and bold faces, numeric weights on either side of 500, relative
    # weights, in each family and through the names of their metric twins.
    "text_weights": (
        (620, 340),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 620, "height": 340, "style": "#fbfbf6"},
            {"type": "set", "fillStyle": "#202040"},
            *[
                {"type": "fillText", "text": f"{font}: Bold Type", "x": 8, "y": 22 + 26 * i, "font": font}
                for i, font in enumerate([
                    "normal 18px sans-serif", "bold 18px sans-serif", "500 18px sans-serif", "550 18px sans-serif",
                    "bolder 18px serif", "lighter 18px serif", "bold 18px serif", "700 18px monospace",
                    "normal 18px monospace", "900 18px Arial", "bold 18px 'Times New Roman'",
                    "bold 18px \"Courier New\"", "300 18px Helvetica",
                ])
            ],
        ],
        0.97,
    ),
    # Families: the generics, named families and their metric twins, a list whose first
    # names are missing, an unknown family alone (the browser's default font), quotes.
    "text_families": (
        (620, 420),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 620, "height": 420, "style": "#ffffff"},
            {"type": "set", "fillStyle": "#111111"},
            *[
                {"type": "fillText", "text": f"{font}  Hamburgefonstiv", "x": 8, "y": 24 + 25 * i, "font": font}
                for i, font in enumerate([
                    "16px sans-serif", "16px serif", "16px monospace", '16px "Liberation Sans"',
                    "16px Liberation Serif", "16px 'Liberation Mono'", "16px Arial", "16px Helvetica",
                    "16px Times New Roman", "16px Courier", "16px Tinos", "16px NoSuchFont, Arimo, serif",
                    "16px NoSuchFont", '16px "sans-serif"', "16px cursive, monospace", "16px system-ui",
                ])
            ],
        ],
        0.97,
    ),
    # Italic and oblique (real italic faces), bold italic, small capitals.
    "text_italic": (
        (600, 300),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 600, "height": 300, "style": "#ffffff"},
            {"type": "set", "fillStyle": "#2d2d2d"},
            *[
                {"type": "fillText", "text": f"{font} — Affine Quality", "x": 8, "y": 26 + 28 * i, "font": font}
                for i, font in enumerate([
                    "italic 20px sans-serif", "oblique 20px serif", "italic bold 20px serif",
                    "bold italic 20px monospace", "italic 20px Liberation Sans", "oblique 10deg 20px Arial",
                    "small-caps 20px serif", "italic small-caps bold 20px sans-serif", "italic 600 20px Times",
                ])
            ],
        ],
        0.97,
    ),
    # The shorthand as a browser reads it: units, keywords, line heights, and invalid
    # shorthands that leave the previous font in place.
    "text_shorthand": (
        (600, 400),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 600, "height": 400, "style": "#ffffff"},
            {"type": "set", "fillStyle": "#003355"},
            *[
                {"type": "fillText", "text": f"{font}: Shorthand", "x": 8, "y": 22 + 27 * i, "font": font}
                for i, font in enumerate([
                    "12pt serif", "1.6em sans-serif", "180% monospace", "large sans-serif", "x-large serif",
                    "larger monospace", "16px/2 serif", "16px / 1.5em sans-serif", "normal normal 400 normal 16px serif",
                    "condensed 16px sans-serif", "16PX SERIF", "  bold   16px   Liberation   Sans  ",
                ])
            ],
            {"type": "font", "value": "bold 20px serif"},
            {"type": "font", "value": "20px"},  # no family: ignored
            {"type": "fillText", "text": "still bold 20px serif", "x": 8, "y": 360},
            {"type": "font", "value": "bold bold 30px monospace"},  # bold twice: ignored
            {"type": "fillText", "text": "and still", "x": 260, "y": 360},
            {"type": "fillText", "text": "ignored per op too", "x": 380, "y": 360, "font": "16px serif!"},
            {"type": "fillText", "text": "inherit stays", "x": 8, "y": 390, "font": "inherit"},
        ],
        0.97,
    ),
    # Outlines, alignment and baselines in each family.
    "text_stroke_align": (
        (600, 320),
        [
            {"type": "fillRect", "x": 0, "y": 0, "width": 600, "height": 320, "style": "#ffffff"},
            {"type": "strokeText", "text": "Outline", "x": 10, "y": 70, "font": "bold 56px serif", "style": "#8e44ad", "lineWidth": 2},
            {"type": "strokeText", "text": "Mono", "x": 300, "y": 70, "font": "48px monospace", "style": "#16a085", "lineWidth": 1},
            {"type": "set", "font": "18px sans-serif", "fillStyle": "#222"},
            *[
                {"type": "fillText", "text": align, "x": 300, "y": 110 + 24 * i, "textAlign": align}
                for i, align in enumerate(["left", "center", "right", "start", "end"])
            ],
            *[
                {"type": "fillText", "text": baseline[:5], "x": 10 + 96 * i, "y": 290, "textBaseline": baseline, "font": "20px serif"}
                for i, baseline in enumerate(["top", "hanging", "middle", "alphabetic", "ideographic", "bottom"])
            ],
            {"type": "fillText", "text": "squeezed monospace text", "x": 400, "y": 240, "font": "16px monospace", "maxWidth": 150},
        ],
        0.97,
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


INKED_SSIM_BOUND = 0.97


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

    assert a.shape == b.shape
    inked, score, peak = inked_ssim(a, b), ssim(a, b), psnr(a, b)
    with capsys.disabled():
        print(f"\n  canvas vs chromium  {case:24s} inked SSIM {inked:.4f}  SSIM {score:.4f}  PSNR {peak:5.1f} dB")
    (ARTIFACTS / f"{case}.json").write_text(json.dumps({"inked_ssim": inked, "ssim": score, "psnr": peak, "bound": bound}))
    assert inked >= INKED_SSIM_BOUND, f"{case}: inked-area SSIM {inked:.4f} below {INKED_SSIM_BOUND}; see {ARTIFACTS}/{case}.side-by-side.png"
    assert score >= bound, f"{case}: SSIM {score:.4f} below {bound}; see {ARTIFACTS}/{case}.side-by-side.png"


# Shorthands a block might write, valid and not: each is set on a context whose font was
# '10px sans-serif', and a text is measured in what the context then holds.
SHORTHANDS = [
    "10px sans-serif", "16px serif", "16px monospace", "bold 16px sans-serif", "italic 16px serif",
    "oblique 10deg 16px serif", "550 16px serif", "550.5 16px serif", "1000 16px serif", "bolder 16px serif",
    "lighter 16px serif", "small-caps 16px serif", "condensed 16px serif", "normal normal normal normal 16px serif",
    "italic bold 16px serif", "bold italic small-caps 16px Liberation Sans", "0 serif", "16PX SERIF", "2em serif",
    "150% serif", "larger serif", "smaller serif", "medium serif", "xxx-large serif", "x-small serif", "12pt serif",
    "1in serif", "10mm serif", "2rem serif", "16px/2 serif", "16px / 2 serif", "16px/normal serif",
    "16px/120% serif", "16px/1.5em serif", '16px "Liberation Sans"', "16px 'Liberation Sans'",
    "16px   Liberation    Sans  ", '16px "sans-serif"', "16px sans-serif, serif", "16px xyzzy, monospace",
    "16px Arial, sans-serif", "16px Helvetica", "16px Times New Roman", "16px Courier New", "16px Cousine",
    "16px system-ui", "16px DejaVu Sans", '16px "DejaVu Sans Mono"', "16px cursive, monospace", "16px xyzzy",
    "16px -moz-fixed", '16px "a\\"b", serif', "16px a\\ b, serif", "16px 'Liberation Sans", "caption",
    "180% monospace", "larger monospace", "medium monospace", "2em monospace", "180% Courier, monospace",
    "20px/1 bold serif", "14px 'Courier New', monospace", "italic 600 12pt Georgia, serif",
    # Ignored: the font stays 10px sans-serif.
    "bold bold 16px serif", "italic italic 16px serif", "normal normal normal normal normal 16px serif",
    "0 16px serif", "1001 16px serif", "50% 16px serif", "16px/ serif", "16px/-1 serif", "-16px serif", "16px",
    "serif", "16px xyzzy, ", "16px ,serif", "16px 3D, serif", "16px inherit", "16px default",
    "16px initial, serif", "inherit", "16px serif bold", "16px serif!", "16px serif;", "",
]
MEASURED_TEXT = "Hello, AVATAR! To fi office 0123"
MEASURE_JS = """
({shorthands, text, aligns, baselines}) => {
  const ctx = document.createElement('canvas').getContext('2d');
  const fields = ['width', 'actualBoundingBoxLeft', 'actualBoundingBoxRight', 'actualBoundingBoxAscent',
                  'actualBoundingBoxDescent', 'fontBoundingBoxAscent', 'fontBoundingBoxDescent', 'emHeightAscent',
                  'emHeightDescent', 'hangingBaseline', 'alphabeticBaseline', 'ideographicBaseline'];
  const results = [];
  for (const font of shorthands) for (const textAlign of aligns) for (const textBaseline of baselines) {
    ctx.font = '10px sans-serif';
    ctx.font = font;
    ctx.textAlign = textAlign;
    ctx.textBaseline = textBaseline;
    const metrics = ctx.measureText(text);
    results.push(Object.fromEntries(fields.map(f => [f, metrics[f]])));
  }
  return results;
}
"""


def measured(ctx, shorthands, aligns, baselines):
    canvas_id = create_canvas(ctx, {"width": 10, "height": 10})["canvasId"]
    ops = []
    for font in shorthands:
        for align in aligns:
            for baseline in baselines:
                ops += [
                    {"type": "font", "value": "10px sans-serif"}, {"type": "font", "value": font},
                    {"type": "measureText", "text": MEASURED_TEXT, "textAlign": align, "textBaseline": baseline},
                ]
    return draw(ctx, {"canvasId": canvas_id, "ops": ops})["data"]["metrics"]


def test_it_reads_font_shorthands_as_chromium_does(chromium, acme):
    # The width of a text tells the family, face, weight and size the shorthand chose, or
    # that the shorthand was ignored (the width of 10px sans-serif).
    ours = measured(context_for(acme, run_id="browser-fonts"), SHORTHANDS, ["start"], ["alphabetic"])
    theirs = chromium.evaluate(MEASURE_JS, {"shorthands": SHORTHANDS, "text": MEASURED_TEXT, "aligns": ["start"], "baselines": ["alphabetic"]})
    # Chromium computes relative sizes in 32-bit floats (180% of 10px times 13/16 is a
    # hair under 14.625px there, and its advances are those of 14.609px): 0.2% allows
    # that, and is far less than any other face, weight or size would change.
    wrong = [(font, round(mine["width"], 3), round(browser["width"], 3))
             for font, mine, browser in zip(SHORTHANDS, ours, theirs)
             if abs(mine["width"] - browser["width"]) > max(0.01, browser["width"] * 0.002)]
    assert not wrong, f"font shorthand -> width here and in Chromium: {wrong}"


def test_it_measures_text_as_chromium_does(chromium, acme):
    fonts = ["10px sans-serif", "bold 16px serif", "italic 20px monospace", "13px Liberation Sans", "small-caps 18px serif",
             "30px DejaVu Sans", "bold italic 24px Arial"]
    aligns = ["start", "center", "right"]
    baselines = ["alphabetic", "top", "middle", "bottom", "hanging", "ideographic"]
    ours = measured(context_for(acme, run_id="browser-metrics"), fonts, aligns, baselines)
    theirs = chromium.evaluate(MEASURE_JS, {"shorthands": fonts, "text": MEASURED_TEXT, "aligns": aligns, "baselines": baselines})
    cases = [(font, align, baseline) for font in fonts for align in aligns for baseline in baselines]
    wrong = []
    for case, mine, browser in zip(cases, ours, theirs):
        for field, value in browser.items():
            if value is None:
                continue  # a field this Chromium does not give (emHeightAscent, emHeightDescent)
            # Advances and font metrics are exact. Ink bounds are whole pixels around
            # the glyph masks, which Chromium takes at the glyphs' drawn subpixel
            # position: at a fractional baseline (hanging) they may move by a pixel.
            tolerance = 0.01 if not field.startswith("actual") else 1.0 + 1e-6
            if abs(mine[field] - value) > tolerance:
                wrong.append((case, field, round(mine[field], 3), round(value, 3)))
    assert not wrong, f"{len(wrong)} TextMetrics differ from Chromium's, such as {wrong[:40]}"
