"""The canvas `font` property: the CSS font shorthand, parsed as a browser parses it, and
mapped onto the bundled fonts.

A canvas here has exactly the fonts in fonts/, so text renders the same on every server
whatever is installed there: Liberation Sans, Serif and Mono (regular, bold, italic and
bold italic), the fonts metric-compatible with Arial, Times New Roman and Courier New
that browsers on Linux draw `sans-serif`, `serif` and `monospace` with, and DejaVu Sans
(regular and bold), Serif and Sans Mono for the families named so and for `system-ui`.

A family list is read the way Chromium on Linux reads it with these fonts installed: the
first family that names one of them wins: a generic family, a bundled font's own name,
or a name fontconfig gives a metric-compatible substitute for (Arial, Helvetica and
Arimo are Liberation Sans; Times, Times New Roman and Tinos are Liberation Serif;
Courier, Courier New and Cousine are Liberation Mono). Any other name is a font this
canvas does not have, and is passed over for the next one; when none is left, the text
is drawn in the browser's default font, Liberation Serif (Times New Roman's metrics),
as a browser does. The generic families a browser maps to fonts that are not here
(`cursive`, `fantasy`, `emoji`, `math`, `fangsong`, `ui-*`) are passed over the same way.

Weights follow CSS font matching over the faces a family has: above 500 takes the bold
face, and a family without one is emboldened from 600 on (as in Chrome); `italic` and
`oblique` take the italic face, or a synthetic slant where there is none. `small-caps`
is drawn as Chrome synthesizes it: lowercase letters as capitals at 70% of the size.

A shorthand a browser would reject (no size, no family, a property given twice, a
negative size, `inherit`, stray tokens) is not an error: as `ctx.font = '...'` does in a
browser, it is ignored and the previous font stays (parse_font returns None).
"""

import re
from dataclasses import dataclass
from pathlib import Path

FONTS_DIR = Path(__file__).resolve().parent / "fonts"

# family -> {(bold, italic): file}. A face not listed is synthesized from the regular one.
FACES = {
    "liberation-sans": {
        (False, False): "LiberationSans-Regular.ttf", (True, False): "LiberationSans-Bold.ttf",
        (False, True): "LiberationSans-Italic.ttf", (True, True): "LiberationSans-BoldItalic.ttf",
    },
    "liberation-serif": {
        (False, False): "LiberationSerif-Regular.ttf", (True, False): "LiberationSerif-Bold.ttf",
        (False, True): "LiberationSerif-Italic.ttf", (True, True): "LiberationSerif-BoldItalic.ttf",
    },
    "liberation-mono": {
        (False, False): "LiberationMono-Regular.ttf", (True, False): "LiberationMono-Bold.ttf",
        (False, True): "LiberationMono-Italic.ttf", (True, True): "LiberationMono-BoldItalic.ttf",
    },
    "dejavu-sans": {(False, False): "DejaVuSans.ttf", (True, False): "DejaVuSans-Bold.ttf"},
    "dejavu-serif": {(False, False): "DejaVuSerif.ttf"},
    "dejavu-mono": {(False, False): "DejaVuSansMono.ttf"},
}
DEFAULT_FONT = "10px sans-serif"
# What a browser draws when no family of the list is available: its default font,
# Times New Roman (here its metric twin, Liberation Serif).
FALLBACK_FAMILY = "liberation-serif"
# A browser resolves relative font sizes against the canvas element's font size; for a
# canvas with no element that is the canvas default, 10px.
DEFAULT_FONT_SIZE = 10.0
# Glyphs are drawn as paths above a few hundred pixels, so a big font costs little, but a
# font larger than any canvas is a mistake (or an attempt to make rendering slow).
MAX_FONT_SIZE = 10000.0
MAX_FONT_LENGTH = 200
# CSS font matching with a regular (400) and a bold (700) face: a weight above 500 takes
# the bold face. Chrome emboldens a face that has no bold from 600 on.
BOLD_FACE_ABOVE = 500
SYNTHETIC_BOLD_FROM = 600
# Chrome's synthetic small capitals: lowercase letters as capitals at this part of the size.
SMALL_CAPS_SCALE = 0.7

