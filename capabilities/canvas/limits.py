"""The canvas capability's own limits, one place, each with what it bounds and why.

The profile limits (canvas size, operations per canvas, canvases per run, export
formats) come from the tenant's effective policy; these are the platform's, the same for
every tenant, and bound what a single call can cost the server whatever the profile says.
"""

# Characters in one fillText/strokeText op. A line of text longer than this is wider
# than any canvas at any readable size; it bounds the text shaped per op.
MAX_TEXT_LENGTH = 10_000

# Characters of text stored for one canvas, over all its draw calls. Without it, a
# profile allowing 200,000 ops could store 2 GB of text in the run state.
MAX_TEXT_PER_CANVAS = 1_000_000

# Exported images up to this size are also sent, inline, to whoever watches the run (the
# runner page shows them); larger ones would be a channel-layer message too large to send.
IMAGE_EVENT_MAX = 8 * 1024 * 1024

# Memory one export may use: the canvas (width x height x 4 bytes), the copy handed to
# the encoder, the encoder's own copy when it converts (JPEG, GIF), the encoded bytes,
# plus every drawImage source (another canvas, a decoded file). Estimated before any
# pixel is allocated; an export estimated over it is refused with QUOTA_EXCEEDED. 640 MiB
# lets the largest seeded canvas (Advanced, 7680x4320: 4 x 133 MB) render with room for
# a few images; it is a platform bound, not a per-tenant one.
RENDER_MEMORY_LIMIT = 640 * 1024 * 1024

# Exports running side by side share one further bound, the process's budget for
# memory-heavy work (capabilities/memory_budget.py, SYMPOSIUM_HEAVY_MEMORY_MB): each
# reserves this estimate before it renders. The budget's default (1 GB) is larger than
# RENDER_MEMORY_LIMIT, so that the largest export can always run, alone.

# How many times the canvas's own size the export needs besides its sources (see above).
RENDER_COPIES = 4

# Distinct canvas snapshots one export may render as drawImage sources. Each is a full
# render of another canvas, so this bounds the work one export can ask for (a chain of
# canvases drawing each other) besides the memory bound.
MAX_CANVAS_SOURCES = 16

# Distinct image files one export may decode, and the largest of them. A 64 MB image file
# decodes to far more than that; its pixel count is checked from its header first.
MAX_FILE_SOURCES = 32
MAX_IMAGE_FILE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 8192 * 8192

# Image file formats drawImage decodes. Pillow knows many more, some of them through
# external programs (EPS runs Ghostscript); only these plain raster formats are opened.
IMAGE_FILE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")

# Numbers in ops must be finite and at most this large in magnitude. Skia computes in
# 32-bit floats, whose largest value is 3.4e38; a bigger coordinate would silently become
# infinity there. No picture needs more than this even under a tiny scale().
MAX_COORDINATE = 1e30

# Nested save() calls without restore(). A browser has no limit; each level here is a
# small copy of the drawing state, so this bounds memory, not work.
MAX_SAVE_DEPTH = 10_000

# How often (in ops) validating a draw call checks the call's deadline. Rendering checks
# before every op, as one op may take milliseconds; validating one takes microseconds.
DEADLINE_CHECK_EVERY = 256

# How long a canvas outlives its run's time limit in the run state. The run ends by then
# (it is killed at its time limit); this only bounds how long leftovers of a killed run
# occupy the cache before they expire on their own.
STATE_GRACE_SECONDS = 3600

# JPEG and WebP quality when the block gives none: the browsers' toDataURL defaults.
DEFAULT_JPEG_QUALITY = 0.92
DEFAULT_WEBP_QUALITY = 0.80
