"""Encoding a rendered canvas: PNG written here, every other format through Pillow.

Skia encodes PNG, JPEG and WebP but not GIF, BMP or TIFF; Pillow encodes all six, and
encodes JPEG, WebP, GIF, BMP and TIFF here. PNG, the format nearly every export asks
for, is written by this module: Pillow's PNG encoder tries five filters on every row
and deflates at zlib level 6, which took 0.5 s of a 1920x1080 export (more than
rendering its 10,000 ops). Canvas pictures are flat colours and anti-aliased edges:
the Sub filter (each byte minus the same channel of the pixel to its left) turns flat
runs into zeros, and zlib's run-length strategy compresses those zeros as well as a full
deflate does, at a sixth of the time (0.08 s, and 3.15 MB against 3.01 MB for that
picture). Photographs drawn onto a canvas compress less well this way (run-length
matching finds no repeats across rows); a canvas is a drawing surface first.

Formats without alpha follow the HTML rule for canvas.toDataURL: the image is
composited onto opaque black, which is exactly the canvas's premultiplied colour, so
they take the premultiplied pixels as they are. That is JPEG, and BMP: Pillow writes
32-bit BMPs without the header that marks the fourth byte as alpha, so most readers
would drop it anyway; a 24-bit BMP on black is what they would show. PNG, WebP and TIFF
keep the alpha channel; GIF keeps fully transparent pixels transparent and composites
partly transparent ones onto black, as it cannot store partial alpha.
"""

import io
import struct
import zlib

import numpy
import skia
from PIL import Image

from capabilities.canvas import limits

FORMATS = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
    "bmp": ("BMP", "image/bmp"),
    "tiff": ("TIFF", "image/tiff"),
}
FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}


def canonical_format(value):
    """'png', 'jpeg', ... for a format name a block may give, or None."""
    if not isinstance(value, str):
        return None
    value = value.lower()
    value = FORMAT_ALIASES.get(value, value)
    return value if value in FORMATS else None


def pixels(image, premultiplied=False):
    """The RGBA pixels of a skia.Image as a numpy array: unpremultiplied (the colours a
    PNG stores), or premultiplied (the colours composited onto black)."""
    alpha_type = skia.kPremul_AlphaType if premultiplied else skia.kUnpremul_AlphaType
    return image.toarray(colorType=skia.kRGBA_8888_ColorType, alphaType=alpha_type)


def encode(image, fmt, quality=None):
    """The bytes of a rendered canvas (a skia.Image) in the format."""
    size = (image.width(), image.height())
    out = io.BytesIO()
    if fmt in ("jpeg", "bmp", "gif"):
        premultiplied = pixels(image, premultiplied=True)
        # Dropping the alpha of premultiplied pixels leaves them composited onto black.
        rgb = Image.frombuffer("RGBA", size, premultiplied, "raw", "RGBA", 0, 1).convert("RGB")
        if fmt == "jpeg":
            quality = limits.DEFAULT_JPEG_QUALITY if quality is None else quality
            rgb.save(out, "JPEG", quality=_percent(quality))
        elif fmt == "bmp":
            rgb.save(out, "BMP")
        else:
            transparent = Image.fromarray(numpy.multiply(premultiplied[..., 3] == 0, 255, dtype=numpy.uint8), "L")
            del premultiplied
            paletted = rgb.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            # Index 255 is kept free for the fully transparent pixels.
            paletted.paste(255, mask=transparent)
            paletted.save(out, "GIF", transparency=255)
        return out.getvalue()

    if fmt == "png":
        return png(pixels(image))
    rgba = Image.frombuffer("RGBA", size, pixels(image), "raw", "RGBA", 0, 1)
    if fmt == "webp":
        quality = limits.DEFAULT_WEBP_QUALITY if quality is None else quality
        rgba.save(out, "WEBP", quality=_percent(quality), method=4)
    elif fmt == "tiff":
        rgba.save(out, "TIFF", compression="tiff_adobe_deflate")
    return out.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Rows filtered and compressed at a time: the filtered copy of a band is small (a 7680
# pixels wide canvas: 2 MB), so the PNG costs the unpremultiplied pixels and its output,
# not a third full copy of the picture.
PNG_BAND_ROWS = 64
PNG_FILTER_SUB = 1


def png(rgba):
    """A PNG (8-bit RGBA, not interlaced) of an unpremultiplied H x W x 4 uint8 array:
    every row Sub-filtered, the rows deflated with zlib's run-length strategy, one IDAT
    chunk per band of rows."""
    height, width, _ = rgba.shape
    rows = rgba.reshape(height, width * 4)
    chunks = [PNG_SIGNATURE, _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))]
    compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    band = numpy.empty((min(PNG_BAND_ROWS, height), width * 4 + 1), numpy.uint8)
    for top in range(0, height, PNG_BAND_ROWS):
        source = rows[top : top + PNG_BAND_ROWS]
        filtered = band[: len(source)]
        filtered[:, 0] = PNG_FILTER_SUB
        filtered[:, 1:5] = source[:, :4]
        # uint8 arithmetic wraps modulo 256, which is exactly the PNG filter's.
        numpy.subtract(source[:, 4:], source[:, :-4], out=filtered[:, 5:])
        data = compressor.compress(filtered)
        if data:
            chunks.append(_png_chunk(b"IDAT", data))
    chunks.append(_png_chunk(b"IDAT", compressor.flush()))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"".join(chunks)


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _percent(quality):
    # A block gives quality as toDataURL does, 0 to 1; Pillow takes 0 to 100.
    return max(1, min(100, round(quality * 100)))
