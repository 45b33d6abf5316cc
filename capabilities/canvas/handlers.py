"""The three canvas operations: createCanvas, draw (which also answers measureText ops)
and exportImage.

A canvas is its size plus the validated list of its ops, kept in the run state
(store.py); nothing is drawn until it is exported, when the ops are run on a Skia
surface and the pixels encoded. Every limit is checked before the work it bounds: a
canvas's size before anything is stored, an op list's length before a single op is
validated, an export's memory before a single pixel is allocated.

decide() in tenants.policy has checked the profile already (canvas allowed, size,
export format); these handlers check again themselves, as they must never trust args.
"""

import base64
import contextlib
import gc
import math
import threading
from functools import partial

import skia

from capabilities.base import CapabilityError
from capabilities.memory_budget import process_budget
from capabilities.canvas import encode, limits, store
from capabilities.canvas.fonts import DEFAULT_FONT, parse_font
from capabilities.canvas.ops import TEXT_PROPERTIES, OpValidator
from capabilities.canvas.render import Renderer
from capabilities.canvas.text import WHITESPACE, TextShaper
from capabilities.canvas.sources import decode_image, image_size, tenant_path


# Validating and rendering stop at the call's deadline, or, for a call given none (a
# worker called directly), at the run's time limit: a render no run can wait for is
# work for nobody.
CHECKING_TOO_LONG = "Checking the operations took longer than the call may wait; it was stopped."
MEASURING_TOO_LONG = "Measuring the text took longer than the call may wait; it was stopped."
RENDERING_TOO_LONG = "Rendering the canvas took longer than the call may wait; it was stopped."


def _deadline_check(ctx, message):
    return partial(ctx.bounded(ctx.policy.time_limit_seconds).check_deadline, message)


# Far above any profile's limit (32768 at most); larger sizes are refused without being
# printed in the message.
MAX_SHOWN_DIMENSION = 10**6


# Exports in flight that asked for the cyclic garbage collector to wait (see below).
_collection_pause_lock = threading.Lock()
_collection_pausers = 0
_collection_was_enabled = True


@contextlib.contextmanager
def collection_paused():
    """Holds Python's cyclic garbage collector back while an export runs.

    Loading a canvas allocates tens of thousands of op tuples and dicts at once, which
    sets off the collector's full passes over every object in the process: measured,
    160 ms of a 10,000-op export went to a pass that found nothing, because the ops hold
    no reference cycles and are freed by reference counting when the export ends (so
    the collector is not merely put off: the allocations it counts are gone by then).
    The pause lasts one export at most, which its deadline bounds; concurrent exports
    share it, and a collector someone else had disabled stays disabled."""
    global _collection_pausers, _collection_was_enabled
    with _collection_pause_lock:
        if _collection_pausers == 0:
            _collection_was_enabled = gc.isenabled()
            gc.disable()
        _collection_pausers += 1
    try:
        yield
    finally:
        with _collection_pause_lock:
            _collection_pausers -= 1
            if _collection_pausers == 0 and _collection_was_enabled:
                gc.enable()


def _require_canvas_profile(ctx):
    if not ctx.policy.canvas_max_width or not ctx.policy.canvas_max_height:
        raise CapabilityError("PERMISSION_DENIED", f"The {ctx.policy.profile_name or 'tenant'} profile does not allow canvases.")


def _shown(value):
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    return "(not a string)"


def _find_canvas(ctx, args):
    canvas_id = args.get("canvasId")
    if not isinstance(canvas_id, str) or not canvas_id:
        raise CapabilityError("INVALID_ARGUMENT", "A canvasId (the id createCanvas returned) is required.")
    found = store.find(ctx, canvas_id)
    if found is None:
        raise CapabilityError("NOT_FOUND", f"No canvas {_shown(canvas_id)} in this run.")
    return found


