"""The canvas capability, called as the broker calls it: handler(context_for(tenant), args).

Pictures are checked by decoding the exported bytes with Pillow and looking at pixels
where the ops put them. The comparison with a real browser is in test_canvas_browser.py.
"""

import io
import math
import multiprocessing
import os
import threading
import time
import uuid

import pytest
from PIL import Image

from capabilities.base import CapabilityError, run_state
from capabilities.canvas import create_canvas, draw, export_image, limits, store
from capabilities.canvas.colors import ColorError, parse_color
from capabilities.canvas.fonts import FontError, FontSpec, parse_font
from tenants.models import PolicyOverride
from tests.helpers import context_for

pytestmark = pytest.mark.django_db

# The Makefile's Redis database for tests, used when REDIS_URL is not set.
TEST_REDIS_URL = "redis://127.0.0.1:6379/1"

SEED_OPS = [
    {"type": "fillRect", "x": 10, "y": 10, "width": 100, "height": 100, "style": "#ff0000"},
    {"type": "fillText", "text": "Hello World", "x": 20, "y": 30, "style": "#000000"},
    {"type": "beginPath"},
    {"type": "arc", "x": 200, "y": 200, "radius": 50, "startAngle": 0, "endAngle": math.pi * 2},
    {"type": "stroke", "style": "#00ff00"},
]

BAR_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"]


def chart_operations(values, width, height):
    """A bar chart as a block's generateChartOperations(data) would draw it: title,
    axes, grid lines with labels, one labelled bar per value."""
    left, right, top, bottom = 70, width - 30, 60, height - 50
    peak = max(values)
    ops = [
        {"type": "fillText", "text": "Weekly sign-ups", "x": width / 2, "y": 35,
         "font": "bold 22px sans-serif", "textAlign": "center", "style": "#222"},
        {"type": "set", "lineWidth": 1, "strokeStyle": "#cccccc", "font": "12px sans-serif",
         "fillStyle": "#555", "textAlign": "right", "textBaseline": "middle"},
    ]
    for step in range(5):
        y = bottom - (bottom - top) * step / 4
        ops += [
            {"type": "beginPath"},
            {"type": "moveTo", "x": left, "y": round(y) + 0.5},
            {"type": "lineTo", "x": right, "y": round(y) + 0.5},
            {"type": "stroke"},
            {"type": "fillText", "text": str(round(peak * step / 4)), "x": left - 8, "y": y},
        ]
    slot = (right - left) / len(values)
    for index, value in enumerate(values):
        bar_height = (bottom - top) * value / peak
        x = left + index * slot + slot * 0.15
        ops += [
            {"type": "fillRect", "x": x, "y": bottom - bar_height, "width": slot * 0.7, "height": bar_height,
             "style": BAR_COLOURS[index % len(BAR_COLOURS)]},
            {"type": "fillText", "text": f"Day {index + 1}", "x": x + slot * 0.35, "y": bottom + 18,
             "textAlign": "center", "textBaseline": "alphabetic"},
        ]
    ops += [
        {"type": "beginPath"},
        {"type": "moveTo", "x": left, "y": top - 10},
        {"type": "lineTo", "x": left, "y": bottom},
        {"type": "lineTo", "x": right, "y": bottom},
        {"type": "stroke", "style": "#333", "lineWidth": 2},
    ]
    return ops


def decode(reply):
    return Image.open(io.BytesIO(reply["data"]))


def new_canvas(ctx, width=200, height=200):
    return create_canvas(ctx, {"width": width, "height": height})["canvasId"]


def render(ctx, ops, width=200, height=200):
    canvas_id = new_canvas(ctx, width, height)
    draw(ctx, {"canvasId": canvas_id, "ops": ops})
    return decode(export_image(ctx, {"canvasId": canvas_id, "format": "png"})).convert("RGBA")


def refused(code, call, *args):
    with pytest.raises(CapabilityError) as caught:
        call(*args)
    assert caught.value.code == code, caught.value.message
    return caught.value.message


@pytest.fixture(autouse=True)
def isolated_run_state(settings):
    """A run state of the test's own, empty at the start as for a new run: the
    configured backend (Redis in the services test run) under a fresh key prefix, or a
    fresh area of process memory. Nothing shared is flushed."""
    prefix = f"test-canvas-{uuid.uuid4().hex}"
    configured = dict(settings.CACHES["runstate"])
    if "redis" in configured["BACKEND"].lower():
        configured["KEY_PREFIX"] = prefix
    else:
        configured["LOCATION"] = prefix
    settings.CACHES = {**settings.CACHES, "runstate": configured}
    yield
    if "redis" in configured["BACKEND"].lower():
        client = run_state()._cache.get_client(write=True)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    else:
        run_state().clear()


@pytest.fixture
def ctx(acme):
    return context_for(acme)


@pytest.fixture
def advanced(make_tenant):
    return context_for(make_tenant("initech", "Advanced"))


# Behaviour -------------------------------------------------------------------------


