"""The canvas `font` property: the CSS font shorthand, mapped onto the bundled fonts.

A canvas here has exactly the fonts in fonts/ (DejaVu Sans, Sans Bold, Serif, Sans Mono),
so text renders the same on every server whatever is installed there. A family list is
read the way a browser that has only these fonts would read it: the first family that
names one of them (a generic family, or a well-known family of the same kind, such as
Arial for sans-serif or Courier New for monospace) wins, and anything else falls back to
sans-serif. Bold weights use the bold face where there is one and synthetic emboldening
otherwise; italic and oblique are synthetic (a skew), as in Chrome for a font without an
italic face.
"""

import functools
import re
from dataclasses import dataclass
from pathlib import Path

FONTS_DIR = Path(__file__).resolve().parent / "fonts"
FONT_FILES = {
    ("sans", False): "DejaVuSans.ttf",
    ("sans", True): "DejaVuSans-Bold.ttf",
    ("serif", False): "DejaVuSerif.ttf",
    ("mono", False): "DejaVuSansMono.ttf",
}
DEFAULT_FONT = "10px sans-serif"
# A browser resolves relative font sizes against the canvas element's font size; for a
# canvas with no element that is the canvas default, 10px.
DEFAULT_FONT_SIZE = 10.0
# Glyphs are drawn as paths above a few hundred pixels, so a big font costs little, but a
# font larger than any canvas is a mistake (or an attempt to make rendering slow).
MAX_FONT_SIZE = 10000.0
MAX_FONT_LENGTH = 200

ABSOLUTE_SIZES = {
    "xx-small": 9.0, "x-small": 10.0, "small": 13.0, "medium": 16.0,
    "large": 18.0, "x-large": 24.0, "xx-large": 32.0, "xxx-large": 48.0,
    "larger": DEFAULT_FONT_SIZE * 1.2, "smaller": DEFAULT_FONT_SIZE / 1.2,
}
UNITS_IN_PX = {
    "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4, "q": 96 / 101.6,
    "em": DEFAULT_FONT_SIZE, "rem": DEFAULT_FONT_SIZE, "%": DEFAULT_FONT_SIZE / 100,
}
STYLES = {"normal", "italic", "oblique"}
VARIANTS = {"normal", "small-caps"}
WEIGHTS = {"normal": 400, "bold": 700, "bolder": 700, "lighter": 100}
STRETCHES = {
    "normal", "ultra-condensed", "extra-condensed", "condensed", "semi-condensed",
    "semi-expanded", "expanded", "extra-expanded", "ultra-expanded",
}
SYSTEM_FONTS = {"caption", "icon", "menu", "message-box", "small-caption", "status-bar"}

GENERIC_FAMILIES = {
    "sans-serif": "sans", "system-ui": "sans", "ui-sans-serif": "sans", "cursive": "sans",
    "fantasy": "sans", "emoji": "sans", "math": "sans", "fangsong": "serif",
    "serif": "serif", "ui-serif": "serif", "monospace": "mono", "ui-monospace": "mono",
}
KNOWN_FAMILIES = {
    "sans": {
        "dejavu sans", "arial", "helvetica", "helvetica neue", "verdana", "tahoma", "segoe ui",
        "roboto", "open sans", "liberation sans", "noto sans", "ubuntu", "calibri", "trebuchet ms",
        "inter", "lato", "bitstream vera sans",
    },
    "serif": {
        "dejavu serif", "times", "times new roman", "georgia", "garamond", "cambria", "palatino",
        "book antiqua", "liberation serif", "noto serif", "bitstream vera serif",
    },
    "mono": {
        "dejavu sans mono", "courier", "courier new", "consolas", "menlo", "monaco",
        "lucida console", "liberation mono", "noto sans mono", "source code pro", "fira code",
        "bitstream vera sans mono",
    },
}
SIZE = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(px|pt|pc|in|cm|mm|q|em|rem|%)", re.IGNORECASE)


class FontError(ValueError):
    """The string is not a CSS font this canvas accepts; the message says why."""


