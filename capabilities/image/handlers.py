"""image.info and image.transform on tenant files, with Pillow.

SECURITY: this module decodes files that untrusted blocks wrote. Files are read and
written with the files capability's own handlers (tenant paths, no links, its size
limits, the storage quota). Only the plain raster decoders of limits.PILLOW_FORMATS that
the profile allows are tried. The picture's size is read from the file's header and
compared with the profile's canvas size before one pixel is decoded, so a small file that
inflates to gigabytes (a decompression bomb) is refused for the cost of its header; a
truncated or corrupt file fails with a clear error, never with a half-decoded picture.
Metadata (EXIF with GPS, ICC profiles, comments) is dropped unless the block keeps it.
"""

import io
import math
import time

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from capabilities import files
from capabilities.base import CapabilityError
from capabilities.image import limits
from capabilities.memory_budget import process_budget

ORIENTATION_TAG = 0x0112


def _profile(ctx):
    return ctx.policy.profile_name or "tenant's"


def _check_enabled(ctx):
    if not ctx.policy.image_formats:
        raise CapabilityError("PERMISSION_DENIED", f"The {_profile(ctx)} profile does not allow image processing.")


def _check_deadline(ctx):
    if ctx.deadline is not None and time.time() >= ctx.deadline:
        raise CapabilityError("TIMEOUT", "The image transform ran past the call's time limit and was stopped.")


def _unsupported(path):
    known = ", ".join(limits.PILLOW_FORMATS)
    return CapabilityError("INVALID_ARGUMENT", f"'{path}' is not an image in a supported format ({known}).")


def _open(ctx, path):
    """The image at a tenant path, opened (its header read, nothing decoded), and its
    profile format name. The format must be one the profile allows."""
    if not isinstance(path, str):
        raise CapabilityError("INVALID_ARGUMENT", "The path of an image (a string) is required.")
    read = files.read_file(ctx, {"path": path, "encoding": "binary"})
    shown = read["path"]
    try:
        image = Image.open(io.BytesIO(read["data"]), formats=list(limits.PILLOW_FORMATS.values()))
    except Image.DecompressionBombError:
        # Pillow's own ceiling (far above any profile's) met while reading the header.
        raise _bomb(ctx, shown, None) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise _unsupported(shown) from None
    name = next(n for n, pillow in limits.PILLOW_FORMATS.items() if pillow == image.format)
    if name not in ctx.policy.image_formats:
        image.close()
        raise CapabilityError(
            "PERMISSION_DENIED", f"'{shown}' is a {name.upper()} image; this tenant may process {', '.join(ctx.policy.image_formats)}.")
    return image, name, shown, read["size"]


def _max_pixels(ctx):
    return ctx.policy.canvas_max_width * ctx.policy.canvas_max_height


def _bomb(ctx, shown, size):
    claimed = f"{size[0]}x{size[1]} pixels" if size else "more pixels than the platform decodes"
    return CapabilityError(
        "QUOTA_EXCEEDED",
        f"'{shown}' is {claimed}; this tenant's images are at most {_max_pixels(ctx)} pixels "
        f"({ctx.policy.canvas_max_width}x{ctx.policy.canvas_max_height}). It was not decoded.")


def _frame_count(image):
    return getattr(image, "n_frames", 1)


def _orientation(image):
    try:
        return image.getexif().get(ORIENTATION_TAG)
    except Exception:
        return None  # a malformed EXIF block is no orientation


def _describe(image, name, frames):
    return {"format": name, "width": image.width, "height": image.height, "mode": image.mode, "frames": frames}


def image_info(ctx, args):
    _check_enabled(ctx)
    image, name, shown, size = _open(ctx, args.get("path"))
    with image:
        frames = _frame_count(image)
        info = _describe(image, name, frames)
        info.update(orientation=_orientation(image), animated=frames > 1, size=size, path=shown)
    return {"data": info}


# -- steps -------------------------------------------------------------------------------