def test_it_renders_the_seed_example(ctx):
    created = create_canvas(ctx, {"width": 800, "height": 600})
    assert created["canvasId"] == created["data"]["canvasId"]
    assert (created["width"], created["height"]) == (800, 600)
    drawn = draw(ctx, {"canvasId": created["canvasId"], "ops": SEED_OPS})
    assert drawn["data"] == {"canvasId": created["canvasId"], "opCount": 5}

    reply = export_image(ctx, {"canvasId": created["canvasId"], "format": "png"})
    assert reply["mimeType"] == "image/png" and reply["format"] == "png"
    assert reply["size"] == len(reply["data"]) and isinstance(reply["data"], bytes)
    image = decode(reply)
    assert image.format == "PNG" and image.size == (800, 600)
    image = image.convert("RGBA")
    # The red square covers 10..110 exactly: its edges are on pixel boundaries.
    assert image.getpixel((10, 10)) == image.getpixel((109, 109)) == (255, 0, 0, 255)
    assert image.getpixel((9, 60))[3] == 0 and image.getpixel((110, 60))[3] == 0
    # The green ring passes through (250, 200) and (200, 150); its inside stays clear.
    for point in [(250, 200), (150, 200), (200, 150), (200, 250)]:
        r, g, b, a = image.getpixel(point)
        assert g > 150 and r < 60 and b < 60 and a > 100, point
    assert image.getpixel((200, 200))[3] == 0
    # "Hello World" in 10px black on the red square: dark pixels between x 20 and 80.
    dark = [
        (x, y) for x in range(18, 90) for y in range(20, 34)
        if image.getpixel((x, y))[0] < 100 and image.getpixel((x, y))[3] == 255
    ]
    assert len(dark) > 25
    assert all(image.getpixel((x, 40))[:3] == (255, 0, 0) for x in range(15, 100))


def test_it_renders_the_interactive_dashboard(ctx):
    canvas_id = new_canvas(ctx, 1200, 800)
    draw(ctx, {"canvasId": canvas_id, "ops": [
        {"type": "fillRect", "x": 0, "y": 0, "width": 1200, "height": 800, "style": "#f5f5f5"},
    ]})
    values = [12, 19, 3, 5, 2, 3, 14]
    ops = chart_operations(values, 1200, 800)
    reply = draw(ctx, {"canvasId": canvas_id, "ops": ops})
    assert reply["data"]["opCount"] == 1 + len(ops)
    exported = export_image(ctx, {"canvasId": canvas_id, "format": "png"})
    image = decode(exported).convert("RGBA")
    assert image.size == (1200, 800)
    assert image.getpixel((5, 5)) == image.getpixel((1195, 795)) == (245, 245, 245, 255)
    # The tallest bar (day 2, value 19) rises to the top of the plot; each bar has its
    # colour in its middle, just above the axis.
    slot = (1200 - 30 - 70) / len(values)
    for index in range(len(values)):
        x = int(70 + index * slot + slot * 0.5)
        colour = BAR_COLOURS[index]
        assert image.getpixel((x, 800 - 50 - 3))[:3] == tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    assert image.getpixel((int(70 + slot * 1.5), 65))[:3] == (0xF2, 0x8E, 0x2B)
    assert image.getpixel((int(70 + slot * 2.5), 65))[:3] == (245, 245, 245)


def test_it_keeps_ops_across_calls_in_order(ctx):
    canvas_id = new_canvas(ctx, 50, 50)
    draw(ctx, {"canvasId": canvas_id, "ops": [{"type": "fillRect", "x": 0, "y": 0, "width": 50, "height": 50, "style": "red"}]})
    draw(ctx, {"canvasId": canvas_id, "ops": []})
    reply = draw(ctx, {"canvasId": canvas_id, "ops": [{"type": "fillRect", "x": 0, "y": 0, "width": 25, "height": 50, "style": "blue"}]})
    assert reply["opCount"] == 2
    image = decode(export_image(ctx, {"canvasId": canvas_id})).convert("RGBA")
    assert image.getpixel((10, 10)) == (0, 0, 255, 255) and image.getpixel((40, 10)) == (255, 0, 0, 255)


def _export_in_another_process(ctx, canvas_id, pipe):
    try:
        pipe.send(("ok", export_image(ctx, {"canvasId": canvas_id})["data"]))
    except Exception as e:  # reported to the parent, which fails the test with it
        pipe.send(("error", repr(e)))


def test_it_lets_any_worker_process_take_any_call(ctx, settings):
    # With the run state in Redis (as in production), a canvas drawn by this process
    # is exported by another one, as two RQ workers would share a run's calls.
    settings.CACHES = {
        **settings.CACHES,
        "runstate": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": settings.REDIS_URL or TEST_REDIS_URL,
            "KEY_PREFIX": f"test-canvas-{uuid.uuid4().hex}",
        },
    }
    try:
        run_state().get("ping")
    except Exception as e:
        pytest.skip(f"this test needs Redis at {settings.REDIS_URL or TEST_REDIS_URL}: {e}")
    ctx.run_id = "shared-run"
    canvas_id = new_canvas(ctx, 40, 40)
    draw(ctx, {"canvasId": canvas_id, "ops": [{"type": "fillRect", "x": 0, "y": 0, "width": 40, "height": 40, "style": "lime"}]})
    receiving, sending = multiprocessing.get_context("fork").Pipe(duplex=False)
    worker = multiprocessing.get_context("fork").Process(target=_export_in_another_process, args=(ctx, canvas_id, sending))
    worker.start()
    status, payload = receiving.recv()
    worker.join(10)
    assert status == "ok", payload
    assert Image.open(io.BytesIO(payload)).convert("RGBA").getpixel((20, 20)) == (0, 255, 0, 255)
    store.discard_run(ctx)
    refused("NOT_FOUND", export_image, ctx, {"canvasId": canvas_id})