ABSOLUTE_SIZES = {
    "xx-small": 9.0, "x-small": 10.0, "small": 13.0, "medium": 16.0,
    "large": 18.0, "x-large": 24.0, "xx-large": 32.0, "xxx-large": 48.0,
    # Relative to the parent's size, which for a canvas is the default 10px.
    "larger": DEFAULT_FONT_SIZE * 1.2, "smaller": DEFAULT_FONT_SIZE / 1.2,
}
# Sizes relative to the parent font (em, %, ex, ch) take the canvas default, 10px; rem
# takes the root's, a browser's default 16px. ex and ch are the x-height and the width of
# "0" of the parent font as Chromium measures them here (10px in fontconfig's sans-serif:
# 6px and 6.3623px). Viewport units (vw, vh, ...) have no viewport to refer to on a
# server, so a font using them is invalid.
UNITS_IN_PX = {
    "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4, "q": 96 / 101.6,
    "rem": 16.0,
}
RELATIVE_UNITS_IN_PX = {"em": DEFAULT_FONT_SIZE, "ex": 6.0, "ch": 6.3623046875, "%": DEFAULT_FONT_SIZE / 100}
# Browsers size the generic `monospace` alone against their fixed-width default (13px
# instead of 16px): its keyword sizes are these, and its relative sizes scaled by 13/16.
MONOSPACE_KEYWORD_SIZES = {
    "xx-small": 9.0, "x-small": 9.0, "small": 10.0, "medium": 13.0,
    "large": 16.0, "x-large": 20.0, "xx-large": 26.0, "xxx-large": 40.0,
}
MONOSPACE_SCALE = 13 / 16
ANGLE_UNITS_IN_DEGREES = {"deg": 1.0, "grad": 0.9, "rad": 57.29577951308232, "turn": 360.0}
STYLES = {"italic", "oblique"}
VARIANTS = {"small-caps"}
WEIGHTS = {"bold": 700, "bolder": 700, "lighter": 100}  # bolder/lighter of the default 400
STRETCHES = {
    "ultra-condensed", "extra-condensed", "condensed", "semi-condensed",
    "semi-expanded", "expanded", "extra-expanded", "ultra-expanded",
}
# The whole shorthand may be one of these; headless Chromium draws them as 16px Arial.
SYSTEM_FONTS = {"caption", "icon", "menu", "message-box", "small-caption", "status-bar"}
SYSTEM_FONT = ("liberation-sans", 16.0)
CSS_WIDE_KEYWORDS = {"inherit", "initial", "unset", "revert", "revert-layer"}

# Generic families: the bundled family, or None for one whose browser fonts are not here.
GENERIC_FAMILIES = {
    "sans-serif": "liberation-sans", "serif": "liberation-serif", "monospace": "liberation-mono",
    "system-ui": "dejavu-sans",
    "cursive": None, "fantasy": None, "emoji": None, "math": None, "fangsong": None,
    "ui-sans-serif": None, "ui-serif": None, "ui-monospace": None, "ui-rounded": None,
}
NAMED_FAMILIES = {
    "liberation sans": "liberation-sans", "arial": "liberation-sans", "helvetica": "liberation-sans",
    "arimo": "liberation-sans",
    "liberation serif": "liberation-serif", "times new roman": "liberation-serif", "times": "liberation-serif",
    "tinos": "liberation-serif",
    "liberation mono": "liberation-mono", "courier new": "liberation-mono", "courier": "liberation-mono",
    "cousine": "liberation-mono",
    "dejavu sans": "dejavu-sans", "dejavu serif": "dejavu-serif", "dejavu sans mono": "dejavu-mono",
}

# CSS tokens, as far as a font shorthand has them. An escape is a backslash and one
# character, or up to six hex digits and an optional space.
_ESCAPE = r"\\(?:[0-9a-fA-F]{1,6}[ \t\n]?|[^0-9a-fA-F\n])"
_NAME_CHAR = rf"(?:[A-Za-z0-9_-]|[^\x00-\x7f]|{_ESCAPE})"
_IDENT = rf"(?:--|-?(?:[A-Za-z_]|[^\x00-\x7f]|{_ESCAPE})){_NAME_CHAR}*"
TOKEN = re.compile(
    rf"""
    (?P<space>[ \t\n\r\f]+)
  | (?P<string>"(?:[^"\\\n]|\\.)*(?:"|$)|'(?:[^'\\\n]|\\.)*(?:'|$))
  | (?P<number>[+-]?(?:\d+\.\d+|\d+|\.\d+)(?:[eE][+-]?\d+)?)(?P<unit>%|{_IDENT})?
  | (?P<ident>{_IDENT})
  | (?P<comma>,)
  | (?P<slash>/)
    """,
    re.VERBOSE | re.DOTALL,
)


