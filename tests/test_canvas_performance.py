"""What a large canvas costs: 10,000 ops on 1920x1080, drawn and exported to PNG.

The floor to compare with is plain Pillow ImageDraw drawing the same shapes (without
anti-aliasing on curves and lines, which is why the capability does not use it) and
saving the same PNG. Figures are printed with -s; the assertions are loose bounds that
catch a regression by an order of magnitude, not a benchmark.
"""

import io
import math
import random
import time

import pytest
from PIL import Image, ImageDraw, ImageFont

from capabilities.canvas import create_canvas, draw, export_image
from capabilities.canvas.fonts import FONTS_DIR
from tests.helpers import context_for
from tests.test_canvas import isolated_run_state  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.django_db

WIDTH, HEIGHT = 1920, 1080


def shapes(seed=42):
    """2,500 rectangles, 1,250 circles, 750 lines and 750 labels, at random: 10,000 ops."""
    rng = random.Random(seed)

    def colour():
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.choice([255, 200, 128]))

    items = []
    for _ in range(2500):
        items.append(("rect", rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(2, 80), rng.uniform(2, 80), colour()))
    for _ in range(1250):
        items.append(("circle", rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(2, 40), colour()))
    for _ in range(750):
        items.append(("line", rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(1, 4), colour()))
    for index in range(750):
        items.append(("text", f"label {index}", rng.uniform(0, WIDTH), rng.uniform(12, HEIGHT), colour()))
    rng.shuffle(items)
    return items


def css(rgba):
    r, g, b, a = rgba
    return f"rgba({r}, {g}, {b}, {a / 255:.3f})"


def as_ops(items):
    ops = []
    for item in items:
        kind = item[0]
        if kind == "rect":
            _, x, y, w, h, c = item
            ops.append({"type": "fillRect", "x": x, "y": y, "width": w, "height": h, "style": css(c)})
        elif kind == "circle":
            _, x, y, r, c = item
            ops += [{"type": "beginPath"}, {"type": "arc", "x": x, "y": y, "radius": r, "startAngle": 0, "endAngle": 2 * math.pi},
                    {"type": "fill", "style": css(c)}]
        elif kind == "line":
            _, x1, y1, x2, y2, width, c = item
            ops += [{"type": "beginPath"}, {"type": "moveTo", "x": x1, "y": y1}, {"type": "lineTo", "x": x2, "y": y2},
                    {"type": "stroke", "style": css(c), "lineWidth": width}]
        else:
            _, text, x, y, c = item
            ops.append({"type": "fillText", "text": text, "x": x, "y": y, "style": css(c), "font": "12px sans-serif"})
    return ops


def pillow_floor(items):
    image = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 0))
    canvas = ImageDraw.Draw(image, "RGBA")
    font = ImageFont.truetype(str(FONTS_DIR / "LiberationSans-Regular.ttf"), 12)  # the canvas's 12px sans-serif
    for item in items:
        kind = item[0]
        if kind == "rect":
            _, x, y, w, h, c = item
            canvas.rectangle([x, y, x + w, y + h], fill=c)
        elif kind == "circle":
            _, x, y, r, c = item
            canvas.ellipse([x - r, y - r, x + r, y + r], fill=c)
        elif kind == "line":
            _, x1, y1, x2, y2, width, c = item
            canvas.line([x1, y1, x2, y2], fill=c, width=round(width))
        else:
            _, text, x, y, c = item
            canvas.text((x, y), text, fill=c, font=font, anchor="ls")
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def test_it_exports_10000_ops_on_a_full_hd_canvas_in_reasonable_time(acme, capsys):
    ctx = context_for(acme, run_id="performance")
    items = shapes()
    ops = as_ops(items)
    assert len(ops) == 10_000

    canvas_id = create_canvas(ctx, {"width": WIDTH, "height": HEIGHT})["canvasId"]
    started = time.perf_counter()
    draw(ctx, {"canvasId": canvas_id, "ops": ops})
    drawn = time.perf_counter() - started
    started = time.perf_counter()
    reply = export_image(ctx, {"canvasId": canvas_id, "format": "png"})
    exported = time.perf_counter() - started

    started = time.perf_counter()
    floor = pillow_floor(items)
    pillow = time.perf_counter() - started

    with capsys.disabled():
        print(
            f"\n  10,000 ops on 1920x1080: draw (validate + store) {drawn * 1000:.0f} ms, "
            f"export to PNG (render + encode) {exported * 1000:.0f} ms, {reply['size'] / 1024:.0f} KiB; "
            f"Pillow ImageDraw floor {pillow * 1000:.0f} ms, {len(floor) / 1024:.0f} KiB"
        )
    assert Image.open(io.BytesIO(reply["data"])).size == (WIDTH, HEIGHT)
    assert drawn < 5 and exported < 10