def _dimension(name, value, policy):
    whole = f"The canvas {name} must be a whole number of pixels, at least 1"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CapabilityError("INVALID_ARGUMENT", f"{whole}.")
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise CapabilityError("INVALID_ARGUMENT", f"{whole} (got {value:g}).")
    if value < 1:
        raise CapabilityError("INVALID_ARGUMENT", f"{whole} (got {value:g}).")
    if value > MAX_SHOWN_DIMENSION:
        # JSON integers have no size limit; a number this large is not worth printing.
        raise CapabilityError(
            "QUOTA_EXCEEDED",
            f"The canvas {name} is larger than this tenant's limit of {policy.canvas_max_width}x{policy.canvas_max_height}.",
        )
    return int(value)


def create_canvas(ctx, args):
    """{width, height} -> a new transparent canvas of the run."""
    _require_canvas_profile(ctx)
    policy = ctx.policy
    width = _dimension("width", args.get("width"), policy)
    height = _dimension("height", args.get("height"), policy)
    if width > policy.canvas_max_width or height > policy.canvas_max_height:
        raise CapabilityError(
            "QUOTA_EXCEEDED",
            f"A {width}x{height} canvas is larger than this tenant's limit of "
            f"{policy.canvas_max_width}x{policy.canvas_max_height}.",
        )
    number = store.reserve_canvas_number(ctx)
    if number is None:
        raise CapabilityError(
            "QUOTA_EXCEEDED", f"This run has created {policy.canvas_max_per_run} canvases, the most one run may create."
        )
    canvas_id = store.create(ctx, number, width, height)
    canvas = {"canvasId": canvas_id, "width": width, "height": height}
    return {"data": canvas, **canvas}


def draw(ctx, args):
    """{canvasId, ops} -> the ops validated and appended to the canvas."""
    _require_canvas_profile(ctx)
    number, meta = _find_canvas(ctx, args)
    ops = args.get("ops")
    if not isinstance(ops, list):
        raise CapabilityError("INVALID_ARGUMENT", "ops must be an array of drawing operations.")
    max_ops = ctx.policy.canvas_max_ops
    # Counted before a single op is looked at: a list of ten million ops is refused
    # here, in constant time, and nothing of it is validated or stored.
    if len(ops) > max_ops:
        raise CapabilityError(
            "QUOTA_EXCEEDED", f"This draw call has {len(ops)} operations; a canvas holds at most {max_ops}."
        )
    current = store.op_count(ctx, number)
    if current + len(ops) > max_ops:
        raise CapabilityError(
            "QUOTA_EXCEEDED",
            f"The canvas holds {current} operations; {len(ops)} more would pass its limit of {max_ops}.",
        )
    if not ops:
        return {"data": {"canvasId": meta["id"], "opCount": current}, "canvasId": meta["id"], "opCount": current}

    checked_files = set()

    def check_file(index, path):
        # The path's syntax is refused here with the op's index; the file is looked at
        # now too, so a missing or unreadable image is reported by draw, not export.
        tenant_path(ctx, index, path)
        if path not in checked_files:
            image_size(ctx, index, path)
            checked_files.add(path)

    def find_canvas(canvas_id):
        found = store.find(ctx, canvas_id)
        return None if found is None else (found[0], store.op_count(ctx, found[0]))

    validator = OpValidator(number, find_canvas, check_file)
    normalized, text_chars = validator.validate(ops, _deadline_check(ctx, CHECKING_TOO_LONG))
    metrics = None
    if any(entry[0] == "measureText" for entry in normalized):
        metrics = _measure(ctx, number, normalized)
        normalized = [entry for entry in normalized if entry[0] != "measureText"]
    if not normalized:
        return _drawn(meta["id"], current, metrics)
    stored_text = store.text_count(ctx, number)
    if stored_text + text_chars > limits.MAX_TEXT_PER_CANVAS:
        raise CapabilityError(
            "QUOTA_EXCEEDED",
            f"The canvas holds {stored_text} characters of text; {text_chars} more would pass its limit "
            f"of {limits.MAX_TEXT_PER_CANVAS}.",
        )
    start = store.reserve(ctx, number, len(normalized), text_chars, max_ops)
    if start is None:
        # Another draw call on the same canvas took the room in the meantime.
        raise CapabilityError("QUOTA_EXCEEDED", f"The canvas has no room left for {len(ops)} more operations.")
    store.append(ctx, number, start, normalized)
    return _drawn(meta["id"], start + len(normalized), metrics)