class FontError(ValueError):
    """The value cannot be a canvas font at all (not a string, over a limit); the
    message says why. A string that is merely not a valid shorthand is ignored instead."""


@dataclass(frozen=True)
class FontSpec:
    family: str  # a key of FACES
    size: float  # in CSS pixels
    weight: int = 400  # 1 to 1000
    italic: bool = False
    small_caps: bool = False

    def as_tuple(self):
        """How a font is kept in the drawing state and in stored ops: a plain tuple."""
        return (self.family, self.size, self.weight, self.italic, self.small_caps)

    def face(self):
        """(bold, italic) of the bundled face to draw with, and (synthetic bold,
        synthetic italic) for what that face lacks."""
        faces = FACES[self.family]
        bold = self.weight > BOLD_FACE_ABOVE and (True, False) in faces
        italic = self.italic and (bold, True) in faces
        fake_bold = not bold and self.weight >= SYNTHETIC_BOLD_FROM
        return (bold, italic), (fake_bold, self.italic and not italic)


@dataclass(frozen=True)
class Token:
    kind: str  # space, string, number, ident, comma, slash
    text: str  # the value: unescaped for strings and idents, the digits for numbers
    unit: str = ""  # a number's unit, lowercased ("%" for a percentage)


def _unescape(text):
    def replace(match):
        body = match.group(0)[1:]
        if re.fullmatch(r"[0-9a-fA-F]{1,6}[ \t\n]?", body):
            code = int(body.strip(), 16)
            return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"
        return body

    return re.sub(_ESCAPE, replace, text)


def tokenize(text):
    """The shorthand's tokens (whitespace dropped), or None if it has a character no
    font shorthand can hold (such as ';' or '!')."""
    tokens, position = [], 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            return None
        position = match.end()
        kind = match.lastgroup if match.lastgroup != "unit" else "number"
        if kind == "space":
            continue
        if kind == "string":
            body = match.group("string")
            closed = len(body) >= 2 and body[-1] == body[0] and not body.endswith("\\" + body[0])
            tokens.append(Token("string", _unescape(body[1:-1] if closed else body[1:])))
        elif kind == "number":
            tokens.append(Token("number", match.group("number"), (match.group("unit") or "").lower()))
        elif kind == "ident":
            tokens.append(Token("ident", _unescape(match.group("ident"))))
        else:
            tokens.append(Token(kind, match.group(0)))
    return tokens