def _number(step, name, value, low=None, high=None, integer=False, required=True):
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CapabilityError("INVALID_ARGUMENT", f"{step}: {name} must be a finite number.")
    if integer and value != int(value):
        raise CapabilityError("INVALID_ARGUMENT", f"{step}: {name} must be a whole number.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise CapabilityError("INVALID_ARGUMENT", f"{step}: {name} must be from {low:g} to {high:g}.")
    return int(value) if integer else float(value)


STEP_FIELDS = {
    "resize": {"width", "height", "fit"},
    "crop": {"x", "y", "width", "height"},
    "rotate": {"degrees"},
    "flip": {"direction"},
    "autoOrient": set(),
    "grayscale": set(),
    "blur": {"radius"},
    "sharpen": set(),
    "thumbnail": {"size"},
}


def parse_steps(ctx, steps):
    """The steps as (name, fields), every field checked before anything is decoded."""
    if not isinstance(steps, list):
        raise CapabilityError("INVALID_ARGUMENT", "steps must be a list such as [{type: 'resize', width: 200}].")
    if len(steps) > limits.MAX_STEPS:
        raise CapabilityError("INVALID_ARGUMENT", f"A transform has at most {limits.MAX_STEPS} steps.")
    side = max(ctx.policy.canvas_max_width, ctx.policy.canvas_max_height)
    parsed = []
    for index, step in enumerate(steps):
        where = f"steps[{index}]"
        if isinstance(step, str):
            step = {"type": step}
        if not isinstance(step, dict) or step.get("type") not in STEP_FIELDS:
            raise CapabilityError("INVALID_ARGUMENT", f"{where} must have a type: one of {', '.join(STEP_FIELDS)}.")
        kind = step["type"]
        where = f"{where} ({kind})"
        unknown = set(step) - STEP_FIELDS[kind] - {"type"}
        if unknown:
            raise CapabilityError("INVALID_ARGUMENT", f"{where}: unknown field {sorted(unknown)[0]!r}.")
        if kind == "resize":
            width = _number(where, "width", step.get("width"), 1, side, True, required=False)
            height = _number(where, "height", step.get("height"), 1, side, True, required=False)
            if width is None and height is None:
                raise CapabilityError("INVALID_ARGUMENT", f"{where} needs a width, a height or both.")
            fit = step.get("fit", "contain")
            if fit not in ("contain", "cover", "fill"):
                raise CapabilityError("INVALID_ARGUMENT", f"{where}: fit is contain, cover or fill.")
            fields = {"width": width, "height": height, "fit": fit}
        elif kind == "crop":
            fields = {n: _number(where, n, step.get(n), 0 if n in "xy" else 1, 2**31, True) for n in ("x", "y", "width", "height")}
        elif kind == "rotate":
            fields = {"degrees": _number(where, "degrees", step.get("degrees"), -3600, 3600)}
        elif kind == "flip":
            direction = step.get("direction", "horizontal")
            if direction not in ("horizontal", "vertical"):
                raise CapabilityError("INVALID_ARGUMENT", f"{where}: direction is horizontal or vertical.")
            fields = {"direction": direction}
        elif kind == "blur":
            fields = {"radius": _number(where, "radius", step.get("radius", 2), 0, limits.MAX_BLUR_RADIUS)}
        elif kind == "thumbnail":
            fields = {"size": _number(where, "size", step.get("size"), 1, side, True)}
        else:
            fields = {}
        parsed.append((kind, fields, where))
    return parsed


def _resize(image, width, height, fit):
    if width is None or height is None:
        # One side given: the other follows the picture's proportions.
        ratio = (width / image.width) if width is not None else (height / image.height)
        size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        return image.resize(size, Image.LANCZOS)
    if fit == "fill":
        return image.resize((width, height), Image.LANCZOS)
    if fit == "cover":
        return ImageOps.fit(image, (width, height), Image.LANCZOS)
    return ImageOps.contain(image, (width, height), Image.LANCZOS)


def apply_step(image, kind, fields, where):
    if kind == "resize":
        return _resize(image, fields["width"], fields["height"], fields["fit"])
    if kind == "crop":
        x, y, w, h = fields["x"], fields["y"], fields["width"], fields["height"]
        if x + w > image.width or y + h > image.height:
            raise CapabilityError(
                "INVALID_ARGUMENT", f"{where}: the box {w}x{h} at ({x}, {y}) reaches past the {image.width}x{image.height} image.")
        return image.crop((x, y, x + w, y + h))
    if kind == "rotate":
        # Degrees clockwise, as CSS's rotate() and photo viewers turn a picture; Pillow
        # turns counterclockwise, hence the sign.
        degrees = fields["degrees"] % 360
        exact = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
        if degrees == 0:
            return image
        if degrees in exact:
            return image.transpose(exact[degrees])
        return image.rotate(-degrees, resample=Image.BICUBIC, expand=True)
    if kind == "flip":
        return ImageOps.mirror(image) if fields["direction"] == "horizontal" else ImageOps.flip(image)
    if kind == "autoOrient":
        return ImageOps.exif_transpose(image)
    if kind == "grayscale":
        return image.convert("LA" if image.mode == "RGBA" else "L")
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(fields["radius"]))
    if kind == "sharpen":
        return image.filter(ImageFilter.SHARPEN)
    if kind == "thumbnail":
        copy = image.copy()
        copy.thumbnail((fields["size"], fields["size"]), Image.LANCZOS)
        return copy
    raise AssertionError(kind)


