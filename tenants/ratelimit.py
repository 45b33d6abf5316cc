"""Rate limits per tenant and capability, in calls per minute.

The algorithm is GCRA (the generic cell rate algorithm, as in redis-cell): a limit of N
per minute admits one call every 60/N seconds on average and a burst of up to N calls at
once, and a refused call learns exactly when it may try again. Unlike fixed per-minute
windows it never lets 2N calls through around a window boundary.

With Redis configured the state is one key per (tenant, capability) updated by a Lua
script, so every server process shares one count atomically. Without Redis it is a dict
in this process guarded by a lock, which is right for the embedded single-process setup.

The broker counts calls on its event loop with `acheck_rate`: on Redis one round trip of
the loop's own asyncio client, which never blocks the loop while it waits (other runs'
frames are handled meanwhile); locally, the dict, which does not wait at all.
"""

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass

import redis
import redis.asyncio

from django.conf import settings

PERIOD = 60.0  # seconds: limits are "per minute"


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after: float = 0.0  # seconds until the next call would be admitted


# KEYS[1]: the limiter key. ARGV: emission interval, burst tolerance (both seconds).
# The script reads the server's clock so that every process agrees on "now".
GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, tostring(allow_at - now)}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, '0'}
"""


def _parameters(limit, period=PERIOD):
    interval = period / limit
    return interval, period - interval


class LocalRateLimiter:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.tat = {}

    def hit(self, key, limit, period=PERIOD):
        interval, tolerance = _parameters(limit, period)
        with self.lock:
            now = self.clock()
            tat = max(self.tat.get(key, now), now)
            if now < tat - tolerance:
                return RateDecision(False, tat - tolerance - now)
            self.tat[key] = tat + interval
            if len(self.tat) > 100_000:
                # Forget keys whose budget is full again; they behave as new keys.
                self.tat = {k: v for k, v in self.tat.items() if v > now}
            return RateDecision(True)

    def reset(self):
        with self.lock:
            self.tat.clear()


class RedisRateLimiter:
    def __init__(self, url, prefix="symposium:rate:"):
        # Calls are counted on the server's event loop: a Redis that hangs must not
        # freeze it, so a count that takes over a second fails (and the call with it).
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.script = self.client.register_script(GCRA_SCRIPT)
        self.prefix = prefix
        self.url = url
        self.async_scripts = weakref.WeakKeyDictionary()  # event loop -> its client's script

    def hit(self, key, limit, period=PERIOD):
        interval, tolerance = _parameters(limit, period)
        allowed, retry = self.script(keys=[self.prefix + key], args=[interval, tolerance])
        return RateDecision(bool(allowed), float(retry))

    async def ahit(self, key, limit, period=PERIOD):
        """As hit(), on the running event loop's asyncio client (its connections belong
        to that loop), without blocking the loop."""
        loop = asyncio.get_running_loop()
        script = self.async_scripts.get(loop)
        if script is None:
            client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
            script = self.async_scripts[loop] = client.register_script(GCRA_SCRIPT)
        interval, tolerance = _parameters(limit, period)
        allowed, retry = await script(keys=[self.prefix + key], args=[interval, tolerance])
        return RateDecision(bool(allowed), float(retry))

    def reset(self):
        for key in self.client.scan_iter(self.prefix + "*"):
            self.client.delete(key)


_limiter = None
_limiter_lock = threading.Lock()


def limiter():
    global _limiter
    with _limiter_lock:
        if _limiter is None:
            _limiter = RedisRateLimiter(settings.REDIS_URL) if settings.REDIS_URL else LocalRateLimiter()
        return _limiter


def reset_limiter():
    """Forget the limiter (tests switch settings between Redis and none)."""
    global _limiter
    with _limiter_lock:
        _limiter = None


def check_rate(tenant_id, capability, per_minute):
    """Count one call of `capability` for the tenant. A limit of 0 means no limit."""
    if not per_minute:
        return RateDecision(True)
    return limiter().hit(f"{tenant_id}:{capability}", per_minute)


async def acheck_rate(tenant_id, capability, per_minute):
    """check_rate() for code on an event loop: never blocks it."""
    if not per_minute:
        return RateDecision(True)
    counter = limiter()
    if isinstance(counter, RedisRateLimiter):
        return await counter.ahit(f"{tenant_id}:{capability}", per_minute)
    return counter.hit(f"{tenant_id}:{capability}", per_minute)


def check_hourly_rate(tenant_id, what, per_hour):
    """Count one `what` (an email sent) for the tenant against a limit per hour, with a
    burst of up to the whole hour's allowance. A limit of 0 means none is allowed."""
    if not per_hour:
        return RateDecision(False, PERIOD * 60)
    return limiter().hit(f"{tenant_id}:{what}:hour", per_hour, PERIOD * 60)