@dataclass(frozen=True)
class FontSpec:
    family: str  # "sans", "serif" or "mono": one of the bundled fonts
    size: float  # in CSS pixels
    bold: bool
    italic: bool


def parse_font(value):
    """The FontSpec of a CSS font shorthand such as 'bold 16px Arial, sans-serif'."""
    if not isinstance(value, str):
        raise FontError("must be a CSS font string such as '16px sans-serif'")
    if len(value) > MAX_FONT_LENGTH:
        raise FontError(f"is {len(value)} characters long; a font is at most {MAX_FONT_LENGTH}")
    text = value.strip()
    if text.lower() in SYSTEM_FONTS:
        raise FontError(f"{value!r}: system fonts are not available; give a size and a family")
    tokens = text.split(None)
    bold, italic, seen = False, False, 0
    # Up to four of style, variant, weight and stretch come first, in any order.
    while tokens and seen < 4:
        word = tokens[0].lower()
        if word in STYLES:
            italic = italic or word != "normal"
        elif word in WEIGHTS:
            bold = bold or WEIGHTS[word] >= 600
        elif word.isdigit() and 1 <= int(word) <= 1000:
            bold = bold or int(word) >= 600
        elif word not in VARIANTS and word not in STRETCHES:
            break
        tokens.pop(0)
        seen += 1
    if not tokens:
        raise FontError(f"{value!r} has no font size (such as 16px)")
    size_token = tokens.pop(0)
    size_text, slash, line_height = size_token.partition("/")
    if slash and not line_height:
        if not tokens:
            raise FontError(f"{value!r} has a '/' but no line height")
        tokens.pop(0)
    elif not slash and tokens and tokens[0].startswith("/"):
        # "16px / 1.2 serif": the line height stands apart; a canvas ignores it.
        if tokens[0] == "/":
            tokens.pop(0)
            if not tokens:
                raise FontError(f"{value!r} has a '/' but no line height")
        tokens.pop(0)
    size = _size(size_text, value)
    family = _family(" ".join(tokens), value)
    return FontSpec(family=family, size=size, bold=bold, italic=italic)


def _size(text, whole):
    lowered = text.lower()
    if lowered in ABSOLUTE_SIZES:
        return ABSOLUTE_SIZES[lowered]
    match = SIZE.fullmatch(text)
    if not match:
        raise FontError(f"{whole!r} has no font size (such as 16px) before the family")
    size = float(match.group(1)) * UNITS_IN_PX[match.group(2).lower()]
    if size != size or size < 0:
        raise FontError(f"{whole!r}: a font size cannot be negative")
    if size > MAX_FONT_SIZE:
        raise FontError(f"{whole!r}: the largest font size is {MAX_FONT_SIZE:g}px")
    return size


def _family(text, whole):
    if not text.strip():
        raise FontError(f"{whole!r} has no font family (such as sans-serif)")
    for name in text.split(","):
        name = name.strip()
        if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
            name = name[1:-1]
            generic = None  # a quoted "serif" is a family named serif, not the generic
        else:
            generic = GENERIC_FAMILIES.get(name.lower())
        if not name:
            raise FontError(f"{whole!r} has an empty family name")
        if generic:
            return generic
        lowered = " ".join(name.lower().split())
        for kind, names in KNOWN_FAMILIES.items():
            if lowered in names:
                return kind
    return "sans"


@functools.lru_cache(maxsize=None)
def typeface(family, bold):
    """The bundled typeface for a family and weight: the bold face where there is one,
    else the regular one (the text layout then emboldens it)."""
    import skia

    filename = FONT_FILES.get((family, bold)) or FONT_FILES[(family, False)]
    # An empty font manager loads the file as it is; the default one would start up
    # fontconfig and read the server's font configuration, which the canvas never uses.
    face = skia.FontMgr.New_Custom_Empty().makeFromFile(str(FONTS_DIR / filename), 0)
    if face is None:
        raise RuntimeError(f"bundled font {filename} did not load")
    return face
