"""Text as Chromium draws it on Linux: shaped by HarfBuzz word by word, drawn by Skia with
slight hinting and subpixel positioning, and measured as TextMetrics.

Chromium shapes a line of text one word at a time (its word cache: a space is a word of
its own, so no kerning pair reaches across a space), with HarfBuzz and the font's kerning
and ligatures; it draws the glyphs with the font rendering fontconfig asks for on Linux,
hinted slightly (outlines snapped vertically, advances untouched) and placed at
fractional pixel positions. Skia's paragraph layout kerns across spaces and cannot be told
to hint, so its lines ended a pixel away from Chromium's and its glyphs were blurred
where Chromium's are crisp; this module does what Chromium does instead. Missing bold and
italic faces are synthesized as Chrome does (emboldened outlines, a skew of -1/4), and
small capitals as capitals at 70% of the size.
"""

import functools
import math
import re
import struct

import skia
import uharfbuzz

from capabilities.canvas.fonts import FONTS_DIR, FACES, SMALL_CAPS_SCALE, FontSpec

# Chrome's synthetic oblique: the skew it gives a face that has no italic.
SYNTHETIC_SKEW = -1 / 4
# Chrome puts the hanging baseline at 80% of the ascent when the font does not say.
HANGING_AS_PART_OF_ASCENT = 0.8
WHITESPACE = str.maketrans({"\t": " ", "\n": " ", "\x0c": " ", "\r": " "})
WORDS = re.compile(r" |[^ ]+")
# Shaped words kept per export: labels repeat ("Total", axis ticks), and a long text of
# distinct words is bounded by the text limit per canvas anyway.
MAX_CACHED_WORDS = 10_000


@functools.lru_cache(maxsize=None)
def harfbuzz_font(family, bold, italic):
    data = (FONTS_DIR / FACES[family][(bold, italic)]).read_bytes()
    face = uharfbuzz.Face(uharfbuzz.Blob(data))
    return uharfbuzz.Font(face), face.upem


@functools.lru_cache(maxsize=None)
def skia_typeface(family, bold, italic):
    # An empty font manager loads the file as it is; the default one would start up
    # fontconfig and read the server's font configuration, which the canvas never uses.
    filename = FACES[family][(bold, italic)]
    face = skia.FontMgr.New_Custom_Empty().makeFromFile(str(FONTS_DIR / filename), 0)
    if face is None:
        raise RuntimeError(f"bundled font {filename} did not load")
    return face


@functools.lru_cache(maxsize=None)
def vertical_metrics(family, bold, italic):
    """A face's vertical metrics per pixel of font size: the OS/2 typo ascent and descent
    scaled to sum to 1 em (Chrome's em box), and the hhea ascent and descent."""
    face = skia_typeface(family, bold, italic)
    units = face.getUnitsPerEm()
    os2 = int.from_bytes(b"OS/2", "big")
    typo_ascent, typo_descent = 0.8 * units, 0.2 * units
    if os2 in face.getTableTags():
        table = bytes(face.copyTableData(os2))
        ascender, descender = struct.unpack(">hh", table[68:72])
        if ascender - descender > 0:
            typo_ascent, typo_descent = ascender, -descender
    metrics = skia.Font(face, units).getMetrics()
    total = typo_ascent + typo_descent
    return typo_ascent / total, typo_descent / total, -metrics.fAscent / units, metrics.fDescent / units


def small_caps_runs(text):
    """Chrome's synthetic small capitals: the text in runs of (text, is_small), where the
    small runs are lowercase letters turned into capitals."""
    runs = []
    for character in text:
        upper = character.upper()
        small = upper != character
        if runs and runs[-1][1] == small:
            runs[-1][0].append(upper if small else character)
        else:
            runs.append(([upper if small else character], small))
    return [("".join(characters), small) for characters, small in runs]


