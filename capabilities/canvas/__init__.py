"""The canvas capability: a server-side HTML canvas 2D context for blocks.

`canvas.createCanvas`, `canvas.draw` and `canvas.exportImage` are the handlers below
(in handlers.py); the op vocabulary is in ops.py, rendering (Skia) in render.py,
encoding (Pillow) in encode.py. See docs/canvas.md.
"""

from capabilities.canvas.handlers import create_canvas, draw, export_image, image_event

__all__ = ["create_canvas", "draw", "export_image", "image_event"]
