"""Encoding a rendered canvas: every format through Pillow.

Skia encodes PNG, JPEG and WebP but not GIF, BMP or TIFF; Pillow encodes all six. One
encoder for every format keeps the options (quality, alpha handling) in one place and
the bytes of a PNG the same whichever profile asked for it.

Formats without alpha follow the HTML rule for canvas.toDataURL: the image is
composited onto opaque black, which is exactly the canvas's premultiplied colour, so
they take the premultiplied pixels as they are. That is JPEG, and BMP: Pillow writes
32-bit BMPs without the header that marks the fourth byte as alpha, so most readers
would drop it anyway; a 24-bit BMP on black is what they would show. PNG, WebP and TIFF
keep the alpha channel; GIF keeps fully transparent pixels transparent and composites
partly transparent ones onto black, as it cannot store partial alpha.
"""

import io

import numpy

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
    import skia

    alpha_type = skia.kPremul_AlphaType if premultiplied else skia.kUnpremul_AlphaType
    return image.toarray(colorType=skia.kRGBA_8888_ColorType, alphaType=alpha_type)


def encode(image, fmt, quality=None):
    """The bytes of a rendered canvas (a skia.Image) in the format."""
    from PIL import Image

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

    rgba = Image.frombuffer("RGBA", size, pixels(image), "raw", "RGBA", 0, 1)
    if fmt == "png":
        # Level 6 is zlib's default: within a few percent of the smallest size at a
        # fraction of level 9's time.
        rgba.save(out, "PNG", compress_level=6)
    elif fmt == "webp":
        quality = limits.DEFAULT_WEBP_QUALITY if quality is None else quality
        rgba.save(out, "WEBP", quality=_percent(quality), method=4)
    elif fmt == "tiff":
        rgba.save(out, "TIFF", compression="tiff_adobe_deflate")
    return out.getvalue()


def _percent(quality):
    # A block gives quality as toDataURL does, 0 to 1; Pillow takes 0 to 100.
    return max(1, min(100, round(quality * 100)))