class Line:
    """One line of shaped text: Skia glyph runs (font, glyph ids, positions) and the
    advance width, with the font's vertical metrics."""

    __slots__ = ("runs", "width", "metrics", "size")

    def __init__(self, runs, width, metrics, size):
        self.runs, self.width, self.metrics, self.size = runs, width, metrics, size

    def blob(self):
        builder = skia.TextBlobBuilder()
        for font, glyphs, points in self.runs:
            builder.allocRunPos(font, glyphs, points)
        return builder.make()

    def baseline_offset(self, baseline):
        """How far below y the alphabetic baseline lies, for a textBaseline."""
        typo_ascent, typo_descent, ascent, descent = self.metrics
        size = self.size
        if baseline == "top":
            return typo_ascent * size
        if baseline == "middle":
            return (typo_ascent - typo_descent) * size / 2
        if baseline == "bottom":
            return -typo_descent * size
        # Chrome rounds the font's ascent and descent to whole pixels for these two.
        if baseline == "hanging":
            return round(ascent * size) * HANGING_AS_PART_OF_ASCENT
        if baseline == "ideographic":
            return -round(descent * size)
        return 0.0

    def anchor(self, align):
        """Where the line starts relative to x, for a textAlign (left to right text)."""
        return -self.width if align in ("end", "right") else -self.width / 2 if align == "center" else 0.0

    def measure(self, align, baseline):
        """The TextMetrics of the line, as measureText gives them, relative to the point
        textAlign and textBaseline say (x to the right, y up for ascents)."""
        typo_ascent, typo_descent, ascent, descent = self.metrics
        size = self.size
        anchor, below = self.anchor(align), self.baseline_offset(baseline)
        # The ink bounds of each glyph are Skia's, which are those of the glyph's mask:
        # whole pixels around the glyph's origin, as in Chromium.
        left = top = math.inf
        right = bottom = -math.inf
        for font, glyphs, points in self.runs:
            for point, bounds in zip(points, font.getBounds(glyphs)):
                if bounds.isEmpty():
                    continue
                left, right = min(left, point.fX + bounds.left()), max(right, point.fX + bounds.right())
                top, bottom = min(top, point.fY + bounds.top()), max(bottom, point.fY + bounds.bottom())
        if left == math.inf:
            left = right = top = bottom = 0.0
        return {
            "width": self.width,
            "actualBoundingBoxLeft": -(anchor + left),
            "actualBoundingBoxRight": anchor + right,
            "actualBoundingBoxAscent": -(top + below),
            "actualBoundingBoxDescent": bottom + below,
            "fontBoundingBoxAscent": round(ascent * size) - below,
            "fontBoundingBoxDescent": round(descent * size) + below,
            "emHeightAscent": typo_ascent * size - below,
            "emHeightDescent": typo_descent * size + below,
            "hangingBaseline": round(ascent * size) * HANGING_AS_PART_OF_ASCENT - below,
            "alphabeticBaseline": -below,
            "ideographicBaseline": -round(descent * size) - below,
        }


class TextShaper:
    """Shapes lines of text in the bundled fonts (and only them: no fallback to the
    server's fonts, so every server renders the same glyphs)."""

    def __init__(self):
        self.words = {}
        self.fonts = {}

    def skia_font(self, face, size, fake_bold, fake_italic):
        key = (face, size, fake_bold, fake_italic)
        font = self.fonts.get(key)
        if font is None:
            font = skia.Font(skia_typeface(*face), size)
            # What Chromium asks of Skia on Linux: fontconfig's hintslight, subpixel
            # positions, grey anti-aliasing (canvas text is never LCD-filtered).
            font.setHinting(skia.FontHinting.kSlight)
            font.setSubpixel(True)
            font.setEdging(skia.Font.Edging.kAntiAlias)
            font.setEmbolden(fake_bold)
            font.setSkewX(SYNTHETIC_SKEW if fake_italic else 0)
            self.fonts[key] = font
        return font

    def shape_word(self, face, word, size):
        """(glyph ids, (x, y) offsets, advance) of one word shaped at a size."""
        key = (face, word, size)
        shaped = self.words.get(key)
        if shaped is None:
            font, units = harfbuzz_font(*face)
            buffer = uharfbuzz.Buffer()
            buffer.add_str(word)
            buffer.guess_segment_properties()
            uharfbuzz.shape(font, buffer)
            # Skia hands the size to FreeType in 26.6 fixed point, truncated: Chromium's
            # advances (which come from Skia) are those of the size rounded down to a
            # 64th of a pixel.
            scale = math.floor(size * 64) / 64 / units
            glyphs, offsets, x = [], [], 0
            for info, position in zip(buffer.glyph_infos, buffer.glyph_positions):
                glyphs.append(info.codepoint)
                # HarfBuzz's y grows upwards, Skia's downwards.
                offsets.append(((x + position.x_offset) * scale, -position.y_offset * scale))
                x += position.x_advance
            shaped = (glyphs, offsets, x * scale)
            if len(self.words) < MAX_CACHED_WORDS:
                self.words[key] = shaped
        return shaped

    def line(self, text, font):
        """The Line of a text in a font (a drawing state's font tuple)."""
        family, size, weight, italic, small_caps = font
        face_style, (fake_bold, fake_italic) = FontSpec(family, size, weight, italic).face()
        face = (family, *face_style)
        pieces = small_caps_runs(text) if small_caps else [(text, False)]
        runs, x = [], 0.0
        for piece, small in pieces:
            # Chromium draws its synthetic small capitals at a whole pixel size.
            piece_size = round(size * SMALL_CAPS_SCALE) if small else size
            skia_font = self.skia_font(face, piece_size, fake_bold, fake_italic)
            glyphs, points = [], []
            for word in WORDS.findall(piece):
                word_glyphs, offsets, advance = self.shape_word(face, word, piece_size)
                glyphs += word_glyphs
                points += [skia.Point(x + dx, dy) for dx, dy in offsets]
                x += advance
            if glyphs:
                runs.append((skia_font, glyphs, points))
        return Line(runs, x, vertical_metrics(*face), size)
