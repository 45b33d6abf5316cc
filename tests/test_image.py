"""The image capability on pictures the canvas made: each transform step checked by its
pixels and size, metadata stripped, decompression bombs and truncated files refused (and
the server's memory measured around the bomb), from handlers and from a block."""

import dataclasses
import io
import os
import resource
import struct
import time
import tracemalloc
import zlib

import pytest
from PIL import ExifTags, Image

from capabilities import files, image
from capabilities.canvas import create_canvas, draw, export_image
from tests.helpers import context_for, override, refused

pytestmark = [pytest.mark.django_db(transaction=True)]

RED, BLUE, GREEN = (255, 0, 0, 255), (0, 0, 255, 255), (0, 255, 0, 255)


def canvas_png(tenant, path="in/source.png"):
    """A 200x100 picture drawn by the canvas capability: left half red, right half blue,
    a green 20x20 square at (10, 10); written to the tenant's storage."""
    ctx = context_for(tenant)
    canvas_id = create_canvas(ctx, {"width": 200, "height": 100})["canvasId"]
    draw(ctx, {"canvasId": canvas_id, "ops": [
        {"type": "fillRect", "x": 0, "y": 0, "width": 100, "height": 100, "style": "#ff0000"},
        {"type": "fillRect", "x": 100, "y": 0, "width": 100, "height": 100, "style": "#0000ff"},
        {"type": "fillRect", "x": 10, "y": 10, "width": 20, "height": 20, "style": "#00ff00"},
    ]})
    data = export_image(ctx, {"canvasId": canvas_id, "format": "png"})["data"]
    files.write_file(ctx, {"path": path, "data": data})
    return path


def transform(tenant, steps, output="out/result.png", path="in/source.png", **options):
    reply = image.image_transform(context_for(tenant), {"path": path, "steps": steps, "output": output, **options})
    picture = Image.open(tenant.storage_root() / output)
    picture.load()
    return reply["data"], picture



def rgba(picture, x, y):
    return picture.convert("RGBA").getpixel((x, y))



@pytest.fixture
def source(acme):
    canvas_png(acme)
    return acme


# -- each step, by its pixels -----------------------------------------------------------


def test_it_describes_an_image(source):
    info = image.image_info(context_for(source), {"path": "in/source.png"})["data"]
    assert info == {"format": "png", "width": 200, "height": 100, "mode": "RGBA", "frames": 1, "orientation": None,
                    "animated": False, "size": (source.storage_root() / "in/source.png").stat().st_size, "path": "in/source.png"}


def test_the_source_is_what_the_canvas_drew(source):
    picture = Image.open(source.storage_root() / "in/source.png")
    assert picture.size == (200, 100)
    assert rgba(picture, 50, 50) == RED and rgba(picture, 150, 50) == BLUE and rgba(picture, 20, 20) == GREEN


def test_it_resizes_keeping_proportions_from_one_side(source):
    info, picture = transform(source, [{"type": "resize", "width": 100}])
    assert picture.size == (100, 50) and info["width"] == 100 and info["height"] == 50
    assert rgba(picture, 25, 40) == RED and rgba(picture, 75, 25) == BLUE and rgba(picture, 10, 10) == GREEN


@pytest.mark.parametrize("fit, size, red_at, blue_at", [
    ("contain", (50, 25), (10, 20), (40, 12)),   # inside the box, proportions kept
    ("cover", (50, 50), (10, 45), (40, 25)),     # fills the box, the sides cut off
    ("fill", (50, 50), (10, 45), (40, 25)),      # stretched to the box
])
def test_it_resizes_with_each_fit(source, fit, size, red_at, blue_at):
    _, picture = transform(source, [{"type": "resize", "width": 50, "height": 50, "fit": fit}])
    assert picture.size == size
    assert rgba(picture, *red_at) == RED and rgba(picture, *blue_at) == BLUE


def test_cover_cuts_the_sides_and_fill_does_not(source):
    _, cover = transform(source, [{"type": "resize", "width": 50, "height": 50, "fit": "cover"}])
    _, fill = transform(source, [{"type": "resize", "width": 50, "height": 50, "fit": "fill"}], output="out/fill.png")
    # The green square (x 10..30 of 200) falls off a cover crop of the middle 100 columns.
    assert GREEN not in [rgba(cover, x, y) for x in range(50) for y in range(50)]
    assert rgba(fill, 5, 10)[1] > 240 and rgba(fill, 5, 10)[0] < 20


def test_it_crops(source):
    _, picture = transform(source, [{"type": "crop", "x": 90, "y": 0, "width": 20, "height": 10}])
    assert picture.size == (20, 10) and rgba(picture, 5, 5) == RED and rgba(picture, 15, 5) == BLUE