def test_it_keeps_every_op_of_draw_calls_racing_on_one_canvas(ctx):
    # Blocks may fire draw calls without awaiting them; the broker runs them in
    # parallel threads or workers. None may lose another's ops, and together they may
    # not pass the canvas's limit.
    canvas_id = new_canvas(ctx)
    batch = [{"type": "fillRect", "x": 0, "y": 0, "width": 1, "height": 1}] * 300
    errors = []

    def drawer():
        for _ in range(10):
            try:
                draw(ctx, {"canvasId": canvas_id, "ops": batch})
            except CapabilityError as e:
                errors.append(e.code)

    threads = [threading.Thread(target=drawer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    number = store.find(ctx, canvas_id)[0]
    stored = len(store.load_ops(ctx, number))
    # 8 x 10 x 300 = 24,000 asked for; the limit is 20,000, in whole calls.
    assert stored == store.op_count(ctx, number) == 20_000 - 20_000 % 300
    assert set(errors) == {"QUOTA_EXCEEDED"} and len(errors) == 80 - stored // 300


def test_it_draws_any_unicode_text(ctx):
    image = render(ctx, [
        {"type": "fillText", "text": "caf\u00e9 \u4e2d\u6587 \ud83d\ude00 x\ud800y a\u0000b", "x": 5, "y": 20, "font": "16px sans-serif"},
    ], 200, 30)
    assert image.getbbox() is not None


def test_it_sets_properties_one_at_a_time_together_or_for_one_op(ctx):
    image = render(ctx, [
        {"type": "fillStyle", "value": "#0000ff"},
        {"type": "fillRect", "x": 0, "y": 0, "width": 10, "height": 10},
        # style and property fields apply to their own op only...
        {"type": "fillRect", "x": 10, "y": 0, "width": 10, "height": 10, "style": "red", "globalAlpha": 0.5},
        # ...so the next op is blue and opaque again.
        {"type": "fillRect", "x": 20, "y": 0, "width": 10, "height": 10},
        {"type": "set", "fillStyle": "lime", "globalAlpha": 1},
        {"type": "fillRect", "x": 30, "y": 0, "width": 10, "height": 10},
        {"type": "save"},
        {"type": "fillStyle", "value": "black"},
        {"type": "restore"},
        {"type": "fillRect", "x": 40, "y": 0, "width": 10, "height": 10},
    ])
    assert image.getpixel((5, 5)) == (0, 0, 255, 255)
    assert image.getpixel((15, 5)) == (255, 0, 0, 128)
    assert image.getpixel((25, 5)) == (0, 0, 255, 255)
    assert image.getpixel((35, 5)) == image.getpixel((45, 5)) == (0, 255, 0, 255)


def test_it_starts_from_the_browsers_defaults(ctx):
    image = render(ctx, [
        {"type": "fillRect", "x": 0, "y": 0, "width": 10, "height": 10},
        {"type": "beginPath"},
        {"type": "moveTo", "x": 20, "y": 5.5},
        {"type": "lineTo", "x": 40, "y": 5.5},
        {"type": "stroke"},
    ], 50, 20)
    assert image.getpixel((5, 5)) == (0, 0, 0, 255)  # fillStyle #000
    assert image.getpixel((30, 5)) == (0, 0, 0, 255)  # strokeStyle #000, lineWidth 1
    assert image.getpixel((30, 4))[3] == 0 and image.getpixel((30, 6))[3] == 0
    assert image.getpixel((45, 15)) == (0, 0, 0, 0)  # transparent black


def test_it_fills_with_the_even_odd_rule(ctx):
    square_in_square = [
        {"type": "beginPath"},
        {"type": "rect", "x": 0, "y": 0, "width": 40, "height": 40},
        {"type": "rect", "x": 10, "y": 10, "width": 20, "height": 20},
    ]
    nonzero = render(ctx, [*square_in_square, {"type": "fill"}], 40, 40)
    evenodd = render(ctx, [*square_in_square, {"type": "fill", "fillRule": "evenodd"}], 40, 40)
    assert nonzero.getpixel((20, 20))[3] == 255 and evenodd.getpixel((20, 20))[3] == 0
    assert evenodd.getpixel((5, 5))[3] == 255


def test_it_transforms_drawing(ctx):
    image = render(ctx, [
        {"type": "translate", "x": 50, "y": 50},
        {"type": "rotate", "angle": math.pi / 4},
        {"type": "fillRect", "x": -10, "y": -10, "width": 20, "height": 20, "style": "red"},
    ], 100, 100)
    # A square turned 45 degrees: its corner reaches 14 pixels out along the axes.
    assert image.getpixel((50, 38))[3] == 255 and image.getpixel((62, 50))[3] == 255
    assert image.getpixel((41, 41))[3] == 0


def test_it_draws_images_from_tenant_files(ctx, acme):
    Image.new("RGBA", (4, 4), (0, 0, 255, 255)).save(acme.storage_root() / "blue.png")
    (acme.storage_root() / "pics").mkdir()
    Image.new("RGB", (2, 2), (255, 255, 0)).save(acme.storage_root() / "pics" / "yellow.jpg", "JPEG", quality=100)
    image = render(ctx, [
        {"type": "drawImage", "path": "blue.png", "dx": 0, "dy": 0},
        {"type": "drawImage", "path": "/pics/yellow.jpg", "x": 10, "y": 0, "width": 10, "height": 10},
        {"type": "drawImage", "path": "blue.png", "sx": 0, "sy": 0, "sw": 2, "sh": 2, "dx": 30, "dy": 0, "dw": 8, "dh": 8},
    ], 40, 20)
    assert image.getpixel((1, 1)) == (0, 0, 255, 255) and image.getpixel((5, 5))[3] == 0
    r, g, b, a = image.getpixel((15, 5))
    assert r > 240 and g > 240 and b < 20 and a == 255
    assert image.getpixel((34, 4)) == (0, 0, 255, 255) and image.getpixel((39, 4))[3] == 0


def test_it_draws_one_canvas_into_another_as_it_was_then(ctx):
    source = new_canvas(ctx, 10, 10)
    target = new_canvas(ctx, 30, 10)
    draw(ctx, {"canvasId": source, "ops": [{"type": "fillRect", "x": 0, "y": 0, "width": 10, "height": 10, "style": "red"}]})
    draw(ctx, {"canvasId": target, "ops": [{"type": "drawImage", "canvasId": source, "dx": 0, "dy": 0}]})
    # Painted over after the drawImage: like a browser, the target keeps the red copy.
    draw(ctx, {"canvasId": source, "ops": [{"type": "fillRect", "x": 0, "y": 0, "width": 10, "height": 10, "style": "blue"}]})
    draw(ctx, {"canvasId": target, "ops": [
        {"type": "drawImage", "canvasId": source, "dx": 10, "dy": 0},
        # The canvas itself, as it is at this op, shifted right.
        {"type": "drawImage", "canvasId": target, "dx": 20, "dy": 0, "dw": 10, "dh": 10, "sx": 0, "sy": 0, "sw": 10, "sh": 10},
    ]})
    image = decode(export_image(ctx, {"canvasId": target})).convert("RGBA")
    assert image.getpixel((5, 5)) == (255, 0, 0, 255)
    assert image.getpixel((15, 5)) == (0, 0, 255, 255)
    assert image.getpixel((25, 5)) == (255, 0, 0, 255)


def test_it_exports_every_format_the_profile_has(advanced):
    canvas_id = new_canvas(advanced, 64, 32)
    draw(advanced, {"canvasId": canvas_id, "ops": [{"type": "fillRect", "x": 0, "y": 0, "width": 32, "height": 32, "style": "#3366cc"}]})
    expected = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}
    for fmt, pillow_name in expected.items():
        reply = export_image(advanced, {"canvasId": canvas_id, "format": fmt})
        image = decode(reply)
        assert image.format == pillow_name and image.size == (64, 32), fmt
        assert reply["mimeType"] == Image.MIME[pillow_name], fmt
        r, g, b, *_ = image.convert("RGBA").getpixel((16, 16))
        assert abs(r - 0x33) <= 6 and abs(g - 0x66) <= 6 and abs(b - 0xCC) <= 6, (fmt, r, g, b)
        alpha = image.convert("RGBA").getpixel((48, 16))
        if fmt in ("jpeg", "jpg", "bmp"):
            # No alpha: transparent becomes black, as in toDataURL('image/jpeg').
            assert max(alpha[:3]) <= 8
        else:
            assert alpha[3] == 0, fmt


def test_it_applies_jpeg_quality(advanced):
    canvas_id = new_canvas(advanced, 200, 200)
    draw(advanced, {"canvasId": canvas_id, "ops": [{"type": "fillRect", "x": 0, "y": 0, "width": 200, "height": 200, "style": "white"}]})
    draw(advanced, {"canvasId": canvas_id, "ops": [
        {"type": "fillText", "text": "quality " * 4, "x": 0, "y": 20 * row, "font": "18px serif"} for row in range(1, 10)
    ]})
    small = export_image(advanced, {"canvasId": canvas_id, "format": "jpeg", "quality": 0.1})["size"]
    large = export_image(advanced, {"canvasId": canvas_id, "format": "jpeg", "quality": 1})["size"]
    assert small < large / 2


def test_it_parses_css_colours():
    assert parse_color("red") == parse_color("#f00") == parse_color("#ff0000") == (255, 0, 0, 255)
    assert parse_color("RebeccaPurple") == (102, 51, 153, 255)
    assert parse_color("transparent") == (0, 0, 0, 0)
    assert parse_color("#f008") == (255, 0, 0, 136) == parse_color("#ff000088")
    assert parse_color("rgb(255, 128, 0)") == parse_color("rgb(255 128 0)") == (255, 128, 0, 255)
    assert parse_color("rgba(255, 0, 0, 0.5)") == parse_color("rgb(255 0 0 / 50%)") == (255, 0, 0, 128)
    assert parse_color("rgb(100%, 0%, 50%)") == (255, 0, 128, 255)
    assert parse_color("hsl(120, 100%, 50%)") == parse_color("hsl(120deg 100% 50%)") == (0, 255, 0, 255)
    assert parse_color("hsla(240, 100%, 50%, 0.25)") == parse_color("hsl(0.6667turn 100% 50% / 25%)")[:3] + (64,)
    for bad in ["url(javascript:alert(1))", "#12", "#12345", "rgb(1, 2)", "rgb(1 2 3, 4)", "var(--brand)",
                "expression(alert(1))", "red; background: url(x)", "currentcolor", "", "hsl(1px, 2%, 3%)"]:
        with pytest.raises(ColorError):
            parse_color(bad)


def test_it_maps_css_fonts_onto_the_bundled_fonts():
    assert parse_font("10px sans-serif") == FontSpec("liberation-sans", 10.0)
    assert parse_font("bold 16px Arial, sans-serif") == FontSpec("liberation-sans", 16.0, 700)
    assert parse_font("italic 600 12pt Georgia, serif") == FontSpec("liberation-serif", 16.0, 600, True)
    assert parse_font("14px/1.5 'Courier New', monospace") == FontSpec("liberation-mono", 14.0)
    assert parse_font('normal small-caps 2em "Unknown Face", serif') == FontSpec("liberation-serif", 20.0, small_caps=True)
    # A family the canvas does not have is passed over; with none left, the browser's
    # default font (Times New Roman's metrics) draws the text.
    assert parse_font("12px Unknown") == FontSpec("liberation-serif", 12.0)
    assert parse_font("12px Unknown, 'DejaVu Sans'") == FontSpec("dejavu-sans", 12.0)
    assert parse_font('12px "sans-serif"') == FontSpec("liberation-serif", 12.0)  # quoted: a name, not the generic
    assert parse_font("lighter 12px cursive, Helvetica") == FontSpec("liberation-sans", 12.0, 100)
    assert parse_font("oblique 10deg condensed 550 9px  Liberation   Mono") == FontSpec("liberation-mono", 9.0, 550, True)
    assert parse_font("150% serif") == FontSpec("liberation-serif", 15.0)
    assert parse_font("larger serif") == FontSpec("liberation-serif", 12.0)
    assert parse_font("medium monospace") == FontSpec("liberation-mono", 13.0)  # the fixed-width default
    assert parse_font("2em monospace") == FontSpec("liberation-mono", 16.25)
    assert parse_font("0 serif") == FontSpec("liberation-serif", 0.0)
    assert parse_font("caption") == FontSpec("liberation-sans", 16.0)
    # What a browser ignores (keeping the font it had) parses as None.
    for ignored in ["16px", "sans-serif", "bold", "-3px serif", "16 px serif", "bold bold 16px serif",
                    "normal normal normal normal normal 16px serif", "0 16px serif", "1001 16px serif",
                    "16px/ serif", "16px/-1 serif", "16px serif bold", "16px serif;", "16px 3D, serif",
                    "16px serif,", "16px initial, serif", "inherit", "5vw serif", ""]:
        assert parse_font(ignored) is None, ignored
    for bad in [12, None, "16px " + "a" * 300]:
        with pytest.raises(FontError):
            parse_font(bad)
    with pytest.raises(FontError, match="largest font size"):
        parse_font("99999px serif")


def test_it_ignores_an_invalid_font_and_keeps_the_previous_one(ctx):
    def picture(ops):
        return render(ctx, ops, 200, 60).tobytes()

    text = {"type": "fillText", "text": "Same text", "x": 5, "y": 40}
    expected = picture([{"type": "font", "value": "bold 24px serif"}, text])
    assert expected != picture([text])  # the font shows
    assert expected == picture([{"type": "font", "value": "bold 24px serif"}, {"type": "font", "value": "24px"}, text])
    assert expected == picture([{"type": "set", "font": "bold 24px serif"}, {**text, "font": "bold bold 9px mono"}])


def test_it_squeezes_text_to_max_width(ctx):
    wide = render(ctx, [{"type": "fillText", "text": "W" * 20, "x": 0, "y": 30, "font": "20px sans-serif"}], 400, 40)
    squeezed = render(ctx, [{"type": "fillText", "text": "W" * 20, "x": 0, "y": 30, "font": "20px sans-serif", "maxWidth": 100}], 400, 40)
    assert wide.getbbox()[2] > 300
    assert 90 <= squeezed.getbbox()[2] <= 101


# Containment -----------------------------------------------------------------------


def test_cant_create_a_canvas_larger_than_the_profile(ctx):
    message = refused("QUOTA_EXCEEDED", create_canvas, ctx, {"width": 100000, "height": 100000})
    assert message == "A 100000x100000 canvas is larger than this tenant's limit of 1920x1080."
    refused("QUOTA_EXCEEDED", create_canvas, ctx, {"width": 1921, "height": 1080})
    message = refused("QUOTA_EXCEEDED", create_canvas, ctx, {"width": 10**400, "height": 1})
    assert message == "The canvas width is larger than this tenant's limit of 1920x1080."
    # Refused before anything was counted or stored: the next canvas is the run's first.
    assert new_canvas(ctx).startswith("c1-")
    assert create_canvas(ctx, {"width": 1920, "height": 1080})["width"] == 1920


def test_cant_create_a_canvas_of_a_size_that_is_not_whole_pixels(ctx):
    for bad in [0, -5, 1.5, float("nan"), float("inf"), "100", True, None, [100]]:
        message = refused("INVALID_ARGUMENT", create_canvas, ctx, {"width": bad, "height": 100})
        assert message.startswith("The canvas width must be a whole number of pixels")
        refused("INVALID_ARGUMENT", create_canvas, ctx, {"width": 100, "height": bad})
    assert create_canvas(ctx, {"width": 100.0, "height": 1})["width"] == 100


def test_cant_create_more_canvases_than_a_run_may(ctx, acme):
    for _ in range(ctx.policy.canvas_max_per_run):
        new_canvas(ctx, 10, 10)
    message = refused("QUOTA_EXCEEDED", create_canvas, ctx, {"width": 10, "height": 10})
    assert message == "This run has created 10 canvases, the most one run may create."
    # The limit is per run: the tenant's next run starts again.
    assert new_canvas(context_for(acme, run_id="next-run"), 10, 10).startswith("c1-")


def test_cant_draw_ten_million_ops(ctx):
    canvas_id = new_canvas(ctx)
    number = store.find(ctx, canvas_id)[0]
    ops = [{"type": "beginPath"}] * 10_000_000
    started = time.perf_counter()
    message = refused("QUOTA_EXCEEDED", draw, ctx, {"canvasId": canvas_id, "ops": ops})
    assert time.perf_counter() - started < 0.5
    assert message == "This draw call has 10000000 operations; a canvas holds at most 20000."
    assert store.op_count(ctx, number) == 0 and store.load_ops(ctx, number) == []


def test_cant_pass_the_op_limit_over_several_calls(ctx):
    canvas_id = new_canvas(ctx)
    batch = [{"type": "beginPath"}] * 5000
    for _ in range(4):
        draw(ctx, {"canvasId": canvas_id, "ops": batch})
    message = refused("QUOTA_EXCEEDED", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "beginPath"}]})
    assert message == "The canvas holds 20000 operations; 1 more would pass its limit of 20000."


