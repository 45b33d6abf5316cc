"""CSS colours, as a canvas's fillStyle and strokeStyle accept them.

Accepted: the CSS named colours and `transparent`, `#rgb`, `#rgba`, `#rrggbb`,
`#rrggbbaa`, `rgb()`/`rgba()` in the comma syntax and the space syntax (`rgb(255 0 0 /
50%)`), and `hsl()`/`hsla()` likewise. Anything else (`url(...)`, `var(...)`,
`currentcolor`, gradients, `lab()`...) is refused: a browser would silently keep the old
colour, which hides the mistake from the block's author.

A colour becomes (r, g, b, a) with 8-bit channels, rounded the way browsers round them,
so a canvas colour here is the same 8-bit value a browser's canvas stores.
"""

import math
import re

# CSS Color Module Level 4, section 6.1: the named colours.
NAMED_COLORS = {
    "aliceblue": 0xF0F8FF, "antiquewhite": 0xFAEBD7, "aqua": 0x00FFFF, "aquamarine": 0x7FFFD4,
    "azure": 0xF0FFFF, "beige": 0xF5F5DC, "bisque": 0xFFE4C4, "black": 0x000000,
    "blanchedalmond": 0xFFEBCD, "blue": 0x0000FF, "blueviolet": 0x8A2BE2, "brown": 0xA52A2A,
    "burlywood": 0xDEB887, "cadetblue": 0x5F9EA0, "chartreuse": 0x7FFF00, "chocolate": 0xD2691E,
    "coral": 0xFF7F50, "cornflowerblue": 0x6495ED, "cornsilk": 0xFFF8DC, "crimson": 0xDC143C,
    "cyan": 0x00FFFF, "darkblue": 0x00008B, "darkcyan": 0x008B8B, "darkgoldenrod": 0xB8860B,
    "darkgray": 0xA9A9A9, "darkgreen": 0x006400, "darkgrey": 0xA9A9A9, "darkkhaki": 0xBDB76B,
    "darkmagenta": 0x8B008B, "darkolivegreen": 0x556B2F, "darkorange": 0xFF8C00,
    "darkorchid": 0x9932CC, "darkred": 0x8B0000, "darksalmon": 0xE9967A, "darkseagreen": 0x8FBC8F,
    "darkslateblue": 0x483D8B, "darkslategray": 0x2F4F4F, "darkslategrey": 0x2F4F4F,
    "darkturquoise": 0x00CED1, "darkviolet": 0x9400D3, "deeppink": 0xFF1493,
    "deepskyblue": 0x00BFFF, "dimgray": 0x696969, "dimgrey": 0x696969, "dodgerblue": 0x1E90FF,
    "firebrick": 0xB22222, "floralwhite": 0xFFFAF0, "forestgreen": 0x228B22, "fuchsia": 0xFF00FF,
    "gainsboro": 0xDCDCDC, "ghostwhite": 0xF8F8FF, "gold": 0xFFD700, "goldenrod": 0xDAA520,
    "gray": 0x808080, "green": 0x008000, "greenyellow": 0xADFF2F, "grey": 0x808080,
    "honeydew": 0xF0FFF0, "hotpink": 0xFF69B4, "indianred": 0xCD5C5C, "indigo": 0x4B0082,
    "ivory": 0xFFFFF0, "khaki": 0xF0E68C, "lavender": 0xE6E6FA, "lavenderblush": 0xFFF0F5,
    "lawngreen": 0x7CFC00, "lemonchiffon": 0xFFFACD, "lightblue": 0xADD8E6, "lightcoral": 0xF08080,
    "lightcyan": 0xE0FFFF, "lightgoldenrodyellow": 0xFAFAD2, "lightgray": 0xD3D3D3,
    "lightgreen": 0x90EE90, "lightgrey": 0xD3D3D3, "lightpink": 0xFFB6C1, "lightsalmon": 0xFFA07A,
    "lightseagreen": 0x20B2AA, "lightskyblue": 0x87CEFA, "lightslategray": 0x778899,
    "lightslategrey": 0x778899, "lightsteelblue": 0xB0C4DE, "lightyellow": 0xFFFFE0,
    "lime": 0x00FF00, "limegreen": 0x32CD32, "linen": 0xFAF0E6, "magenta": 0xFF00FF,
    "maroon": 0x800000, "mediumaquamarine": 0x66CDAA, "mediumblue": 0x0000CD,
    "mediumorchid": 0xBA55D3, "mediumpurple": 0x9370DB, "mediumseagreen": 0x3CB371,
    "mediumslateblue": 0x7B68EE, "mediumspringgreen": 0x00FA9A, "mediumturquoise": 0x48D1CC,
    "mediumvioletred": 0xC71585, "midnightblue": 0x191970, "mintcream": 0xF5FFFA,
    "mistyrose": 0xFFE4E1, "moccasin": 0xFFE4B5, "navajowhite": 0xFFDEAD, "navy": 0x000080,
    "oldlace": 0xFDF5E6, "olive": 0x808000, "olivedrab": 0x6B8E23, "orange": 0xFFA500,
    "orangered": 0xFF4500, "orchid": 0xDA70D6, "palegoldenrod": 0xEEE8AA, "palegreen": 0x98FB98,
    "paleturquoise": 0xAFEEEE, "palevioletred": 0xDB7093, "papayawhip": 0xFFEFD5,
    "peachpuff": 0xFFDAB9, "peru": 0xCD853F, "pink": 0xFFC0CB, "plum": 0xDDA0DD,
    "powderblue": 0xB0E0E6, "purple": 0x800080, "rebeccapurple": 0x663399, "red": 0xFF0000,
    "rosybrown": 0xBC8F8F, "royalblue": 0x4169E1, "saddlebrown": 0x8B4513, "salmon": 0xFA8072,
    "sandybrown": 0xF4A460, "seagreen": 0x2E8B57, "seashell": 0xFFF5EE, "sienna": 0xA0522D,
    "silver": 0xC0C0C0, "skyblue": 0x87CEEB, "slateblue": 0x6A5ACD, "slategray": 0x708090,
    "slategrey": 0x708090, "snow": 0xFFFAFA, "springgreen": 0x00FF7F, "steelblue": 0x4682B4,
    "tan": 0xD2B48C, "teal": 0x008080, "thistle": 0xD8BFD8, "tomato": 0xFF6347,
    "turquoise": 0x40E0D0, "violet": 0xEE82EE, "wheat": 0xF5DEB3, "white": 0xFFFFFF,
    "whitesmoke": 0xF5F5F5, "yellow": 0xFFFF00, "yellowgreen": 0x9ACD32,
}