def test_it_rotates_clockwise(source):
    _, picture = transform(source, [{"type": "rotate", "degrees": 90}])
    assert picture.size == (100, 200)
    assert rgba(picture, 50, 50) == RED and rgba(picture, 50, 150) == BLUE
    assert rgba(picture, 75, 20) == GREEN  # top-left square, now top-right


def test_it_rotates_by_any_angle_growing_the_canvas(source):
    _, picture = transform(source, [{"type": "rotate", "degrees": 45}])
    assert picture.size == (214, 214)
    assert picture.getpixel((0, 0))[3] == 0  # corners outside the picture are transparent


@pytest.mark.parametrize("direction, red_at, green_at", [("horizontal", (150, 50), (180, 20)), ("vertical", (50, 50), (20, 80))])
def test_it_flips(source, direction, red_at, green_at):
    _, picture = transform(source, [{"type": "flip", "direction": direction}])
    assert picture.size == (200, 100) and rgba(picture, *red_at) == RED and rgba(picture, *green_at) == GREEN


def test_it_orients_by_exif_and_strips_the_exif(source):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "turn 90 degrees clockwise to show"
    Image.open(source.storage_root() / "in/source.png").save(source.storage_root() / "in/sideways.png", exif=exif.tobytes())
    assert image.image_info(context_for(source), {"path": "in/sideways.png"})["data"]["orientation"] == 6
    _, picture = transform(source, [{"type": "autoOrient"}], path="in/sideways.png")
    assert picture.size == (100, 200) and rgba(picture, 75, 20) == GREEN
    assert dict(picture.getexif()) == {}


def test_it_makes_grayscale(source):
    info, picture = transform(source, ["grayscale"])
    assert info["mode"] == "LA" and picture.mode == "LA"
    assert picture.getpixel((50, 50))[0] == 76 and picture.getpixel((150, 50))[0] == 29  # ITU-R 601 luma of red, blue


def test_it_blurs_and_sharpens(source):
    _, blurred = transform(source, [{"type": "blur", "radius": 5}])
    r, g, b, a = rgba(blurred, 100, 50)
    assert r > 60 and b > 60  # the edge between red and blue is mixed
    assert rgba(blurred, 50, 80) == RED  # far from any edge nothing changes
    files.write_file(context_for(source), {"path": "in/blurred.png", "data": (source.storage_root() / "out/result.png").read_bytes()})
    _, sharpened = transform(source, ["sharpen"], path="in/blurred.png", output="out/sharp.png")
    assert sharpened.size == (200, 100)
    assert abs(rgba(sharpened, 97, 50)[0] - rgba(sharpened, 103, 50)[0]) > abs(rgba(blurred, 97, 50)[0] - rgba(blurred, 103, 50)[0])


def test_it_makes_thumbnails_never_larger(source):
    _, picture = transform(source, [{"type": "thumbnail", "size": 50}])
    assert picture.size == (50, 25) and rgba(picture, 10, 20) == RED
    _, same = transform(source, [{"type": "thumbnail", "size": 1000}], output="out/same.png")
    assert same.size == (200, 100)


def test_it_chains_steps_in_order(source):
    _, picture = transform(source, [{"type": "crop", "x": 0, "y": 0, "width": 100, "height": 100}, {"type": "rotate", "degrees": 180},
                                    {"type": "resize", "width": 10}])
    assert picture.size == (10, 10) and rgba(picture, 8, 8)[1] > 200  # the green square, now bottom-right


def test_it_writes_each_format_with_its_quality(source):
    small, low = transform(source, [], output="out/low.jpg", quality=5)
    large, high = transform(source, [], output="out/high.jpg", quality=95)
    assert low.format == high.format == "JPEG" and small["format"] == "jpeg"
    assert small["size"] < large["size"]
    assert high.getpixel((50, 50))[0] > 240
    info, webp = transform(source, [], output="out/any.name", format="webp")
    assert webp.format == "WEBP" and info["format"] == "webp"


def test_it_strips_gps_unless_kept(source):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 1
    exif[ExifTags.Base.Make] = "PhoneCo"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (48.0, 51.0, 24.0)}
    Image.open(source.storage_root() / "in/source.png").convert("RGB").save(source.storage_root() / "in/photo.jpg", exif=exif.tobytes())
    assert Image.open(source.storage_root() / "in/photo.jpg").getexif().get_ifd(ExifTags.IFD.GPSInfo)
    _, stripped = transform(source, [], path="in/photo.jpg", output="out/stripped.jpg")
    assert dict(stripped.getexif()) == {} and b"PhoneCo" not in (source.storage_root() / "out/stripped.jpg").read_bytes()
    _, kept = transform(source, [], path="in/photo.jpg", output="out/kept.jpg", keepMetadata=True)
    assert kept.getexif()[ExifTags.Base.Make] == "PhoneCo" and kept.getexif().get_ifd(ExifTags.IFD.GPSInfo)


