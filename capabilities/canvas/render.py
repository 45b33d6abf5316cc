"""Runs validated ops on a Skia surface: the HTML canvas 2D context, server-side.

Skia is Chrome's own rasterizer, and this follows Chrome's canvas where the HTML spec
leaves room: anti-aliased geometry on a transparent black, premultiplied 8-bit surface;
the current path kept in device space (each point transformed when it is added, so a
transform set between moveTo and lineTo applies only to the later point); strokes drawn
under the transform current at stroke(); arcs with Chrome's angle normalization;
drawing and path-building skipped while the transform is not invertible; text shaped
and hinted as Chromium on Linux does it (text.py), positioned with Chrome's baseline
rules. The result is a picture a browser shows as the same picture.
"""

import itertools
import math

import skia

from capabilities.canvas import limits
from capabilities.canvas.fonts import DEFAULT_FONT, parse_font
from capabilities.canvas.ops import METHODS
from capabilities.canvas.text import WHITESPACE, TextShaper

OP_METHODS = {kind: f"op_{kind}" for kind in [*METHODS, "drawImage"]}

TAU = 2 * math.pi
# Skia's SK_ScalarNearlyZero: how close to a whole turn (in degrees) Chrome takes a sweep
# for a whole turn.
NEARLY_ZERO = 1 / 4096
CAPS = {"butt": skia.Paint.kButt_Cap, "round": skia.Paint.kRound_Cap, "square": skia.Paint.kSquare_Cap}
JOINS = {"miter": skia.Paint.kMiter_Join, "round": skia.Paint.kRound_Join, "bevel": skia.Paint.kBevel_Join}
EVEN_ODD, NONZERO = skia.PathFillType.kEvenOdd, skia.PathFillType.kWinding
IDENTITY = skia.Matrix()
IDENTITY_SERIAL = 0
CLEAR_PAINT = skia.Paint(AntiAlias=True, BlendMode=skia.BlendMode.kClear)
LINEAR_SAMPLING = skia.SamplingOptions(skia.FilterMode.kLinear, skia.MipmapMode.kNone)


class DrawingState:
    """What save() keeps and restore() brings back; defaults are the browser's. The
    transform's inverse is kept with it (None while the transform cannot be inverted:
    a browser then draws nothing and adds nothing to the path)."""

    __slots__ = (
        "fillStyle", "strokeStyle", "lineWidth", "lineCap", "lineJoin", "miterLimit",
        "globalAlpha", "font", "textAlign", "textBaseline", "matrix", "inverse", "matrix_serial",
    )

    def __init__(self):
        self.fillStyle = (0, 0, 0, 255)
        self.strokeStyle = (0, 0, 0, 255)
        self.lineWidth = 1.0
        self.lineCap = "butt"
        self.lineJoin = "miter"
        self.miterLimit = 10.0
        self.globalAlpha = 1.0
        self.font = parse_font(DEFAULT_FONT).as_tuple()
        self.textAlign = "start"
        self.textBaseline = "alphabetic"
        self.matrix = skia.Matrix()
        self.inverse = skia.Matrix()
        # Which matrix value this is (a new number at every change, 0 for the identity):
        # the renderer sets the canvas's matrix only when it differs from the one it set
        # last.
        self.matrix_serial = IDENTITY_SERIAL

    def copy(self):
        twin = DrawingState.__new__(DrawingState)
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        # Matrices are changed in place by transform ops: the copy needs its own.
        twin.matrix = copy_matrix(self.matrix)
        return twin

    def matrix_changed(self, serial):
        inverse = skia.Matrix()
        self.inverse = inverse if self.matrix.isFinite() and self.matrix.invert(inverse) else None
        self.matrix_serial = IDENTITY_SERIAL if self.matrix.isIdentity() else serial


def copy_matrix(matrix):
    return skia.Matrix.MakeAll(*matrix.get9())