def parse_font(value):
    """The FontSpec of a CSS font shorthand such as 'bold 16px Arial, sans-serif', or
    None when a browser would ignore the shorthand (and keep its previous font)."""
    if not isinstance(value, str):
        raise FontError("must be a CSS font string such as '16px sans-serif'")
    if len(value) > MAX_FONT_LENGTH:
        raise FontError(f"is {len(value)} characters long; a font is at most {MAX_FONT_LENGTH}")
    tokens = tokenize(value)
    if not tokens:
        return None
    if len(tokens) == 1 and tokens[0].kind == "ident" and tokens[0].text.lower() in SYSTEM_FONTS:
        family, size = SYSTEM_FONT
        return FontSpec(family, size)
    position, seen, italic, small_caps, weight = 0, set(), False, False, 400
    # Up to four of style, variant, weight and stretch come first, in any order, each at
    # most once; `normal` stands for any of them that is not given otherwise.
    normals = 0
    while position < len(tokens) and len(seen) + normals < 4:
        token = tokens[position]
        word = token.text.lower() if token.kind == "ident" else None
        if word == "normal":
            normals += 1
        elif word in STYLES and "style" not in seen:
            seen.add("style")
            italic = True
            if word == "oblique" and position + 1 < len(tokens) and _angle(tokens[position + 1]) is not None:
                if not -90 <= _angle(tokens[position + 1]) <= 90:
                    return None
                position += 1
        elif word in VARIANTS and "variant" not in seen:
            seen.add("variant")
            small_caps = True
        elif word in WEIGHTS and "weight" not in seen:
            seen.add("weight")
            weight = WEIGHTS[word]
        elif word in STRETCHES and "stretch" not in seen:
            seen.add("stretch")  # the bundled families have one width only
        elif token.kind == "number" and not token.unit and "weight" not in seen and 1 <= float(token.text) <= 1000:
            seen.add("weight")
            weight = int(float(token.text))
        elif word in STYLES or word in VARIANTS or word in WEIGHTS or word in STRETCHES:
            return None  # the same property twice
        else:
            break
        position += 1
    if position >= len(tokens):
        return None
    size_token = tokens[position]
    size = _size(size_token)
    if size is None:
        return None
    position += 1
    if position < len(tokens) and tokens[position].kind == "slash":
        # The line height: checked as a browser checks it, then unused (a canvas draws
        # one line).
        if position + 1 >= len(tokens) or not _line_height(tokens[position + 1]):
            return None
        position += 2
    family = _family(tokens[position:])
    if family is None:
        return None
    family_tokens = tokens[position:]
    if len(family_tokens) == 1 and family_tokens[0].kind == "ident" and family_tokens[0].text.lower() == "monospace":
        size = _monospace_size(size_token, size)
    if size > MAX_FONT_SIZE:
        raise FontError(f"{value!r}: the largest font size is {MAX_FONT_SIZE:g}px")
    return FontSpec(family=family, size=size, weight=weight, italic=italic, small_caps=small_caps)


def _angle(token):
    if token.kind == "number" and token.unit in ANGLE_UNITS_IN_DEGREES:
        return float(token.text) * ANGLE_UNITS_IN_DEGREES[token.unit]
    return None


def _size(token):
    """The size in px of a font-size token, or None if it is not one."""
    if token.kind == "ident":
        return ABSOLUTE_SIZES.get(token.text.lower())
    if token.kind != "number":
        return None
    number = float(token.text)
    if number < 0 or number != number:
        return None
    if not token.unit:
        return 0.0 if number == 0 else None  # a unitless length must be zero
    factor = UNITS_IN_PX.get(token.unit) or RELATIVE_UNITS_IN_PX.get(token.unit)
    return None if factor is None else number * factor


def _monospace_size(token, size):
    if token.kind == "ident":
        word = token.text.lower()
        return MONOSPACE_KEYWORD_SIZES.get(word, size * MONOSPACE_SCALE)  # larger, smaller: relative
    return size * MONOSPACE_SCALE if token.unit in RELATIVE_UNITS_IN_PX else size


def _line_height(token):
    if token.kind == "ident":
        return token.text.lower() == "normal"
    if token.kind != "number" or float(token.text) < 0:
        return False
    return not token.unit or token.unit in UNITS_IN_PX or token.unit in RELATIVE_UNITS_IN_PX


def _family(tokens):
    """The bundled family for a font-family list's tokens, or None if they are not a
    valid list."""
    if not tokens:
        return None
    names, current = [], []
    for token in [*tokens, Token("comma", ",")]:
        if token.kind == "comma":
            if not current:
                return None  # an empty entry: a leading, doubled or trailing comma
            names.append(current)
            current = []
        elif token.kind == "string" and not current:
            current = [token]
        elif token.kind == "ident" and (not current or current[0].kind == "ident"):
            current.append(token)
        else:
            return None
    chosen = None
    for entry in names:
        if entry[0].kind == "string":
            name, generic = entry[0].text, False
        else:
            words = [token.text for token in entry]
            if any(word.lower() in CSS_WIDE_KEYWORDS or word.lower() == "default" for word in words):
                return None
            if len(words) > 1 and words[0].lower() in GENERIC_FAMILIES:
                return None  # "serif bold": a generic family is a whole entry or nothing
            name, generic = " ".join(words), len(words) == 1 and words[0].lower() in GENERIC_FAMILIES
        if chosen is not None:
            continue  # later entries are only checked, as a browser checks the whole list
        if generic:
            chosen = GENERIC_FAMILIES[name.lower()]
        else:
            chosen = NAMED_FAMILIES.get(" ".join(name.lower().split()))
    return chosen or FALLBACK_FAMILY