def _normalized(frame):
    """The frame in a mode every step handles: L, LA, RGB or RGBA."""
    if frame.mode in ("L", "LA", "RGB", "RGBA"):
        return frame
    has_alpha = frame.mode in ("PA", "La") or "transparency" in frame.info or frame.mode.endswith("A")
    return frame.convert("RGBA" if has_alpha else "RGB")


def _for_format(frame, name):
    if name in ("jpeg", "bmp"):
        # No alpha channel in these formats: composited onto black, as the canvas does.
        if frame.mode in ("RGBA", "LA"):
            background = Image.new("RGB" if frame.mode == "RGBA" else "L", frame.size, 0)
            background.paste(frame, mask=frame.getchannel("A"))
            return background
    return frame


def _output_format(ctx, args, output, input_name):
    name = args.get("format")
    if name is None:
        dot = output.rfind(".")
        name = limits.EXTENSIONS.get(output[dot:].lower()) if dot > 0 else None
        name = name or input_name
    if not isinstance(name, str):
        raise CapabilityError("INVALID_ARGUMENT", "The format must be a string such as 'png'.")
    name = {"jpg": "jpeg", "tif": "tiff"}.get(name.lower(), name.lower())
    if name not in limits.PILLOW_FORMATS:
        raise CapabilityError("INVALID_ARGUMENT", f"Unknown output format {name[:20]!r} (known: {', '.join(limits.PILLOW_FORMATS)}).")
    if name not in ctx.policy.image_formats:
        raise CapabilityError("PERMISSION_DENIED", f"This tenant may not write {name.upper()} images (allowed: {', '.join(ctx.policy.image_formats)}).")
    return name


def image_transform(ctx, args):
    _check_enabled(ctx)
    output = args.get("output")
    if not isinstance(output, str) or not output:
        raise CapabilityError("INVALID_ARGUMENT", "An output path (a string) is required: transform never changes its source.")
    steps = parse_steps(ctx, args.get("steps", []))
    quality = args.get("quality")
    if quality is not None:
        quality = _number("quality", "quality", quality, 1, 100, True)
    keep = args.get("keepMetadata", False)
    if not isinstance(keep, bool):
        raise CapabilityError("INVALID_ARGUMENT", "keepMetadata must be true or false.")

    image, input_name, shown, _ = _open(ctx, args.get("path"))
    with image:
        name = _output_format(ctx, args, output, input_name)
        width, height = image.size
        # The decompression-bomb check: the header's size, before anything is decoded.
        if width * height > _max_pixels(ctx):
            raise _bomb(ctx, shown, (width, height))
        frames = _frame_count(image)
        if frames > ctx.policy.image_max_frames:
            raise CapabilityError(
                "QUOTA_EXCEEDED", f"'{shown}' has {frames} frames; this tenant's images have at most {ctx.policy.image_max_frames}.")
        # The pages of a TIFF may each have their own size: only animations keep frames.
        animated = frames > 1 and name in limits.ANIMATED_FORMATS and input_name in limits.ANIMATED_FORMATS
        if animated and frames * width * height > limits.MAX_ANIMATION_PIXELS:
            raise CapabilityError(
                "QUOTA_EXCEEDED", f"'{shown}' has {frames} frames of {width}x{height}; animations up to "
                f"{limits.MAX_ANIMATION_PIXELS} pixels in all can be transformed.")
        # Decoding starts here: the estimate is reserved from the process's budget first
        # (it waits its turn behind other memory-heavy calls, bounded, then is refused).
        kept = frames if animated else 1
        estimate = kept * largest_picture((width, height), steps, _max_pixels(ctx)) * limits.TRANSFORM_BYTES_PER_PIXEL
        with process_budget().reserve(estimate, ctx, "Transforming this image"):
            return _transform(ctx, image, steps, name, input_name, shown, output, quality, keep, frames, animated)


