"""One budget of memory for the memory-heavy calls of a server process.

A canvas export of the largest canvas holds hundreds of MB while it renders and encodes
(its estimate, capabilities/canvas/limits.py), an image transform a few times its
picture; each is bounded per call, but calls run side by side: eight 8K exports at once
took a server process to 1.9 GB. Every such call therefore reserves its estimate from
this process-wide budget (SYMPOSIUM_HEAVY_MEMORY_MB) before it allocates a pixel, and
gives it back when it is done. A call that does not fit waits its turn, first come first
served, so that a large call is not starved by a stream of small ones; the wait is
bounded (by WAIT_SECONDS and by the call's own deadline), after which the call is refused
with RATE_LIMITED and a retry hint, never left hanging. A call that could never fit, even
alone, is refused at once with QUOTA_EXCEEDED.

The budget is per process: each web process and each RQ worker has its own (an RQ worker
runs one job at a time, so the per-call bound holds there already). docs/canvas.md and
docs/image.md say what a block sees.
"""

import collections
import contextlib
import threading
import time

from django.conf import settings

from capabilities.base import CapabilityError

MB = 1024 * 1024

# Longest a call waits for room in the budget. Long enough for the largest export that
# runs ahead of it to finish on a loaded machine (a few seconds), short enough that a
# block learns of a busy server while its call can still be retried.
WAIT_SECONDS = 10.0


class MemoryBudget:
    """Bytes reserved by the memory-heavy calls running in this process."""

    def __init__(self, capacity_bytes=None):
        self._capacity = capacity_bytes  # None: SYMPOSIUM_HEAVY_MEMORY_MB, read at each call
        self._changed = threading.Condition()
        self._in_use = 0
        self._waiting = collections.deque()  # tickets of calls waiting, oldest first

    @property
    def capacity(self):
        return self._capacity if self._capacity is not None else settings.SYMPOSIUM_HEAVY_MEMORY_MB * MB

    @property
    def in_use(self):
        return self._in_use

    @contextlib.contextmanager
    def reserve(self, nbytes, ctx, what):
        """Hold `nbytes` of the budget for the duration of the block. `what` names the
        work for the block's author ("Exporting this canvas")."""
        nbytes = max(0, int(nbytes))
        capacity = self.capacity
        if nbytes > capacity:
            raise CapabilityError(
                "QUOTA_EXCEEDED",
                f"{what} would need about {nbytes // MB} MB; this server runs memory-heavy work of at most "
                f"{capacity // MB} MB at once.",
            )
        wait = ctx.timeout(WAIT_SECONDS) if ctx is not None else WAIT_SECONDS
        give_up = time.monotonic() + wait
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            try:
                while self._waiting[0] is not ticket or self._in_use + nbytes > self.capacity:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        raise CapabilityError(
                            "RATE_LIMITED",
                            f"{what} needs about {nbytes // MB} MB, and this server's memory for such work is in use by "
                            f"other calls; none came free within {wait:.0f} s. Retry in a moment.",
                            retry_after=1,
                        )
                    self._changed.wait(left)
                self._in_use += nbytes
            finally:
                self._waiting.remove(ticket)
                # The next in line may fit now (or be first now).
                self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= nbytes
                self._changed.notify_all()


_process_budget = MemoryBudget()


def process_budget():
    """This process's budget, shared by every memory-heavy capability."""
    return _process_budget