def test_cant_use_nan_or_infinity_as_numbers(ctx):
    canvas_id = new_canvas(ctx)
    cases = [
        ({"type": "fillRect", "x": float("nan"), "y": 0, "width": 1, "height": 1}, "ops[1].x: must be a finite number (got NaN)"),
        ({"type": "arc", "x": 0, "y": 0, "radius": float("inf"), "startAngle": 0, "endAngle": 1}, "ops[1].radius: must be a finite number (got Infinity)"),
        ({"type": "lineTo", "x": 0, "y": float("-inf")}, "ops[1].y: must be a finite number (got -Infinity)"),
        ({"type": "moveTo", "x": None, "y": 0}, "ops[1].x: must be a finite number (got null)"),
        ({"type": "moveTo", "x": "10", "y": 0}, "ops[1].x: must be a finite number (got a string)"),
        ({"type": "scale", "x": True, "y": 1}, "ops[1].x: must be a finite number (got true)"),
        ({"type": "lineWidth", "value": float("nan")}, "ops[1].value: must be a finite number (got NaN)"),
        ({"type": "translate", "x": 1e300, "y": 0}, "ops[1].x: must be at most 1e+30 in magnitude"),
        ({"type": "translate", "x": 0, "y": -(10**400)}, "ops[1].y: must be at most 1e+30 in magnitude"),
        ({"type": "moveTo", "x": 1}, "ops[1].y: moveTo needs y"),
    ]
    for op, expected in cases:
        message = refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "beginPath"}, op]})
        assert message == expected
    # Nothing of the refused calls was stored, not even their valid first op.
    assert draw(ctx, {"canvasId": canvas_id, "ops": []})["opCount"] == 0


