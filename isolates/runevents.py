"""What a run shows whoever watches it, and what its record keeps of its console.

`RunEvents` publishes a run's events (started, call, log, image, done) to the run's
channel group, in order and off the reply's path: the broker queues an event and goes
on, one task per run sends them. `Console` keeps the block's console as its record
stores it: entries up to the tenant's cap, each with the time it was printed.
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


class RunEvents:
    def __init__(self, channel_layer, run_id):
        self.channel_layer = channel_layer
        self.run_id = run_id
        self.queue = None
        self.sender = None
        self.dropped = 0

    def publish(self, event):
        """Queue an event for the run's watchers; never waits."""
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
