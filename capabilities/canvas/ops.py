"""The drawing operations a block may send, and their validation.

An op is an object `{type: ..., ...fields}` named after the HTML canvas 2D context:
methods take their arguments as named fields (`{type: 'arc', x, y, radius, startAngle,
endAngle, counterclockwise}`), and properties are set either one at a time (`{type:
'lineWidth', value: 3}`) or several at once (`{type: 'set', lineWidth: 3, fillStyle:
'red'}`); both last until changed, and save/restore keep and bring them back.

A drawing op (fillRect, strokeRect, fill, stroke, fillText, strokeText, drawImage) may
also carry property fields, which apply to that op alone, as if it were wrapped in
save() ... restore(): `{type: 'stroke', style: '#f00', lineWidth: 2}`. `style` is the
seed's shorthand for the colour of that op: the fill colour of a fill op, the stroke
colour of a stroke op.

Validation is complete before anything is stored: every field of every op is checked,
and the first problem is reported with the op's index and the field's name. Each op
becomes a compact tuple `(type, args, overrides)` of plain values that the renderer runs.
"""

import math

from capabilities.base import CapabilityError
from capabilities.canvas import limits
from capabilities.canvas.colors import ColorError, parse_color
from capabilities.canvas.fonts import FontError, parse_font


class FieldError(ValueError):
    """A field's value is wrong; the message says how, without the field's name."""


def _describe(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (bytes, bytearray)):
        return "binary data"
    return type(value).__name__


def number(value):
    # The magnitude is compared first: JSON integers have no size limit, and one too
    # large for a float would overflow math.isfinite().
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise FieldError(f"must be a finite number (got {_describe(value)})")
    if abs(value) > limits.MAX_COORDINATE:
        raise FieldError(f"must be at most {limits.MAX_COORDINATE:g} in magnitude")
    return float(value)


def non_negative(value):
    value = number(value)
    if value < 0:
        raise FieldError(f"cannot be negative (got {value:g})")
    return value


def positive(value):
    value = number(value)
    if value <= 0:
        raise FieldError(f"must be greater than 0 (got {value:g})")
    return value


def unit_interval(value):
    value = number(value)
    if not 0 <= value <= 1:
        raise FieldError(f"must be between 0 and 1 (got {value:g})")
    return value


def boolean(value):
    if not isinstance(value, bool):
        raise FieldError(f"must be true or false (got {_describe(value)})")
    return value