def test_cant_draw_a_10mb_text(ctx):
    canvas_id = new_canvas(ctx)
    text = "A" * (10 * 1024 * 1024)
    message = refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "fillText", "text": text, "x": 0, "y": 10}]})
    assert message == "ops[0].text: is 10485760 characters long; the limit is 10000"


def test_cant_store_more_than_a_megabyte_of_text_on_a_canvas(ctx):
    canvas_id = new_canvas(ctx)
    op = {"type": "fillText", "text": "x" * 10_000, "x": 0, "y": 10}
    draw(ctx, {"canvasId": canvas_id, "ops": [op] * 100})
    message = refused("QUOTA_EXCEEDED", draw, ctx, {"canvasId": canvas_id, "ops": [op]})
    assert "1000000 characters of text" in message


def test_cant_use_a_javascript_url_as_a_colour(ctx):
    canvas_id = new_canvas(ctx)
    message = refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [
        {"type": "fillRect", "x": 0, "y": 0, "width": 5, "height": 5, "style": "url(javascript:alert(1))"},
    ]})
    assert message.startswith("ops[0].style: 'url(javascript:alert(1))' is not a colour")
    for op in [
        {"type": "fillStyle", "value": "url(javascript:alert(1))"},
        {"type": "set", "strokeStyle": "expression(alert(1))"},
        {"type": "stroke", "strokeStyle": {"toString": "red"}},
        {"type": "fillRect", "x": 0, "y": 0, "width": 5, "height": 5, "style": "red" * 1000},
    ]:
        refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [op]})