def largest_picture(size, steps, max_pixels):
    """The most pixels a frame has at any point of the steps, from its source's size (a
    step past max_pixels is refused as it happens, so no more is ever held)."""
    width, height = size
    largest = width * height
    for kind, fields, _ in steps:
        if kind == "resize":
            w, h = fields["width"], fields["height"]
            if w is None or h is None:
                ratio = (w / width) if w is not None else (h / height)
                w, h = math.ceil(width * ratio), math.ceil(height * ratio)
            width, height = w, h
        elif kind == "crop":
            width, height = min(width, fields["width"]), min(height, fields["height"])
        elif kind == "rotate":
            degrees = fields["degrees"] % 360
            if degrees in (90, 270):
                width, height = height, width
            elif degrees:
                turn = math.radians(degrees)
                width, height = (math.ceil(abs(width * math.cos(turn)) + abs(height * math.sin(turn))) + 1,
                                 math.ceil(abs(width * math.sin(turn)) + abs(height * math.cos(turn))) + 1)
        elif kind == "autoOrient":
            width = height = max(width, height)  # a quarter turn, maybe: either way round
        elif kind == "thumbnail":
            width, height = min(width, fields["size"]), min(height, fields["size"])
        largest = max(largest, min(width * height, max_pixels))
    return largest


def _transform(ctx, image, steps, name, input_name, shown, output, quality, keep, frames, animated):
    """Decode, transform and write, once image_transform has checked all it can from the
    header and reserved the memory. The source is closed as soon as its frames are read."""
    with image:
        exif = image.getexif() if keep else None
        icc = image.info.get("icc_profile") if keep else None
        loop = image.info.get("loop", 0)
        results, durations = [], []
        for number in range(frames if animated else 1):
            _check_deadline(ctx)
            try:
                image.seek(number)
                durations.append(image.info.get("duration", 100))
                frame = _normalized(image.copy() if number else image.convert(image.mode))
            except (OSError, ValueError, SyntaxError, EOFError):
                raise CapabilityError("INVALID_ARGUMENT", f"'{shown}' is truncated or corrupt; it could not be decoded.") from None
            for kind, fields, where in steps:
                _check_deadline(ctx)
                if kind == "autoOrient":
                    frame.info["exif"] = image.info.get("exif", b"") if number == 0 else b""
                frame = _normalized(apply_step(frame, kind, fields, where))
                if frame.width * frame.height > _max_pixels(ctx):
                    raise CapabilityError(
                        "QUOTA_EXCEEDED", f"{where} makes a {frame.width}x{frame.height} image; this tenant's images are at most "
                        f"{_max_pixels(ctx)} pixels.")
            results.append(_for_format(frame, name))
        if keep and any(kind == "autoOrient" for kind, _, _ in steps) and exif is not None:
            exif[ORIENTATION_TAG] = 1  # the pixels are upright now

    _check_deadline(ctx)
    first = results[0]
    # A fresh info dict: nothing of the source's metadata is written unless kept.
    for frame in results:
        frame.info = {}
    options = {"format": limits.PILLOW_FORMATS[name]}
    if name in limits.DEFAULT_QUALITY:
        options["quality"] = quality or limits.DEFAULT_QUALITY[name]
    if name == "tiff":
        options["compression"] = "tiff_deflate"
    if keep:
        if exif is not None and len(exif) and name in ("jpeg", "webp", "png", "tiff"):
            options["exif"] = exif.tobytes()
        if icc and name in ("jpeg", "webp", "png", "tiff"):
            options["icc_profile"] = icc
    if len(results) > 1:
        options.update(save_all=True, append_images=results[1:], duration=durations, loop=loop)
    buffer = io.BytesIO()
    try:
        first.save(buffer, **options)
    except (OSError, ValueError) as e:
        raise CapabilityError("INVALID_ARGUMENT", f"The image cannot be written as {name.upper()}: {str(e)[:100]}.") from None
    data = buffer.getvalue()
    written = files.write_file(ctx, {"path": output, "data": data})
    info = {"format": name, "width": first.width, "height": first.height, "mode": first.mode, "frames": len(results),
            "path": written["path"], "size": written["size"]}
    return {"data": info, "path": written["path"], "size": written["size"]}