# A colour string longer than this is not a colour; refusing it early keeps a megabyte
# "colour" from reaching the regular expressions below.
MAX_COLOR_LENGTH = 100

NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
HEX_COLOR = re.compile(r"#([0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")
FUNCTION_COLOR = re.compile(r"(rgba?|hsla?)\(\s*(.*?)\s*\)", re.IGNORECASE | re.DOTALL)
COMPONENT = re.compile(rf"({NUMBER})(%|deg|grad|rad|turn)?", re.IGNORECASE)

ACCEPTED_FORMS = "a CSS colour name, #rgb, #rrggbb, #rrggbbaa, rgb()/rgba() or hsl()/hsla()"


class ColorError(ValueError):
    """The string is not a colour this canvas accepts; the message says why."""


def parse_color(value):
    """(r, g, b, a) with 0-255 channels for a CSS colour string, or ColorError."""
    if not isinstance(value, str):
        raise ColorError(f"must be a colour string ({ACCEPTED_FORMS})")
    if len(value) > MAX_COLOR_LENGTH:
        raise ColorError(f"is {len(value)} characters long, not a colour")
    text = value.strip()
    lowered = text.lower()
    if lowered == "transparent":
        return (0, 0, 0, 0)
    if lowered in NAMED_COLORS:
        rgb = NAMED_COLORS[lowered]
        return (rgb >> 16, (rgb >> 8) & 0xFF, rgb & 0xFF, 255)
    match = HEX_COLOR.fullmatch(text)
    if match:
        return _hex(match.group(1))
    match = FUNCTION_COLOR.fullmatch(text)
    if match:
        return _function(match.group(1).lower(), match.group(2))
    raise ColorError(f"{_shown(value)} is not a colour ({ACCEPTED_FORMS})")


