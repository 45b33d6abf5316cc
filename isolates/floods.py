"""What a run may cost the platform in refused calls and console lines.

A refused call costs the server little work, but each one used to become a row of the
audit log: a block refusing 1,600 calls a second filled the log (and the database's
disk) at that pace. A console line of no text counted nothing against the console cap,
yet each is a frame to relay and an event to publish: thousands a second slowed every
other tenant's calls. Both are bounded per run here, for the broker:

- `RefusalLog`: the first REFUSAL_ROWS_PER_WINDOW refusals of one kind (capability,
  operation, error code) in each REFUSAL_WINDOW seconds are audited one by one; the rest
  become one row saying how many more there were ("N more refusals of files.readFile
  (PERMISSION_DENIED) in the last 60 s"), written when the window closes or the run ends.
  A run refused more than REFUSALS_TO_END times in one window is flooding: it is ended.
- `console_cost()`: every console line costs its text plus CONSOLE_LINE_COST bytes of
  framing against the tenant's console cap, so empty lines are not free (the runtime,
  isolates/runtime/main.js, counts the same way).
- `LineRate`: a run may write CONSOLE_BURST lines at once and CONSOLE_LINES_PER_SECOND
  after that; faster is a flood, and the run is ended. The runtime measures this where
  the lines are made and ends the run itself, with CONSOLE_FLOOD as its error (a busy
  broker reads lines later than they were written, and must not take a backlog for a
  flood); the broker's own bucket, started earlier with the same figures, is the
  backstop should lines ever reach it faster.

The reasons given for ending a run are written for the block's author (the run's error).
"""

import time

from tenants import audit

REFUSAL_WINDOW = 60.0
REFUSAL_ROWS_PER_WINDOW = 5
REFUSALS_TO_END = 1000
# Kinds of refusal told apart per run; past it, an unknown operation's name (which the
# block chooses) is not a kind of its own.
MAX_KINDS = 64
CONSOLE_LINE_COST = 32
CONSOLE_BURST = 10000
CONSOLE_LINES_PER_SECOND = 1000


def console_cost(text):
    """What one console line of `text` counts against the console cap, in bytes."""
    return len(text.encode(errors="replace")) + CONSOLE_LINE_COST


class RefusalLog:
    """The refusals of one run, for the audit log. `fields` are the run's own columns
    (tenant_id, tenant_slug, run_id, user_id)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.fields = {}
        self.kinds = {}  # (capability, operation, code) -> [window start, rows, more]
        self.window_start = None
        self.window_count = 0
        self.flood = None  # the reason to end the run, once it floods

    def bind(self, **fields):
        self.fields = fields

    def admit(self, capability, operation, code):
        """Note a refusal; True when it is to be audited as a row of its own."""
        now = self.clock()
        if self.window_start is None or now - self.window_start >= REFUSAL_WINDOW:
            self.window_start, self.window_count = now, 0
        self.window_count += 1
        if self.window_count > REFUSALS_TO_END and self.flood is None:
            self.flood = (f"The run was ended: it made more than {REFUSALS_TO_END} calls that were refused within "
                          f"{REFUSAL_WINDOW:g} s (the last: {operation}, {code or 'refused'}). Check each call's error "
                          f"before making more.")
        key = (capability, str(operation)[:40], code)
        if key not in self.kinds and len(self.kinds) >= MAX_KINDS:
            key = (capability, "(other operations)", code)
        kind = self.kinds.get(key)
        if kind is not None and now - kind[0] >= REFUSAL_WINDOW:
            self._summarise(key, kind, now)
            kind = None
        if kind is None:
            kind = self.kinds[key] = [now, 0, 0]
        if kind[1] < REFUSAL_ROWS_PER_WINDOW:
            kind[1] += 1
            return True
        kind[2] += 1
        return False

    def close(self):
        """Write the rows of the refusals not audited yet (the run is over)."""
        now = self.clock()
        for key, kind in list(self.kinds.items()):
            self._summarise(key, kind, now)
        self.kinds.clear()

    def _summarise(self, key, kind, now):
        start, _, more = kind
        if not more:
            return
        capability, operation, code = key
        seconds = max(1, round(min(now - start, REFUSAL_WINDOW)))
        audit.record(
            **self.fields, capability=capability, operation=operation, target="", outcome="denied", error_code=code,
            message=(f"{more} more refusals of {capability}.{operation} ({code or 'refused'}) in the last {seconds} s; "
                     f"the first {REFUSAL_ROWS_PER_WINDOW} of each {REFUSAL_WINDOW:g} s are recorded one by one."),
        )
        kind[2] = 0


class LineRate:
    """A token bucket of console lines: CONSOLE_BURST at once, CONSOLE_LINES_PER_SECOND
    after that."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.tokens = float(CONSOLE_BURST)
        self.at = clock()

    def admit(self):
        now = self.clock()
        self.tokens = min(float(CONSOLE_BURST), self.tokens + (now - self.at) * CONSOLE_LINES_PER_SECOND)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


CONSOLE_FLOOD = (f"The run was ended: it wrote console lines faster than {CONSOLE_LINES_PER_SECOND} a second "
                 f"(after a first {CONSOLE_BURST}). Log less often, or gather lines and log them together.")
