"""What a run shows whoever watches it, and what its record keeps of its console.

`RunEvents` publishes a run's events (started, call, log, image, done) to the run's
channel group, in order and off the reply's path: the broker queues an event and goes
on, one task per run sends them. Its calls and console lines (an event per call, the
most of them by far) are published only while someone watches the run: the group has a
member, as the channel layer says, asked at most every WATCH_CHECK_SECONDS and off the
call's path (and all of them in the run's first second, for the watcher that started
it). Its start, images and end always are (the API's wait reads the end).

`Console` keeps the block's console as its record stores it: entries up to the tenant's
cap, each with the time it was printed.
"""

import asyncio
import logging
import math
import time

from isolates.floods import LineRate, console_cost
from isolates.protocol import LOG_LEVELS
from tenants import audit

logger = logging.getLogger(__name__)


def run_group(run_id):
    """The group whoever watches a run joins (the runner page, runblock, the API's wait)."""
    return f"run-{run_id}"


def control_group(run_id):
    """The group the run's own broker connection listens on (to be told to stop)."""
    return f"run-control-{run_id}"


# The most events of a run waiting to be sent. A run whose console lines or calls come
# faster than the channel layer takes them (ten thousand lines in a burst, with Redis a
# round trip each) would otherwise hold them all in memory, and its end would wait until
# every one was sent. Past it, console lines and calls are not shown live (watchers see
# one notice; the run's record keeps them all); its start, images and end always are.
EVENT_BACKLOG = 256
DROPPABLE = {"log", "call"}
# How often a run asks whether anyone watches it: a watcher that joins while the run is
# going sees its calls and lines from at most this long after it joined.
WATCH_CHECK_SECONDS = 0.5
# For its first second a run publishes everything whatever the answer: whoever starts a
# run joins its group right after (the runner page, runblock, the API's wait), which may
# be after its first events; they miss none.
WATCH_GRACE_SECONDS = 1.0


async def group_has_members(layer, group):
    """Whether the channel-layer group has a member now: True, False, or None when the
    layer cannot tell (a layer of another kind), which counts as watched."""
    groups = getattr(layer, "groups", None)
    if isinstance(groups, dict):  # channels' InMemoryChannelLayer, this process's groups
        expiry = getattr(layer, "group_expiry", 86400)
        members = groups.get(group) or {}
        now = time.time()
        return any(joined > now - expiry for joined in members.values())
    if hasattr(layer, "_group_key") and hasattr(layer, "consistent_hash"):  # channels_redis
        connection = layer.connection(layer.consistent_hash(group))
        return await connection.zcount(layer._group_key(group), time.time() - layer.group_expiry, "+inf") > 0
    return None


class RunEvents:
    def __init__(self, channel_layer, run_id):
        self.channel_layer = channel_layer
        self.run_id = run_id
        self.queue = None
        self.sender = None
        self.dropped = 0
        self.watched = None  # the last answer of group_has_members (None: not known)
        self.checked_at = None
        self.checking = None
        self.since = time.monotonic()

    def publish(self, event):
        """Queue an event for the run's watchers; never waits. A call or a console line
        nobody watches is not sent."""
        if event["event"] in DROPPABLE and not self.is_watched():
            return
        if self.sender is None:
            self.queue = asyncio.Queue()
            self.sender = asyncio.ensure_future(self.send_all())
        if event["event"] in DROPPABLE and self.queue.qsize() >= EVENT_BACKLOG:
            self.dropped += 1
            if self.dropped > 1:
                return
            event = {"event": "log", "level": "warn", "t": time.time() * 1000,
                     "text": "This run's console and calls come faster than they can be shown live; "
                             "the rest are in the run's record when it ends."}
        self.queue.put_nowait({"type": "run.event", "run": self.run_id, **event})

    def is_watched(self):
        """Whether someone watched the run when last asked; asked again (in a task) once
        WATCH_CHECK_SECONDS have passed. Not known yet, or not knowable: watched; and
        always in the run's first WATCH_GRACE_SECONDS."""
        now = time.monotonic()
        if now - self.since < WATCH_GRACE_SECONDS:
            return True
        if self.checking is None and (self.checked_at is None or now - self.checked_at >= WATCH_CHECK_SECONDS):
            self.checked_at = now
            self.checking = asyncio.ensure_future(self.check_watched())
        return self.watched is not False

    async def check_watched(self):
        try:
            self.watched = await group_has_members(self.channel_layer, run_group(self.run_id))
        except Exception:
            self.watched = None  # the layer is down: sending fails (and says so) on its own
        finally:
            self.checking = None

    async def send_all(self):
        failing = False
        while True:
            event = await self.queue.get()
            try:
                await self.channel_layer.group_send(run_group(self.run_id), event)
                failing = False
            except Exception as e:
                # Watchers miss events while the channel layer is down (they read the
                # run's record at the end); one line per outage, not one per event.
                if not failing:
                    logger.warning("publishing events of run %s failed: %s", self.run_id, str(e)[:200])
                failing = True
            finally:
                self.queue.task_done()

    async def flush(self):
        """Wait until every queued event is sent."""
        if self.sender is not None:
            await self.queue.join()

    def close(self):
        if self.sender is not None:
            self.sender.cancel()
        if self.checking is not None:
            self.checking.cancel()


class Console:
    """The block's console as the run's record keeps it (BlockRun.console,
    console_times, console_truncated)."""

    def __init__(self, since_ms):
        self.since = since_ms  # the run's start, epoch ms
        self.parts = []
        self.times = []  # ms since the run's start, per entry ([ms, lines] for several lines)
        self.last = 0  # the last entry's time
        self.bytes = 0
        self.truncated = False
        self.rate = LineRate()

    def add(self, frame, cap):
        """The events a log frame shows its watchers; the entry is kept if the tenant's
        cap (bytes) allows.
        Its text is the block's, as the record can store it and every consumer encode it:
        a lone surrogate or a NUL becomes U+FFFD."""
        if self.truncated:
            return []
        level = frame.get("level") if frame.get("level") in LOG_LEVELS else "log"
        text = audit.storable(frame.get("text"))
        # Each line costs its framing too (an empty line is not free; see isolates/floods.py).
        remaining = cap - self.bytes
        if console_cost(text) > remaining:
            text = text.encode()[: max(0, remaining - console_cost(""))].decode(errors="ignore")
            self.truncated = True
        events = []
        if text or not self.truncated:  # the cap leaves no line of nothing
            self.bytes += console_cost(text)
            self.parts.append(f"[{level}] {text}" if level not in ("log", "info") else text)
            self.note_time(frame.get("t"), text.count("\n") + 1)
            events.append({"event": "log", "level": level, "text": text, "t": frame.get("t")})
        if self.truncated:
            events.append({"event": "log", "level": "warn", "t": time.time() * 1000,
                           "text": f"Console output reached this tenant's cap of {cap} bytes; the rest is dropped."})
        return events

    def note_time(self, printed, lines):
        """When an entry was printed: the isolate's clock (its frame's `t`, ms) held
        between the previous entry's time and now, so a block cannot date its lines
        before its start, after their arrival or out of order."""
        now = time.time() * 1000 - self.since
        at = printed - self.since if isinstance(printed, (int, float)) and math.isfinite(printed) else now
        ms = self.last = int(min(max(at, self.last), max(now, self.last)))
        self.times.append(ms if lines == 1 else [ms, lines])

    def record_fields(self):
        return {"console": "\n".join(self.parts), "console_times": self.times, "console_truncated": self.truncated}