def _shown(value):
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _hex(digits):
    if len(digits) in (3, 4):
        digits = "".join(d * 2 for d in digits)
    channels = [int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)]
    if len(channels) == 3:
        channels.append(255)
    return tuple(channels)


def _components(body, function):
    """The numbers of rgb()/hsl(): 'a, b, c[, d]' or 'a b c[ / d]', never a mix."""
    if "," in body:
        parts = [p.strip() for p in body.split(",")]
        if len(parts) not in (3, 4) or "/" in body:
            raise ColorError(f"{function}() takes three or four comma-separated values")
    else:
        main, slash, alpha = body.partition("/")
        parts = main.split()
        if len(parts) != 3 or (slash and not alpha.strip()):
            raise ColorError(f"{function}() takes three values and an optional '/ alpha'")
        if slash:
            parts.append(alpha.strip())
    parsed = []
    for part in parts:
        match = COMPONENT.fullmatch(part)
        if not match:
            raise ColorError(f"{_shown(part)} is not a number in {function}()")
        number = float(match.group(1))
        if not math.isfinite(number):
            raise ColorError(f"{function}() values must be finite numbers")
        parsed.append((number, (match.group(2) or "").lower()))
    return parsed


def _alpha(component):
    number, unit = component
    if unit not in ("", "%"):
        raise ColorError("the alpha value must be a number or a percentage")
    alpha = number / 100 if unit == "%" else number
    return _byte(min(max(alpha, 0.0), 1.0) * 255)


def _byte(value):
    # Browsers round half up when they store a colour channel in 8 bits.
    return int(math.floor(min(max(value, 0.0), 255.0) + 0.5))


def _function(function, body):
    parts = _components(body, function)
    alpha = _alpha(parts[3]) if len(parts) == 4 else 255
    if function.startswith("rgb"):
        channels = []
        for number, unit in parts[:3]:
            if unit not in ("", "%"):
                raise ColorError("rgb() values must be numbers or percentages")
            channels.append(_byte(number * 255 / 100 if unit == "%" else number))
        return (*channels, alpha)

    (hue, hue_unit), (sat, sat_unit), (light, light_unit) = parts[:3]
    hue_degrees = {"": 1.0, "deg": 1.0, "grad": 0.9, "rad": 180 / math.pi, "turn": 360.0}.get(hue_unit)
    if hue_degrees is None:
        raise ColorError("the hue of hsl() is a number or an angle")
    if sat_unit not in ("", "%") or light_unit not in ("", "%"):
        raise ColorError("the saturation and lightness of hsl() are percentages")
    return (*_hsl_to_rgb(hue * hue_degrees, sat / 100, light / 100), alpha)


def _hsl_to_rgb(hue, saturation, lightness):
    # CSS Color 4, section 7.1 (the reference hslToRgb).
    hue = hue % 360
    saturation = min(max(saturation, 0.0), 1.0)
    lightness = min(max(lightness, 0.0), 1.0)

    def channel(n):
        k = (n + hue / 30) % 12
        a = saturation * min(lightness, 1 - lightness)
        return lightness - a * max(-1, min(k - 3, 9 - k, 1))

    return tuple(_byte(channel(n) * 255) for n in (0, 8, 4))