def test_cant_send_an_unknown_op(ctx):
    canvas_id = new_canvas(ctx)
    ops = [*SEED_OPS[:3], {"type": "fillCircle", "x": 1, "y": 1, "r": 3}]
    message = refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": ops})
    assert message == "ops[3]: unknown operation 'fillCircle'"
    for op, expected in [
        ({"type": "__class__"}, "ops[0]: unknown operation '__class__'"),
        ({"x": 1}, "ops[0]: has no type (such as 'fillRect')"),
        ("fillRect", "ops[0]: must be an object with a type (got a string)"),
        ({"type": "fillRect", "x": 0, "y": 0, "width": 1, "height": 1, "color": "red"}, "ops[0]: unknown field 'color' for fillRect"),
        ({"type": "beginPath", "style": "red"}, "ops[0]: unknown field 'style' for beginPath"),
        ({"type": "lineCap", "value": "pointy"}, "ops[0].value: must be one of butt, round, square (got 'pointy')"),
        ({"type": "lineWidth", "value": 0}, "ops[0].value: must be greater than 0 (got 0)"),
        ({"type": "globalAlpha", "value": 2}, "ops[0].value: must be between 0 and 1 (got 2)"),
        ({"type": "font", "value": 16}, "ops[0].value: must be a CSS font string such as '16px sans-serif'"),
    ]:
        assert refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [op]}) == expected
    refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": "fillRect"})
    assert draw(ctx, {"canvasId": canvas_id, "ops": []})["opCount"] == 0