def _drawn(canvas_id, count, metrics):
    data = {"canvasId": canvas_id, "opCount": count}
    if metrics is not None:
        data["metrics"] = metrics
    return {"data": data, "canvasId": canvas_id, "opCount": count}


def _measure(ctx, number, normalized):
    """The TextMetrics of each measureText op among the validated ops, in order: the
    text state (font, textAlign, textBaseline, with save and restore) is replayed from
    the canvas's stored ops through the new ones, as a browser's context would hold it."""
    measured = sum(len(args[0]) for kind, args, _ in normalized if kind == "measureText")
    if measured > limits.MAX_TEXT_PER_CANVAS:
        # Measuring costs what drawing costs (shaping), so it is bounded the same way.
        raise CapabilityError(
            "QUOTA_EXCEEDED",
            f"This draw call measures {measured} characters of text; one call may measure at most "
            f"{limits.MAX_TEXT_PER_CANVAS}.",
        )
    check_deadline = _deadline_check(ctx, MEASURING_TOO_LONG)
    state = {"font": parse_font(DEFAULT_FONT).as_tuple(), "textAlign": "start", "textBaseline": "alphabetic"}
    stack, ignored_saves, shaper, metrics = [], 0, TextShaper(), []
    for index, (kind, args, overrides) in enumerate([*store.load_ops(ctx, number), *normalized]):
        if index % limits.DEADLINE_CHECK_EVERY == 0:
            check_deadline()
        if kind == "set":
            state.update((name, value) for name, value in overrides.items() if name in TEXT_PROPERTIES)
        elif kind == "save":
            # As the renderer does: past the depth limit a save is ignored, and so is
            # its restore.
            if len(stack) < limits.MAX_SAVE_DEPTH:
                stack.append(dict(state))
            else:
                ignored_saves += 1
        elif kind == "restore":
            if ignored_saves:
                ignored_saves -= 1
            elif stack:
                state = stack.pop()
        elif kind == "measureText":
            current = {**state, **(overrides or {})}
            line = shaper.line(args[0].translate(WHITESPACE), current["font"])
            metrics.append(line.measure(current["textAlign"], current["textBaseline"]))
    return metrics


def _format(ctx, args):
    requested = args.get("format", "png")
    if requested is None:
        requested = "png"
    fmt = encode.canonical_format(requested)
    if fmt is None:
        raise CapabilityError(
            "INVALID_ARGUMENT",
            f"Unknown export format {_shown(requested)} (formats: {', '.join(encode.FORMATS)}).",
        )
    if fmt not in ctx.policy.canvas_formats:
        raise CapabilityError(
            "PERMISSION_DENIED",
            f"Export format {fmt!r} is not available to this tenant (available: {', '.join(ctx.policy.canvas_formats)}).",
        )
    quality = args.get("quality")
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 0 <= quality <= 1
    ):
        raise CapabilityError("INVALID_ARGUMENT", "quality is a number from 0 to 1, as in canvas.toDataURL.")
    return fmt, quality