def text(value):
    if not isinstance(value, str):
        raise FieldError(f"must be a string (got {_describe(value)})")
    if len(value) > limits.MAX_TEXT_LENGTH:
        raise FieldError(f"is {len(value)} characters long; the limit is {limits.MAX_TEXT_LENGTH}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows "\ud800") has no glyph; a browser draws it as
        # U+FFFD, the replacement character, and so does this canvas.
        value = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value


def color(value):
    try:
        return parse_color(value)
    except ColorError as e:
        raise FieldError(str(e)) from None


def font(value):
    """The font as the drawing state keeps it, or None for a shorthand a browser would
    ignore (the op then leaves the font as it was)."""
    try:
        spec = parse_font(value)
    except FontError as e:
        raise FieldError(str(e)) from None
    return None if spec is None else spec.as_tuple()


def one_of(*choices):
    def parse(value):
        if not isinstance(value, str) or value not in choices:
            shown = repr(value[:40]) if isinstance(value, str) else _describe(value)
            raise FieldError(f"must be one of {', '.join(choices)} (got {shown})")
        return value

    return parse


# The drawing state, as the 2D context's properties. Defaults are the browser's.
PROPERTIES = {
    "fillStyle": color,
    "strokeStyle": color,
    "lineWidth": positive,
    "lineCap": one_of("butt", "round", "square"),
    "lineJoin": one_of("miter", "round", "bevel"),
    "miterLimit": positive,
    "globalAlpha": unit_interval,
    "font": font,
    "textAlign": one_of("start", "end", "left", "right", "center"),
    "textBaseline": one_of("top", "hanging", "middle", "alphabetic", "ideographic", "bottom"),
}

# What measureText depends on.
TEXT_PROPERTIES = ("font", "textAlign", "textBaseline")

RECT = [("x", number), ("y", number), ("width", number), ("height", number)]
MATRIX = [(name, number) for name in "abcdef"]

# type -> (required fields, optional fields with defaults, what `style` sets or None).
# A drawing op's `style` and property fields are its overrides; ops without a style
# entry take no property fields.
METHODS = {
    "fillRect": (RECT, {}, "fillStyle"),
    "strokeRect": (RECT, {}, "strokeStyle"),
    "clearRect": (RECT, {}, None),
    "rect": (RECT, {}, None),
    "beginPath": ([], {}, None),
    "closePath": ([], {}, None),
    "moveTo": ([("x", number), ("y", number)], {}, None),
    "lineTo": ([("x", number), ("y", number)], {}, None),
    "arc": (
        [("x", number), ("y", number), ("radius", non_negative), ("startAngle", number), ("endAngle", number)],
        {"counterclockwise": (boolean, False)},
        None,
    ),
    "arcTo": (
        [("x1", number), ("y1", number), ("x2", number), ("y2", number), ("radius", non_negative)],
        {},
        None,
    ),
    "ellipse": (
        [
            ("x", number), ("y", number), ("radiusX", non_negative), ("radiusY", non_negative),
            ("startAngle", number), ("endAngle", number),
        ],
        {"rotation": (number, 0.0), "counterclockwise": (boolean, False)},
        None,
    ),
    "quadraticCurveTo": ([("cpx", number), ("cpy", number), ("x", number), ("y", number)], {}, None),
    "bezierCurveTo": (
        [("cp1x", number), ("cp1y", number), ("cp2x", number), ("cp2y", number), ("x", number), ("y", number)],
        {},
        None,
    ),
    "fill": ([], {"fillRule": (one_of("nonzero", "evenodd"), "nonzero")}, "fillStyle"),
    "stroke": ([], {}, "strokeStyle"),
    "fillText": ([("text", text), ("x", number), ("y", number)], {"maxWidth": (number, None)}, "fillStyle"),
    "strokeText": ([("text", text), ("x", number), ("y", number)], {"maxWidth": (number, None)}, "strokeStyle"),
    "save": ([], {}, None),
    "restore": ([], {}, None),
    "translate": ([("x", number), ("y", number)], {}, None),
    "rotate": ([("angle", number)], {}, None),
    "scale": ([("x", number), ("y", number)], {}, None),
    "setTransform": (MATRIX, {}, None),
    "transform": (MATRIX, {}, None),
    "resetTransform": ([], {}, None),
}
# Accepted spellings of the same field: the HTML spec's own name for arc()'s flag.
ALIASES = {"anticlockwise": "counterclockwise"}
DRAW_IMAGE_GEOMETRY = ("sx", "sy", "sw", "sh", "dx", "dy", "dw", "dh")
DRAW_IMAGE_SHORT = {"x": "dx", "y": "dy", "width": "dw", "height": "dh"}


def _field_name(name):
    return repr(name[:40]) if isinstance(name, str) else repr(str(name)[:40])


def _fail(index, message, field=None):
    where = f"ops[{index}].{field}" if field else f"ops[{index}]"
    return CapabilityError("INVALID_ARGUMENT", f"{where}: {message}")


def _parse(index, field, parser, value):
    try:
        return parser(value)
    except FieldError as e:
        raise _fail(index, str(e), field) from None


def _set_properties(parsed):
    # A property parsed as None (an invalid font shorthand) is left as it was.
    return {name: value for name, value in parsed.items() if value is not None}


def _overrides(index, op, fields, style_property):
    """The property fields of a drawing op (and its `style`), parsed."""
    overrides = {}
    for name in fields:
        if name == "style" and style_property:
            if style_property in op:
                raise _fail(index, f"gives both style and {style_property}; style is its shorthand", "style")
            overrides[style_property] = _parse(index, "style", color, op[name])
        elif name in PROPERTIES:
            value = _parse(index, name, PROPERTIES[name], op[name])
            if value is not None:
                overrides[name] = value
        else:
            raise _fail(index, f"unknown field {_field_name(name)} for {op['type']}")
    return overrides or None


class OpValidator:
    """Validates op lists for one canvas.

    `find_canvas(canvas_id)` gives the (number, opCount) of another canvas of the run, or
    None; `check_file(index, path)` raises CapabilityError when the path cannot be an
    image source. Both come from the handler, which knows the run and the tenant.
    """

    def __init__(self, canvas_number, find_canvas, check_file):
        self.canvas_number = canvas_number
        self.find_canvas = find_canvas
        self.check_file = check_file

    def validate(self, ops, deadline_check=None):
        """The normalized ops and the number of text characters they carry."""
        normalized, text_chars = [], 0
        for index, op in enumerate(ops):
            if deadline_check and index % limits.DEADLINE_CHECK_EVERY == 0:
                deadline_check()
            entry = self.validate_one(index, op)
            if entry[0] in ("fillText", "strokeText"):
                text_chars += len(entry[1][0])
            normalized.append(entry)
        return normalized, text_chars

    def validate_one(self, index, op):
        if not isinstance(op, dict):
            raise _fail(index, f"must be an object with a type (got {_describe(op)})")
        kind = op.get("type")
        if not isinstance(kind, str):
            raise _fail(index, "has no type (such as 'fillRect')")
        if kind in PROPERTIES:
            extra = [name for name in op if name not in ("type", "value")]
            if extra:
                raise _fail(index, f"unknown field {_field_name(extra[0])} for {kind} (set it with value)")
            if "value" not in op:
                raise _fail(index, f"needs a value, as in {{type: '{kind}', value: ...}}")
            return ("set", None, _set_properties({kind: _parse(index, "value", PROPERTIES[kind], op["value"])}))
        if kind == "set":
            fields = [name for name in op if name != "type"]
            if not fields:
                raise _fail(index, "sets no property (give fields such as fillStyle or lineWidth)")
            for name in fields:
                if name not in PROPERTIES:
                    raise _fail(index, f"{_field_name(name)} is not a property that set can change")
            return ("set", None, _set_properties({name: _parse(index, name, PROPERTIES[name], op[name]) for name in fields}))
        if kind == "drawImage":
            return self.validate_draw_image(index, op)
        if kind == "measureText":
            return self.validate_measure_text(index, op)
        method = METHODS.get(kind)
        if method is None:
            raise _fail(index, f"unknown operation {kind[:40]!r}")
        required, optional, style_property = method
        args, used = [], {"type"}
        for name, parser in required:
            if name not in op:
                raise _fail(index, f"{kind} needs {name}", name)
            args.append(_parse(index, name, parser, op[name]))
            used.add(name)
        for name, (parser, default) in optional.items():
            spelled = [n for n in (name, *[a for a, canon in ALIASES.items() if canon == name]) if n in op]
            if len(spelled) > 1:
                raise _fail(index, f"gives both {spelled[0]} and {spelled[1]}")
            value = op[spelled[0]] if spelled else None
            args.append(default if value is None else _parse(index, spelled[0] if spelled else name, parser, value))
            used.update(spelled)
        rest = [name for name in op if name not in used]
        if style_property is None:
            if rest:
                raise _fail(index, f"unknown field {_field_name(rest[0])} for {kind}")
            return (kind, tuple(args), None)
        return (kind, tuple(args), _overrides(index, op, rest, style_property))

    def validate_measure_text(self, index, op):
        """measureText draws nothing: the draw call answers it with the text's metrics
        in the font, textAlign and textBaseline current at that op (or given on it)."""
        if "text" not in op:
            raise _fail(index, "measureText needs text", "text")
        value = _parse(index, "text", text, op["text"])
        rest = [name for name in op if name not in ("type", "text")]
        for name in rest:
            if name not in TEXT_PROPERTIES:
                raise _fail(index, f"unknown field {_field_name(name)} for measureText")
        return ("measureText", (value,), _overrides(index, op, rest, None))

    def validate_draw_image(self, index, op):
        sources = [name for name in ("path", "canvasId") if name in op]
        if len(sources) != 1:
            raise _fail(index, "drawImage needs exactly one source: path (a tenant file) or canvasId")
        if sources[0] == "path":
            path = op["path"]
            self.check_file(index, path)
            source = ("file", path)
        else:
            canvas_id = op["canvasId"]
            found = self.find_canvas(canvas_id) if isinstance(canvas_id, str) else None
            if found is None:
                shown = repr(canvas_id[:40]) if isinstance(canvas_id, str) else _describe(canvas_id)
                raise CapabilityError("NOT_FOUND", f"ops[{index}].canvasId: no canvas {shown} in this run")
            number_, op_count = found
            # The source is the other canvas as it is now (its first op_count ops), as a
            # browser's drawImage copies the pixels at the time of the call. The canvas
            # being drawn on is taken as it is at this very op when it is rendered.
            source = ("canvas", number_, None if number_ == self.canvas_number else op_count)

        geometry, used = {}, {"type", sources[0]}
        for name in op:
            if name in used:
                continue
            canonical = DRAW_IMAGE_SHORT.get(name, name)
            if canonical in DRAW_IMAGE_GEOMETRY:
                if canonical in geometry:
                    raise _fail(index, f"gives both {canonical} and {name}")
                geometry[canonical] = _parse(index, name, number, op[name])
                used.add(name)
        present = set(geometry)
        if present == {"dx", "dy"}:
            src, dst = None, (geometry["dx"], geometry["dy"], None, None)
        elif present == {"dx", "dy", "dw", "dh"}:
            src, dst = None, tuple(geometry[n] for n in ("dx", "dy", "dw", "dh"))
        elif present == set(DRAW_IMAGE_GEOMETRY):
            src = tuple(geometry[n] for n in ("sx", "sy", "sw", "sh"))
            dst = tuple(geometry[n] for n in ("dx", "dy", "dw", "dh"))
        else:
            raise _fail(
                index,
                "drawImage takes dx, dy; or dx, dy, dw, dh; or sx, sy, sw, sh, dx, dy, dw, dh "
                f"(got {', '.join(sorted(present)) or 'none of them'})",
            )
        rest = [name for name in op if name not in used]
        overrides = _overrides(index, op, rest, None) if rest else None
        return ("drawImage", (source, src, dst), overrides)