def test_cant_reach_an_unknown_canvas(ctx, acme, make_tenant):
    for canvas_id in ["c1-000000000000", "nope", "c99-ffffffffffff", "../c1"]:
        refused("NOT_FOUND", draw, ctx, {"canvasId": canvas_id, "ops": []})
        refused("NOT_FOUND", export_image, ctx, {"canvasId": canvas_id})
    refused("INVALID_ARGUMENT", draw, ctx, {"ops": []})
    # A canvas of another run, of the same tenant or of another, is not there either.
    mine = new_canvas(ctx)
    other_run = context_for(acme, run_id="other-run")
    message = refused("NOT_FOUND", export_image, other_run, {"canvasId": mine})
    assert message == f"No canvas '{mine}' in this run."
    other_tenant = context_for(make_tenant("globex", "Interactive"))
    refused("NOT_FOUND", draw, other_tenant, {"canvasId": mine, "ops": []})
    refused("NOT_FOUND", draw, ctx, {"canvasId": new_canvas(ctx), "ops": [{"type": "drawImage", "canvasId": "c5-123456789abc", "dx": 0, "dy": 0}]})


def test_cant_export_a_format_the_profile_lacks(ctx):
    canvas_id = new_canvas(ctx)
    message = refused("PERMISSION_DENIED", export_image, ctx, {"canvasId": canvas_id, "format": "jpeg"})
    assert message == "Export format 'jpeg' is not available to this tenant (available: png)."
    refused("PERMISSION_DENIED", export_image, ctx, {"canvasId": canvas_id, "format": "webp"})
    message = refused("INVALID_ARGUMENT", export_image, ctx, {"canvasId": canvas_id, "format": "svg"})
    assert message == "Unknown export format 'svg' (formats: png, jpeg, webp, gif, bmp, tiff)."
    refused("INVALID_ARGUMENT", export_image, ctx, {"canvasId": canvas_id, "format": "png", "quality": 50})


def test_cant_use_canvases_on_a_profile_without_them(make_tenant):
    basic = context_for(make_tenant("hooli", "Basic"))
    message = refused("PERMISSION_DENIED", create_canvas, basic, {"width": 10, "height": 10})
    assert message == "The Basic profile does not allow canvases."


def test_cant_draw_a_file_outside_storage(ctx, acme, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), "red").save(secret)
    canvas_id = new_canvas(ctx)
    for path in ["../secret.png", "images/../../secret.png", "/../secret.png", "..", "a/..\\b"]:
        message = refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "drawImage", "path": path, "dx": 0, "dy": 0}]})
        assert message.startswith("ops[0].path: ") and str(tmp_path) not in message
    # An absolute path is a tenant path: /tmp/... is looked for inside the storage.
    refused("NOT_FOUND", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "drawImage", "path": str(secret), "dx": 0, "dy": 0}]})
    assert draw(ctx, {"canvasId": canvas_id, "ops": []})["opCount"] == 0


def test_cant_draw_through_a_symlink_planted_in_storage(ctx, acme, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4), "red").save(outside / "secret.png")
    root = acme.storage_root()
    (root / "innocent.png").symlink_to(outside / "secret.png")
    (root / "folder").symlink_to(outside)
    canvas_id = new_canvas(ctx)
    for path in ["innocent.png", "folder/secret.png"]:
        message = refused("PERMISSION_DENIED", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "drawImage", "path": path, "dx": 0, "dy": 0}]})
        assert "symbolic link" in message and str(tmp_path) not in message


def test_cant_swap_in_a_symlink_between_draw_and_export(ctx, acme, tmp_path):
    Image.new("RGB", (4, 4), "red").save(tmp_path / "secret.png")
    Image.new("RGB", (4, 4), "blue").save(acme.storage_root() / "logo.png")
    canvas_id = new_canvas(ctx)
    draw(ctx, {"canvasId": canvas_id, "ops": [{"type": "drawImage", "path": "logo.png", "dx": 0, "dy": 0}]})
    (acme.storage_root() / "logo.png").unlink()
    (acme.storage_root() / "logo.png").symlink_to(tmp_path / "secret.png")
    message = refused("PERMISSION_DENIED", export_image, ctx, {"canvasId": canvas_id})
    assert message.startswith("ops[0].path: 'logo.png' leads through a symbolic link")


def test_cant_make_the_server_decode_anything_but_plain_images(ctx, acme):
    root = acme.storage_root()
    # An EPS file would make Pillow run Ghostscript; named .png it is still refused.
    (root / "page.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    (root / "notes.png").write_text("not an image")
    os.mkfifo(root / "pipe.png")
    canvas_id = new_canvas(ctx)
    for path in ["page.png", "notes.png"]:
        message = refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "drawImage", "path": path, "dx": 0, "dy": 0}]})
        assert "is not an image in a supported format" in message
    refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "drawImage", "path": "pipe.png", "dx": 0, "dy": 0}]})


