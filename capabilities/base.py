"""What every capability handler shares: the call context and the one error type.

A handler is a plain function `handler(ctx, args) -> dict`. It gets the arguments the
block sent (already decoded: `{"$bytes": base64}` becomes `bytes`) and returns the
reply envelope's fields: `{"data": ...}` plus any field the seed reads at the top level
(`size`, `canvasId`, `exitCode`, ...). `bytes` anywhere in the reply reach the block as a
Uint8Array. A handler fails by raising `CapabilityError`; any other exception becomes
`INTERNAL` with a message that says nothing of the server.

Handlers are stateless between calls: what must outlive a call (a canvas's operations)
goes to `run_state()`, so any worker process can take any call.
"""

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.core.cache import caches

ERROR_CODES = (
    "PERMISSION_DENIED",
    "RATE_LIMITED",
    "QUOTA_EXCEEDED",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "TIMEOUT",
    "UPSTREAM_ERROR",
    "INTERNAL",
)


class CapabilityError(Exception):
    """A call that failed, with a code from ERROR_CODES and a message for the block's
    author. The message is shown to the tenant and stored in the audit log: it states
    the fact and never includes server paths, stack traces, secrets or other tenants."""

    def __init__(self, code, message, retry_after=None):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def as_error(self):
        error = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            error["retryAfter"] = self.retry_after
        return error


@dataclass
class CallContext:
    """Everything a handler may know about the call's tenant and run. Built by the
    broker from the database (never from the block's frame) and picklable for RQ."""

    tenant_id: int
    tenant_slug: str
    run_id: str
    policy: "tenants.policy.EffectivePolicy"  # noqa: F821
    storage_root: Path
    allowed_hosts: list = field(default_factory=list)
    webhook_secret: str = ""
    # The run's sealed secrets (capabilities.network.sealed.Seal): placeholders, hosts
    # and ciphertext, never a value.
    sealed: tuple = ()
    deadline: float | None = None  # time.time() by which the block stops waiting

    # The call's deadline is read only through these methods, so that "out of time" means
    # the same thing in every capability. A context without a deadline (a handler called
    # directly, by a test or a worker given none) never runs out of time by itself.

    def time_left(self):
        """Seconds until the deadline (negative once it has passed), or None without one."""
        if self.deadline is None:
            return None
        return self.deadline - time.time()

    def expired(self):
        """Whether the deadline has passed."""
        left = self.time_left()
        return left is not None and left <= 0

    def check_deadline(self, message, keep=0.0):
        """Raise TIMEOUT with `message` (what did not happen, for the block's author) once
        the deadline has passed, or once fewer than `keep` seconds are left."""
        left = self.time_left()
        if left is not None and left <= keep:
            raise CapabilityError("TIMEOUT", message)

    def timeout(self, cap, keep=0.0):
        """Seconds a blocking step may take: `cap`, or the time left less `keep` when that
        is shorter. Never negative."""
        left = self.time_left()
        if left is None:
            return cap
        return max(0.0, min(cap, left - keep))

    def bounded(self, seconds):
        """This context, or, when it has no deadline, a copy whose deadline is `seconds`
        from now: for work that must end even when nobody set it a deadline."""
        if self.deadline is not None:
            return self
        return replace(self, deadline=time.time() + seconds)

    def ending_in(self, seconds):
        """A copy whose deadline is `seconds` from now (a step's own deadline, inside the
        call's: `seconds` from timeout())."""
        return replace(self, deadline=time.time() + seconds)

    def tenant_path_root(self):
        self.storage_root.mkdir(parents=True, exist_ok=True)
        return self.storage_root


def run_state():
    """A cache shared by every process of the platform (Redis when configured,
    process memory otherwise), for what a run keeps between calls."""
    return caches["runstate"]
