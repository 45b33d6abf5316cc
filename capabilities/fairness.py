"""Fair shares of the shared executors: no tenant's calls can fill them.

A server process runs its inline calls on SYMPOSIUM_INLINE_THREADS threads, and every
server's RQ calls share the RQ workers. Without a share per tenant, one tenant with many
slow calls in flight (64 `sleep`s) holds all of them, and another tenant's `fileExists`
waits for those to end. So `dispatch_call` takes a slot of the tenant's own before a
call reaches a thread or a worker:

- at most `policy.concurrent_calls` calls of one tenant hold a thread of this process at
  once, and never more than half the threads;
- at most `policy.concurrent_calls` RQ jobs of one tenant are in flight from this server
  process at once, and never more than half the workers listening on the queue.

A call beyond its tenant's share waits in that tenant's own queue (first come, first
served), with its deadline running, and holds nothing shared while it waits. Another
tenant's call therefore finds a thread (or worker) free unless other tenants together
hold them all; the half bound means one tenant alone never can.

A slot is given back when what it held is free again, not when the block stopped
waiting: a handler thread still running past the call's deadline, or an RQ job still on
a worker, keeps its tenant's slot until it ends. Timing out calls therefore never lets a
tenant hold more than its share.

The slots are counted per event loop (one per server process in production), on that
loop only; threads give slots back through `call_soon_threadsafe`.
"""

import asyncio
import logging
import weakref
from collections import deque

logger = logging.getLogger(__name__)


class TenantSlots:
    """The slots one tenant holds of one shared executor, and its calls waiting for one,
    in the order they came."""

    def __init__(self, loop, key, table):
        self.loop = loop
        self.key = key
        self.table = table  # the loop's table of TenantSlots, which forgets idle ones
        self.held = 0
        self.waiting = deque()

    async def acquire(self, cap):
        """Wait until fewer than `cap` slots are held, then hold one. Cancellation while
        waiting leaves nothing held."""
        if self.held < cap and not self.waiting:
            self.held += 1
            return
        waiter = self.loop.create_future()
        self.waiting.append((waiter, cap))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it gave up: pass it on
            else:
                try:
                    self.waiting.remove((waiter, cap))
                except ValueError:
                    pass
                self._forget_if_idle()
            raise

    def release(self):
        """Give a slot back: to the first waiting call when there is one (its cap may be
        lower than when it started waiting, after a policy change: then only once the
        held slots are below it), else to the pool."""
        self.held -= 1
        while self.waiting:
            waiter, cap = self.waiting[0]
            if waiter.done():  # cancelled while waiting
                self.waiting.popleft()
                continue
            if self.held >= cap:
                break
            self.waiting.popleft()
            self.held += 1
            waiter.set_result(None)
        self._forget_if_idle()

    def release_threadsafe(self):
        """Give a slot back from another thread (a handler's, when it ends)."""
        try:
            self.loop.call_soon_threadsafe(self.release)
        except RuntimeError:
            pass  # the loop is closed: its slots went with it

    def _forget_if_idle(self):
        if self.held <= 0 and not self.waiting and self.table.get(self.key) is self:
            del self.table[self.key]


# Event loop -> {(executor, tenant id): TenantSlots}. Weak: a closed loop (a test's) is
# forgotten with its slots.
_tables = weakref.WeakKeyDictionary()


def slots_for(executor, tenant_id):
    """The tenant's slots of `executor` ("inline" or "rq") on the running event loop."""
    loop = asyncio.get_running_loop()
    table = _tables.get(loop)
    if table is None:
        table = _tables[loop] = {}
    key = (executor, tenant_id)
    slots = table.get(key)
    if slots is None:
        slots = table[key] = TenantSlots(loop, key, table)
    return slots


def share(per_tenant, shared):
    """A tenant's cap on an executor of `shared` threads or workers: its profile's
    `per_tenant`, never more than half of them, and at least one."""
    return max(1, min(per_tenant, shared // 2))

