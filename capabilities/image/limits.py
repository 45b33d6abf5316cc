"""The image capability's own limits, the same for every tenant. The profile's limits
(which formats, how many frames, calls a minute) come from the effective policy; the
largest picture is the profile's canvas size (canvas_max_width x canvas_max_height), so
a tenant can process what it could draw, and no more."""

# The Pillow decoders an image may be read with, by the profile's format names. Pillow
# knows others (EPS runs Ghostscript, some read external files); they are never tried.
PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}
# Output format from the output path's extension, when no format is given.
EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".gif": "gif", ".bmp": "bmp",
              ".tif": "tiff", ".tiff": "tiff"}
# Formats that keep every frame of an animated image; the others keep the first one.
ANIMATED_FORMATS = {"gif", "webp", "png"}

# Steps of one transform, and the largest blur radius (Pillow's Gaussian blur is three
# box blurs: its cost does not grow with the radius, but past this nothing is left).
MAX_STEPS = 50
MAX_BLUR_RADIUS = 250

# Every frame of an animation is held decoded while it is transformed: frames x width x
# height is bounded too, at about 200 MB of RGBA.
MAX_ANIMATION_PIXELS = 50_000_000

# Memory one transform is estimated to hold, per pixel of every frame it keeps: the
# decoded frame (RGBA, 4 bytes), the result of a step while its input is still held, and
# the frame converted for the output format. Reserved from the process's budget for
# memory-heavy work (capabilities/memory_budget.py) before anything is decoded.
TRANSFORM_BYTES_PER_PIXEL = 4 * 3

# Quality of lossy output when none is given (Pillow's JPEG default is 75; 85 is what
# most image services use for photos).
DEFAULT_QUALITY = {"jpeg": 85, "webp": 80}