class ExportPlan:
    """Everything one export will render, gathered before any pixel is allocated: the
    canvas's ops, the snapshots of other canvases its drawImage ops use (and theirs),
    and the image files they draw; with the memory all of it will take."""

    def __init__(self, ctx, number, meta):
        self.ctx = ctx
        self.sizes = {number: (meta["width"], meta["height"])}
        self.snapshots = {}  # (number, opCount or None) -> ops, dependencies first
        self.files = {}  # path -> (index of the first op drawing it, width, height)
        self.self_drawing = set()  # canvases that draw themselves
        self.visiting = set()
        self.root = (number, None)
        self.visit(self.root)

    def visit(self, key):
        if key in self.snapshots or key in self.visiting:
            # Already planned, or a cycle (possible only between draw calls racing on
            # two canvases): the inner reference is drawn as nothing.
            return
        if len(self.snapshots) + len(self.visiting) > limits.MAX_CANVAS_SOURCES:
            raise CapabilityError(
                "QUOTA_EXCEEDED",
                f"The export draws more than {limits.MAX_CANVAS_SOURCES} other canvases; draw fewer canvases into it.",
            )
        self.visiting.add(key)
        number, upto = key
        if number not in self.sizes:
            meta = store.meta(self.ctx, number)
            if meta is None:
                self.visiting.discard(key)
                return
            self.sizes[number] = (meta["width"], meta["height"])
        ops = store.load_ops(self.ctx, number, upto)
        for index, (kind, args, _) in enumerate(ops):
            if kind != "drawImage":
                continue
            source = args[0]
            if source[0] == "file":
                if source[1] not in self.files:
                    if len(self.files) >= limits.MAX_FILE_SOURCES:
                        raise CapabilityError(
                            "QUOTA_EXCEEDED", f"The export draws more than {limits.MAX_FILE_SOURCES} image files."
                        )
                    size = image_size(self.ctx, index, source[1])
                    self.files[source[1]] = (index, *size)
            elif source[2] is None:
                self.self_drawing.add(number)
            else:
                self.visit((source[1], source[2]))
        self.visiting.discard(key)
        self.snapshots[key] = ops

    def memory(self):
        width, height = self.sizes[self.root[0]]
        total = width * height * 4 * limits.RENDER_COPIES
        for key in self.snapshots:
            if key != self.root:
                total += self.sizes[key[0]][0] * self.sizes[key[0]][1] * 4
        for number in self.self_drawing:
            total += self.sizes[number][0] * self.sizes[number][1] * 4
        for _, file_width, file_height in self.files.values():
            total += file_width * file_height * 4 * 2
        return total


def export_image(ctx, args):
    """{canvasId, format, quality?} -> the canvas rendered and encoded."""
    with collection_paused():
        return _export_image(ctx, args)


def _export_image(ctx, args):
    _require_canvas_profile(ctx)
    number, meta = _find_canvas(ctx, args)
    fmt, quality = _format(ctx, args)
    plan = ExportPlan(ctx, number, meta)
    needed = plan.memory()
    if needed > limits.RENDER_MEMORY_LIMIT:
        raise CapabilityError(
            "QUOTA_EXCEEDED",
            f"Rendering this canvas would need about {needed // 2**20} MB; one export may use "
            f"{limits.RENDER_MEMORY_LIMIT // 2**20} MB. Draw fewer or smaller images into it.",
        )
    # The estimate is also reserved from the process's budget for memory-heavy work, so
    # that exports side by side cannot add up to more than the server can hold: an
    # export that does not fit waits its turn (bounded), then is refused.
    with process_budget().reserve(needed, ctx, "Exporting this canvas"):
        return _render_and_encode(ctx, meta, fmt, quality, plan)


def _render_and_encode(ctx, meta, fmt, quality, plan):
    check_deadline = _deadline_check(ctx, RENDERING_TOO_LONG)
    images = {}
    for path, (index, file_width, file_height) in plan.files.items():
        pixels = decode_image(ctx, index, path, (file_width, file_height))
        images[path] = skia.Image.fromarray(pixels, colorType=skia.kRGBA_8888_ColorType)
        del pixels
    for key, ops in plan.snapshots.items():
        if key != plan.root:
            width, height = plan.sizes[key[0]]
            images[key] = Renderer(width, height, images, check_deadline).run(ops)
    image = Renderer(meta["width"], meta["height"], images, check_deadline).run(plan.snapshots[plan.root])
    del images, plan
    data = encode.encode(image, fmt, quality)
    return {
        "data": data,
        "canvasId": meta["id"],
        "format": fmt,
        "mimeType": encode.FORMATS[fmt][1],
        "width": meta["width"],
        "height": meta["height"],
        "size": len(data),
    }


def image_event(envelope):
    """What whoever watches the run sees of an export: the image itself, when it is small
    enough to send inline."""
    image = envelope.get("data")
    if not isinstance(image, (bytes, bytearray)) or len(image) > limits.IMAGE_EVENT_MAX:
        return None
    return {"event": "image", "mime": envelope.get("mimeType") or "image/png", "data": base64.b64encode(image).decode(),
            "width": envelope.get("width"), "height": envelope.get("height")}