def test_cant_draw_files_without_file_access(acme):
    Image.new("RGB", (4, 4), "red").save(acme.storage_root() / "logo.png")
    PolicyOverride.objects.create(tenant=acme, setting="files_access", value="none")
    ctx = context_for(acme)
    canvas_id = new_canvas(ctx)
    message = refused("PERMISSION_DENIED", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "drawImage", "path": "logo.png", "dx": 0, "dy": 0}]})
    assert message == "ops[0].path: The Interactive profile does not allow file access, so drawImage cannot read files."


def test_cant_render_beyond_the_memory_bound(advanced):
    # An 8K canvas needs 4 x 127 MiB to render and encode; two more 8K canvases drawn
    # into it need 127 MiB each: 760 MiB, over the 640 MiB bound.
    sources = [new_canvas(advanced, 7680, 4320) for _ in range(2)]
    target = new_canvas(advanced, 7680, 4320)
    draw(advanced, {"canvasId": target, "ops": [{"type": "drawImage", "canvasId": s, "dx": 0, "dy": 0} for s in sources]})
    started = time.perf_counter()
    message = refused("QUOTA_EXCEEDED", export_image, advanced, {"canvasId": target})
    assert time.perf_counter() - started < 0.5  # refused from the estimate, nothing rendered
    assert message.startswith("Rendering this canvas would need about 759 MB; one export may use 640 MB.")


def test_cant_keep_rendering_past_the_deadline(ctx):
    # Two thousand full-canvas translucent rectangles take many seconds to blend; the
    # block waits half a second, and the render stops soon after it stops waiting.
    canvas_id = new_canvas(ctx, 1920, 1080)
    draw(ctx, {"canvasId": canvas_id, "ops": [
        {"type": "fillRect", "x": 0, "y": 0, "width": 1920, "height": 1080, "style": "rgba(0, 0, 255, 0.5)"}
    ] * 2000})
    ctx.deadline = time.time() + 0.5
    started = time.perf_counter()
    message = refused("TIMEOUT", export_image, ctx, {"canvasId": canvas_id})
    assert message == "Rendering the canvas took longer than the call may wait; it was stopped."
    assert time.perf_counter() - started < 1.5


def test_cant_validate_past_the_deadline(ctx):
    canvas_id = new_canvas(ctx)
    ctx.deadline = time.time() - 1
    message = refused("TIMEOUT", draw, ctx, {"canvasId": canvas_id, "ops": SEED_OPS})
    assert message == "Checking the operations took longer than the call may wait; it was stopped."


def test_it_measures_text_in_the_current_font(ctx):
    canvas_id = new_canvas(ctx)
    reply = draw(ctx, {"canvasId": canvas_id, "ops": [
        {"type": "measureText", "text": "Hello World"},
        {"type": "set", "font": "bold 20px serif", "textAlign": "center"},
        {"type": "save"},
        {"type": "font", "value": "40px monospace"},
        {"type": "measureText", "text": "Hello World", "textBaseline": "top"},
        {"type": "restore"},
        {"type": "measureText", "text": "Hello World"},
        {"type": "fillRect", "x": 0, "y": 0, "width": 10, "height": 10},
    ]})
    # Measuring draws nothing and stores nothing: the five other ops are on the canvas.
    assert reply["opCount"] == 5
    default, mono, bold = reply["data"]["metrics"]
    # The default font is 10px sans-serif: Liberation Sans, Arial's metrics.
    assert round(default["width"], 3) == 51.499
    assert mono["width"] == pytest.approx(11 * 40 * 1229 / 2048)  # Liberation Mono: 1229/2048 em a character
    assert mono["actualBoundingBoxAscent"] < 0 < mono["actualBoundingBoxDescent"]  # below the top line
    assert bold["width"] > default["width"] * 2 - 15
    # Centred: the ink reaches about as far left of the point as right of it.
    assert bold["actualBoundingBoxLeft"] == pytest.approx(bold["actualBoundingBoxRight"], abs=1)
    assert set(bold) == {
        "width", "actualBoundingBoxLeft", "actualBoundingBoxRight", "actualBoundingBoxAscent", "actualBoundingBoxDescent",
        "fontBoundingBoxAscent", "fontBoundingBoxDescent", "emHeightAscent", "emHeightDescent", "hangingBaseline",
        "alphabeticBaseline", "ideographicBaseline",
    }
    # The font set in an earlier draw call holds in a later one.
    later = draw(ctx, {"canvasId": canvas_id, "ops": [{"type": "measureText", "text": "Hello World"}]})
    assert later["data"]["metrics"] == [bold] and later["opCount"] == 5
    refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "measureText", "text": "x", "fillStyle": "red"}]})
    refused("INVALID_ARGUMENT", draw, ctx, {"canvasId": canvas_id, "ops": [{"type": "measureText"}]})


def test_cant_measure_more_text_than_a_canvas_may_hold(ctx):
    canvas_id = new_canvas(ctx)
    long_text = "x" * limits.MAX_TEXT_LENGTH
    ops = [{"type": "measureText", "text": long_text}] * (limits.MAX_TEXT_PER_CANVAS // limits.MAX_TEXT_LENGTH + 1)
    message = refused("QUOTA_EXCEEDED", draw, ctx, {"canvasId": canvas_id, "ops": ops})
    assert message.startswith("This draw call measures 1010000 characters of text")