class Renderer:
    """One canvas being drawn. `images` maps each drawImage source of the ops to a
    skia.Image (files by path, other canvases by (number, opCount)); the canvas's own
    snapshots are taken from its surface as it is drawn."""

    def __init__(self, width, height, images, deadline_check=None):
        self.width, self.height = width, height
        self.surface = skia.Surface(width, height)
        self.canvas = self.surface.getCanvas()
        self.canvas.clear(skia.ColorTRANSPARENT)
        self.images = images
        self.deadline_check = deadline_check
        self.state = DrawingState()
        self.stack = []
        self.ignored_saves = 0
        self.path = skia.Path()
        self.shaper = None
        # One paint of each kind, set anew for every op: building a skia.Paint costs
        # more than drawing a small rectangle with it. Skia copies what it needs from a
        # paint during the draw call, so changing it afterwards changes nothing drawn.
        self.fill_paint = skia.Paint(AntiAlias=True)
        self.stroke_paint = skia.Paint(AntiAlias=True)
        self.stroke_paint.setStyle(skia.Paint.kStroke_Style)
        self.serials = itertools.count(1)
        self.canvas_matrix_serial = IDENTITY_SERIAL  # a new Skia canvas has the identity

    # Running ------------------------------------------------------------------------

    def run(self, ops):
        # Only the ops validation produces are ever run: an explicit table, never a
        # method looked up by a name from the stored state.
        methods = {kind: getattr(self, name) for kind, name in OP_METHODS.items()}
        for kind, args, overrides in ops:
            # Every op: one op can cost milliseconds (a full 8K canvas blended), so a
            # coarser check could overshoot the deadline by seconds.
            if self.deadline_check:
                self.deadline_check()
            if kind == "set":
                self.apply(overrides)
                continue
            if overrides:
                # Property fields on a drawing op hold for that op alone.
                state = self.state
                previous = [(name, getattr(state, name)) for name in overrides]
                self.apply(overrides)
                methods[kind](*args)
                for name, value in previous:
                    setattr(self.state, name, value)
            else:
                methods[kind](*args)
        return self.surface.makeImageSnapshot()

    def apply(self, properties):
        for name, value in properties.items():
            setattr(self.state, name, value)

    # Transform ----------------------------------------------------------------------

    @property
    def matrix(self):
        return self.state.matrix

    def inverse(self):
        return self.state.inverse

    def use_matrix(self):
        """Puts the current transform on the Skia canvas (unless it is there already)."""
        if self.canvas_matrix_serial != self.state.matrix_serial:
            self.canvas.setMatrix(self.state.matrix)
            self.canvas_matrix_serial = self.state.matrix_serial

    def use_identity(self):
        if self.canvas_matrix_serial != IDENTITY_SERIAL:
            self.canvas.setMatrix(IDENTITY)
            self.canvas_matrix_serial = IDENTITY_SERIAL

    def use_own_matrix(self, matrix):
        """Puts a matrix of an op's own (a text's) on the Skia canvas."""
        self.canvas.setMatrix(matrix)
        self.canvas_matrix_serial = None

    def map(self, x, y):
        point = self.matrix.mapXY(x, y)
        return point.fX, point.fY

    def op_save(self):
        if len(self.stack) < limits.MAX_SAVE_DEPTH:
            self.stack.append(self.state.copy())
        else:
            # Past the depth limit a save is ignored, and so is its restore.
            self.ignored_saves += 1

    def op_restore(self):
        if self.ignored_saves:
            self.ignored_saves -= 1
        elif self.stack:
            self.state = self.stack.pop()

    def op_translate(self, x, y):
        self.matrix.preTranslate(x, y)
        self.state.matrix_changed(next(self.serials))

    def op_rotate(self, angle):
        cos, sin = math.cos(angle), math.sin(angle)
        self.matrix.preConcat(skia.Matrix.MakeAll(cos, -sin, 0, sin, cos, 0, 0, 0, 1))
        self.state.matrix_changed(next(self.serials))

    def op_scale(self, x, y):
        self.matrix.preScale(x, y)
        self.state.matrix_changed(next(self.serials))

    def op_transform(self, a, b, c, d, e, f):
        self.matrix.preConcat(skia.Matrix.MakeAll(a, c, e, b, d, f, 0, 0, 1))
        self.state.matrix_changed(next(self.serials))

    def op_setTransform(self, a, b, c, d, e, f):
        self.state.matrix = skia.Matrix.MakeAll(a, c, e, b, d, f, 0, 0, 1)
        self.state.matrix_changed(next(self.serials))

    def op_resetTransform(self):
        self.state.matrix = skia.Matrix()
        self.state.matrix_changed(next(self.serials))

    # Paths --------------------------------------------------------------------------

    def op_beginPath(self):
        self.path = skia.Path()

    def op_closePath(self):
        if self.path.countPoints():
            self.path.close()

    def ensure_subpath(self, x, y):
        if not self.path.countPoints():
            self.path.moveTo(*self.map(x, y))

    def op_moveTo(self, x, y):
        if self.inverse() is not None:
            self.path.moveTo(*self.map(x, y))

    def op_lineTo(self, x, y):
        if self.inverse() is None:
            return
        if not self.path.countPoints():
            self.path.moveTo(*self.map(x, y))
        else:
            self.path.lineTo(*self.map(x, y))

    def op_quadraticCurveTo(self, cpx, cpy, x, y):
        if self.inverse() is None:
            return
        self.ensure_subpath(cpx, cpy)
        self.path.quadTo(*self.map(cpx, cpy), *self.map(x, y))

    def op_bezierCurveTo(self, cp1x, cp1y, cp2x, cp2y, x, y):
        if self.inverse() is None:
            return
        self.ensure_subpath(cp1x, cp1y)
        self.path.cubicTo(*self.map(cp1x, cp1y), *self.map(cp2x, cp2y), *self.map(x, y))

    def op_rect(self, x, y, width, height):
        if self.inverse() is None:
            return
        corners = [(x, y), (x + width, y), (x + width, y + height), (x, y + height)]
        self.path.moveTo(*self.map(*corners[0]))
        for corner in corners[1:]:
            self.path.lineTo(*self.map(*corner))
        self.path.close()
        self.path.moveTo(*self.map(x, y))

    def op_arc(self, x, y, radius, start, end, counterclockwise):
        self.op_ellipse(x, y, radius, radius, start, end, 0.0, counterclockwise)

    def op_ellipse(self, x, y, radius_x, radius_y, start, end, rotation, counterclockwise):
        if self.inverse() is None:
            return
        # Chrome's canonicalization: start in [0, 2π), end moved by as much, then the
        # sweep clamped to one full turn in the asked direction.
        shifted = math.fmod(start, TAU)
        if shifted < 0:
            shifted += TAU
        end += shifted - start
        start = shifted
        if not counterclockwise and end - start >= TAU:
            end = start + TAU
        elif counterclockwise and start - end >= TAU:
            end = start - TAU
        elif not counterclockwise and start > end:
            end = start + (TAU - math.fmod(start - end, TAU))
        elif counterclockwise and start < end:
            end = start - (TAU - math.fmod(end - start, TAU))
        sweep = end - start

        local = copy_matrix(self.matrix)
        local.preTranslate(x, y)
        if rotation:
            cos, sin = math.cos(rotation), math.sin(rotation)
            local.preConcat(skia.Matrix.MakeAll(cos, -sin, 0, sin, cos, 0, 0, 0, 1))
        start_point = local.mapXY(radius_x * math.cos(start), radius_y * math.sin(start))
        if self.path.countPoints():
            self.path.lineTo(start_point)
        else:
            self.path.moveTo(start_point)
        if (radius_x == 0 and radius_y == 0) or sweep == 0:
            return
        arc = skia.Path()
        oval = skia.Rect.MakeLTRB(-radius_x, -radius_y, radius_x, radius_y)
        start_degrees, sweep_degrees = math.degrees(start), math.degrees(sweep)
        if abs(abs(sweep_degrees) - 360) <= NEARLY_ZERO:
            # Skia cannot sweep a whole turn in one arcTo (it takes it for a single
            # point); two halves keep the start point and the direction, as in Chrome.
            half = math.copysign(180, sweep_degrees)
            arc.arcTo(oval, start_degrees, half, True)
            arc.arcTo(oval, start_degrees + half, half, False)
        else:
            arc.arcTo(oval, start_degrees, sweep_degrees, True)
        self.path.addPath(arc, local, skia.Path.kExtend_AddPathMode)

    def op_arcTo(self, x1, y1, x2, y2, radius):
        inverse = self.inverse()
        if inverse is None:
            return
        self.ensure_subpath(x1, y1)
        last = skia.Point(0, 0)
        self.path.getLastPt(last)
        x0, y0 = (lambda p: (p.fX, p.fY))(inverse.mapXY(last.fX, last.fY))
        collinear = abs((x1 - x0) * (y2 - y1) - (y1 - y0) * (x2 - x1)) < 1e-12
        if (x0, y0) == (x1, y1) or (x1, y1) == (x2, y2) or radius == 0 or collinear:
            self.path.lineTo(*self.map(x1, y1))
            return
        arc = skia.Path()
        arc.moveTo(x0, y0)
        arc.arcTo(x1, y1, x2, y2, radius)
        self.path.addPath(arc, self.matrix, skia.Path.kExtend_AddPathMode)

    # Paint --------------------------------------------------------------------------

    def paint(self, color, stroke=False):
        r, g, b, a = color
        state = self.state
        paint = self.stroke_paint if stroke else self.fill_paint
        paint.setColor4f(skia.Color4f(r / 255, g / 255, b / 255, a / 255 * state.globalAlpha))
        if stroke:
            paint.setStrokeWidth(state.lineWidth)
            paint.setStrokeCap(CAPS[state.lineCap])
            paint.setStrokeJoin(JOINS[state.lineJoin])
            paint.setStrokeMiter(state.miterLimit)
        return paint

    def op_fill(self, fill_rule):
        if self.inverse() is None:
            return
        # The fill rule is the path's own in Skia; nothing but a fill reads it, and every
        # fill sets it, so the current path takes it without a copy.
        self.path.setFillType(EVEN_ODD if fill_rule == "evenodd" else NONZERO)
        self.use_identity()
        self.canvas.drawPath(self.path, self.paint(self.state.fillStyle))

    def op_stroke(self):
        inverse = self.inverse()
        if inverse is None:
            return
        # The path is in device space; the line width, caps and joins are in the space
        # of the transform current now, so the path goes back there to be stroked.
        path = skia.Path()
        self.path.transform(inverse, path)
        self.use_matrix()
        self.canvas.drawPath(path, self.paint(self.state.strokeStyle, stroke=True))

    def op_fillRect(self, x, y, width, height):
        if self.inverse() is None or not width or not height:
            return
        self.use_matrix()
        self.canvas.drawRect(skia.Rect.MakeXYWH(x, y, width, height).makeSorted(), self.paint(self.state.fillStyle))

    def op_strokeRect(self, x, y, width, height):
        if self.inverse() is None or (not width and not height):
            return
        self.use_matrix()
        paint = self.paint(self.state.strokeStyle, stroke=True)
        if not width or not height:
            # One side of zero length: a line there and back, as Chrome strokes it.
            line = skia.Path()
            line.moveTo(x, y)
            line.lineTo(x + width, y + height)
            line.close()
            self.canvas.drawPath(line, paint)
        else:
            self.canvas.drawRect(skia.Rect.MakeXYWH(x, y, width, height).makeSorted(), paint)

    def op_clearRect(self, x, y, width, height):
        if self.inverse() is None or not width or not height:
            return
        self.use_matrix()
        self.canvas.drawRect(skia.Rect.MakeXYWH(x, y, width, height).makeSorted(), CLEAR_PAINT)

    # Text ---------------------------------------------------------------------------

    def op_fillText(self, text, x, y, max_width):
        self.draw_text(text, x, y, max_width, self.paint(self.state.fillStyle))

    def op_strokeText(self, text, x, y, max_width):
        self.draw_text(text, x, y, max_width, self.paint(self.state.strokeStyle, stroke=True))

    def draw_text(self, text, x, y, max_width, paint):
        font = self.state.font
        if self.inverse() is None or not text or font[1] == 0 or (max_width is not None and max_width <= 0):
            return
        if self.shaper is None:
            self.shaper = TextShaper()
        line = self.shaper.line(text.translate(WHITESPACE), font)
        matrix = copy_matrix(self.matrix)
        matrix.preTranslate(x, y)
        if max_width is not None and line.width > max_width:
            # Too wide: squeezed horizontally about the anchor point, as in a browser.
            matrix.preScale(max_width / line.width, 1)
        self.use_own_matrix(matrix)
        self.canvas.drawTextBlob(line.blob(), line.anchor(self.state.textAlign), line.baseline_offset(self.state.textBaseline), paint)

    # Images -------------------------------------------------------------------------

    def op_drawImage(self, source, src, dst):
        if self.inverse() is None:
            return
        if source[0] == "canvas" and source[2] is None:
            image = self.surface.makeImageSnapshot()
        else:
            image = self.images.get(source[1] if source[0] == "file" else (source[1], source[2]))
        if image is None:
            return
        natural = skia.Rect.MakeWH(image.width(), image.height())
        source_rect = natural if src is None else skia.Rect.MakeXYWH(*src).makeSorted()
        dx, dy, dw, dh = dst
        if dw is None:
            dw, dh = source_rect.width(), source_rect.height()
        dest_rect = skia.Rect.MakeXYWH(dx, dy, dw, dh).makeSorted()
        if source_rect.isEmpty() or dest_rect.isEmpty():
            return
        # Clip the source rectangle to the image, shrinking the destination in
        # proportion, so the part of the image that exists lands where it should.
        clipped = skia.Rect.MakeLTRB(source_rect.left(), source_rect.top(), source_rect.right(), source_rect.bottom())
        if not clipped.intersect(natural):
            return
        scale_x = dest_rect.width() / source_rect.width()
        scale_y = dest_rect.height() / source_rect.height()
        dest_rect = skia.Rect.MakeLTRB(
            dest_rect.left() + (clipped.left() - source_rect.left()) * scale_x,
            dest_rect.top() + (clipped.top() - source_rect.top()) * scale_y,
            dest_rect.right() - (source_rect.right() - clipped.right()) * scale_x,
            dest_rect.bottom() - (source_rect.bottom() - clipped.bottom()) * scale_y,
        )
        paint = skia.Paint(AntiAlias=True)
        paint.setAlphaf(self.state.globalAlpha)
        self.use_matrix()
        self.canvas.drawImageRect(image, clipped, dest_rect, LINEAR_SAMPLING, paint, skia.Canvas.kStrict_SrcRectConstraint)