def test_it_keeps_every_frame_of_an_animation(source):
    frames = [Image.new("RGB", (20, 10), color) for color in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=[100, 200, 300], loop=0)
    files.write_file(context_for(source), {"path": "in/anim.gif", "data": buffer.getvalue()})
    info, picture = transform(source, [{"type": "resize", "width": 10}], path="in/anim.gif", output="out/anim.gif")
    assert info["frames"] == 3 and picture.n_frames == 3 and picture.size == (10, 5)
    picture.seek(2)
    assert picture.convert("RGB").getpixel((5, 2)) == (0, 0, 255)


# -- refusals -----------------------------------------------------------------------------


def png_bomb(width, height):
    """A valid PNG of width x height black grey pixels, compressed to a few hundred KB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def peak_rss_growth(function):
    """How much the peak resident memory of a process grows while `function` runs, and
    what it returned or raised: run in a forked child, whose peak starts at the test
    process's current size (the parent's own past peaks do not hide the growth)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                outcome = repr(function())
            except Exception as e:
                outcome = f"{type(e).__name__}: {getattr(e, 'code', '')} {e}"
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
            os.write(write_end, f"{grown}\n{outcome}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        grown, outcome = pipe.read().decode().split("\n", 1)
    os.waitpid(pid, 0)
    return int(grown), outcome


def test_cant_decode_a_decompression_bomb(make_tenant):
    advanced = make_tenant("initech", "Advanced")
    bomb = png_bomb(9000, 9000)  # 81 million pixels: 81 MB decoded, more than any canvas
    assert len(bomb) < 200_000
    files.write_file(context_for(advanced), {"path": "bomb.png", "data": bomb})
    ctx = context_for(advanced)
    args = {"path": "bomb.png", "steps": [{"type": "resize", "width": 10}], "output": "small.png"}

    tracemalloc.start()
    try:
        error = refused(image.image_transform, advanced, ctx, **args)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "QUOTA_EXCEEDED"
    assert error.message == ("'bomb.png' is 9000x9000 pixels; this tenant's images are at most 33177600 pixels (7680x4320). "
                             "It was not decoded.")
    assert python_peak < 2 * len(bomb) + 1_000_000  # the file's bytes, not its pixels
    assert not (advanced.storage_root() / "small.png").exists()

    # The server's memory around the refusal, against decoding the same file directly.
    refused_growth, outcome = peak_rss_growth(lambda: image.image_transform(ctx, args))
    assert outcome.startswith("CapabilityError: QUOTA_EXCEEDED")

    def decode_directly():
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(advanced.storage_root() / "bomb.png") as picture:
            picture.load()
            return picture.size

    decoded_growth, size = peak_rss_growth(decode_directly)
    assert size == "(9000, 9000)"
    print(f"bomb: Python peak {python_peak / 1e6:.2f} MB; RSS growth refused {refused_growth / 1e6:.1f} MB, "
          f"decoded directly {decoded_growth / 1e6:.1f} MB")
    # The measurement sees a decode (of 81 MB; the child's peak starts at the parent's,
    # which can hold pages the child has not touched again, so a part of it is hidden).
    assert decoded_growth > 40_000_000
    assert refused_growth < 5_000_000


def test_cant_decode_a_truncated_file(source):
    noise = Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    files.write_file(context_for(source), {"path": "in/cut.png", "data": buffer.getvalue()[: len(buffer.getvalue()) * 6 // 10]})
    error = refused(image.image_transform, source, path="in/cut.png", steps=["grayscale"], output="out/cut.png")
    assert error.code == "INVALID_ARGUMENT" and error.message == "'in/cut.png' is truncated or corrupt; it could not be decoded."
    assert not (source.storage_root() / "out/cut.png").exists()


def test_cant_transform_what_is_not_an_image(source):
    files.write_file(context_for(source), {"path": "in/notes.png", "data": "just text"})
    error = refused(image.image_info, source, path="in/notes.png")
    assert error.code == "INVALID_ARGUMENT" and "not an image in a supported format" in error.message


def test_cant_pass_the_frame_limit(source):
    frames = [Image.new("L", (4, 4), i * 4) for i in range(60)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    files.write_file(context_for(source), {"path": "in/long.gif", "data": buffer.getvalue()})
    error = refused(image.image_transform, source, path="in/long.gif", steps=[], output="out/long.gif")
    assert error.code == "QUOTA_EXCEEDED" and "60 frames" in error.message and "at most 50" in error.message


def test_cant_use_formats_the_profile_does_not_allow(source):
    Image.new("RGB", (4, 4)).save(source.storage_root() / "in/old.bmp")
    error = refused(image.image_info, source, path="in/old.bmp")
    assert error.code == "PERMISSION_DENIED" and "BMP image" in error.message
    error = refused(image.image_transform, source, path="in/source.png", steps=[], output="out/x.tiff")
    assert error.code == "PERMISSION_DENIED" and "TIFF" in error.message


def test_cant_grow_an_image_past_the_canvas_size(source):
    override(source, "canvas_max_width", 300)
    override(source, "canvas_max_height", 100)
    error = refused(image.image_transform, source, path="in/source.png", steps=[{"type": "rotate", "degrees": 30}], output="out/x.png")
    assert error.code == "QUOTA_EXCEEDED" and "rotate" in error.message


def test_cant_run_past_the_deadline(acme):
    ctx = context_for(acme)
    Image.frombytes("RGB", (1000, 1000), os.urandom(1000 * 1000 * 3)).save(acme.storage_root() / "big.png")
    slow = dataclasses.replace(ctx, deadline=time.time() + 0.3)
    error = refused(image.image_transform, acme, slow, path="big.png", steps=[{"type": "blur", "radius": 40}] * 50, output="out.png")
    assert error.code == "TIMEOUT" and "ran past the call's time limit" in error.message
    assert not (acme.storage_root() / "out.png").exists()


def test_cant_write_past_the_storage_quota(source):
    used = sum(f.stat().st_size for f in source.storage_root().rglob("*") if f.is_file())
    override(source, "max_file_size", used + 100)
    override(source, "storage_quota", used + 100)
    error = refused(image.image_transform, source, path="in/source.png", steps=[], output="out/copy.png")
    assert error.code == "QUOTA_EXCEEDED" and "quota" in error.message


def test_cant_read_outside_the_tenants_storage(source, make_tenant):
    other = make_tenant("globex")
    canvas_png(other, "secret.png")
    error = refused(image.image_info, source, path="../globex/secret.png")
    assert error.code == "INVALID_ARGUMENT" and "globex" not in error.message.replace("../globex/secret.png", "")


def test_cant_use_images_on_a_profile_without_them(make_tenant):
    basic = make_tenant("plain", "Basic")
    assert refused(image.image_info, basic, path="a.png").code == "PERMISSION_DENIED"


@pytest.mark.parametrize("steps, message", [
    ([{"type": "explode"}], "must have a type"),
    ([{"type": "resize"}], "needs a width, a height or both"),
    ([{"type": "resize", "width": 100, "fit": "stretch"}], "fit is contain, cover or fill"),
    ([{"type": "blur", "radius": 1000}], "radius must be from 0 to 250"),
    ([{"type": "crop", "x": 150, "y": 0, "width": 100, "height": 10}], "reaches past the 200x100 image"),
    ([{"type": "rotate", "degrees": 90, "expand": False}], "unknown field 'expand'"),
])
def test_cant_give_malformed_steps(source, steps, message):
    error = refused(image.image_transform, source, path="in/source.png", steps=steps, output="out/x.png")
    assert error.code == "INVALID_ARGUMENT" and message in error.message


# -- from a block ---------------------------------------------------------------------------

BLOCK = """
export default async () => {
  const c = await symposium.canvas.createCanvas(100, 100);
  await symposium.canvas.draw(c.canvasId, [{ type: 'fillRect', x: 0, y: 0, width: 100, height: 100, style: '#ffffff' }]);
  await symposium.canvas.drawImage(c.canvasId, 'in/source.png', 0, 0, 100, 50);
  const png = await symposium.canvas.exportImage(c.canvasId, 'png');
  await symposium.writeFile('out/composed.png', png.data);
  const info = await symposium.image.info('out/composed.png');
  const made = await symposium.image.transform('out/composed.png', [{ type: 'resize', width: 50 }, 'grayscale'],
    { output: 'out/thumb.jpg', quality: 90 });
  return { info: info.data, made: made.data };
};
"""


def test_a_block_composes_and_transforms_pictures(run_block, source, dispatch_path):
    run = run_block(source, BLOCK)
    assert run.status == "succeeded", run.error
    assert run.result["info"]["width"] == 100 and run.result["info"]["format"] == "png"
    assert run.result["made"] | {"size": 0} == {"format": "jpeg", "width": 50, "height": 50, "mode": "L", "frames": 1,
                                                 "path": "out/thumb.jpg", "size": 0}
    composed = Image.open(source.storage_root() / "out/composed.png").convert("RGBA")
    assert composed.getpixel((25, 25)) == RED and composed.getpixel((75, 25)) == BLUE
    assert composed.getpixel((50, 75)) == (255, 255, 255, 255)
    thumb = Image.open(source.storage_root() / "out/thumb.jpg")
    assert thumb.mode == "L" and abs(thumb.getpixel((10, 10)) - 76) < 6
