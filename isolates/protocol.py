"""The frames isolates and the broker exchange, as JSON text over the websocket.

isolate -> broker: wait {key} (a warm isolate's connection, before its run is known),
                   hello {token}, started, call {id, op, args}, log {level, text, t},
                   done {ok, result | error}
broker -> isolate: start {code, name, input, env, callTimeoutMs, maxInFlight, consoleCap,
                          maxFrameBytes, operations {name: capability}},
                   reply {id, ok, envelope | error}, stop {reason},
                   part {text, last} (a large frame's text in slices)

Binary values travel as {"$bytes": base64} anywhere in a frame.
"""

import base64
import json

# Limits of the broker, in one place. Each bounds what one isolate can make the server hold.
LIMITS = {
    # Largest frame the broker reads: a 5 MB file (Interactive's limit) is 6.7 MB in
    # base64; larger files need larger frames, so the cap follows the profile (see
    # frame_limit) but never exceeds this ceiling, which is also the websocket
    # transport's message limit (settings.DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE). One
    # writeFile call therefore carries at most about 96 MB.
    "frame_ceiling": 128 * 1024 * 1024,
    "frame_floor": 8 * 1024 * 1024,
    # A reply frame larger than this goes as "part" frames of this size: Deno's
    # websocket client drops any message over 64 MiB.
    "part_size": 8 * 1024 * 1024,
    # The largest reply one call can return (about 96 MB of binary data in base64).
    "reply_max": 128 * 1024 * 1024,
    # Calls one run may have in flight at once: enough for Promise.all over a page of
    # work, small enough that one run cannot fill the dispatcher's queues.
    "max_in_flight": 64,
    # How long a block waits for one reply before its promise rejects with TIMEOUT.
    "call_timeout_ms": 30_000,
    # Depth of nested objects in arguments: deeper is refused rather than recursed into.
    "max_depth": 64,
}

FRAME_KEYS = {
    "wait": {"type", "key"},
    "hello": {"type", "token"},
    "started": {"type"},
    "call": {"type", "id", "op", "args"},
    "log": {"type", "level", "text", "t"},
    "done": {"type", "ok", "result", "error"},
}
LOG_LEVELS = {"log", "info", "warn", "error", "debug"}


def frame_limit(policy):
    """Largest frame for a run under this policy: room for its largest file in base64."""
    wanted = policy.max_file_size * 4 // 3 + 64 * 1024 if policy else 0
    return min(max(wanted, LIMITS["frame_floor"]), LIMITS["frame_ceiling"])


class FrameError(ValueError):
    pass


def decode_value(value, depth=0):
    if depth > LIMITS["max_depth"]:
        raise FrameError("The arguments are nested too deeply.")
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value and isinstance(value["$bytes"], str):
            try:
                return base64.b64decode(value["$bytes"], validate=True)
            except ValueError:
                raise FrameError("Binary data in the frame is not valid base64.") from None
        return {str(k): decode_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v, depth + 1) for v in value]
    return value


def _default(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_frame(frame):
    return json.dumps(frame, default=_default, separators=(",", ":"), allow_nan=False)


def parse_frame(text):
    """A frame as a dict, checked for shape. Raises FrameError with a factual message."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError("The isolate sent a frame that is not valid JSON.") from None
    if not isinstance(frame, dict) or frame.get("type") not in FRAME_KEYS:
        raise FrameError("The isolate sent a frame of an unknown type.")
    extra = set(frame) - FRAME_KEYS[frame["type"]]
    if extra:
        raise FrameError(f"The isolate sent a {frame['type']} frame with unexpected fields: {', '.join(sorted(extra))[:80]}.")
    return frame
