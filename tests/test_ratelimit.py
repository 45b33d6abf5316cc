"""The per-minute rate limiter, in process and on the real Redis."""

import pytest
import redis

from tenants.ratelimit import LocalRateLimiter, RedisRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/15"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_it_admits_a_burst_of_the_limit_then_refuses_with_retry_after():
    clock = FakeClock()
    limiter = LocalRateLimiter(clock)
    assert all(limiter.hit("t:network", 10).allowed for _ in range(10))
    refused = limiter.hit("t:network", 10)
    assert not refused.allowed
    assert 5.9 < refused.retry_after <= 6.0  # one call every 6 s at 10/min
    clock.now += refused.retry_after
    assert limiter.hit("t:network", 10).allowed
    assert not limiter.hit("t:network", 10).allowed


def test_it_keeps_tenants_and_capabilities_apart():
    limiter = LocalRateLimiter(FakeClock())
    for _ in range(10):
        limiter.hit("a:network", 10)
    assert not limiter.hit("a:network", 10).allowed
    assert limiter.hit("b:network", 10).allowed
    assert limiter.hit("a:files", 10).allowed


def test_it_refills_after_a_minute():
    clock = FakeClock()
    limiter = LocalRateLimiter(clock)
    for _ in range(30):
        limiter.hit("t:network", 30)
    assert not limiter.hit("t:network", 30).allowed
    clock.now += 60
    assert sum(limiter.hit("t:network", 30).allowed for _ in range(40)) == 30


@pytest.fixture
def redis_limiter():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield RedisRateLimiter(REDIS_URL, prefix="test:rate:")
    client.flushdb()


def test_it_counts_atomically_on_redis_across_clients(redis_limiter):
    other_process = RedisRateLimiter(REDIS_URL, prefix="test:rate:")
    results = [(redis_limiter if i % 2 else other_process).hit("t:network", 10) for i in range(12)]
    assert [r.allowed for r in results] == [True] * 10 + [False] * 2
    assert 5.0 < results[-1].retry_after <= 6.0


def test_the_redis_window_refills_with_time(redis_limiter):
    import time

    for _ in range(60):
        redis_limiter.hit("t:files", 60)  # then one call a second
    refused = redis_limiter.hit("t:files", 60)
    assert not refused.allowed and 0 < refused.retry_after <= 1.0
    time.sleep(refused.retry_after + 0.05)
    assert redis_limiter.hit("t:files", 60).allowed


def test_keys_expire_on_redis(redis_limiter):
    redis_limiter.hit("t:network", 10)
    ttl = redis_limiter.client.pttl("test:rate:t:network")
    assert 0 < ttl <= 8000


def test_the_event_loops_count_is_the_same_count_as_the_threads(settings):
    """The broker counts on its event loop with the asyncio client (acheck_rate), other
    code with the blocking one: one limit, whichever counts."""
    import asyncio

    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (the suite's second run)")
    limiter = RedisRateLimiter(settings.REDIS_URL, prefix="test:rate-loop:")
    limiter.reset()
    try:
        assert all(limiter.hit("t:files", 4).allowed for _ in range(2))

        async def on_the_loop():
            return [await limiter.ahit("t:files", 4) for _ in range(3)]

        results = asyncio.run(on_the_loop())
        assert [r.allowed for r in results] == [True, True, False]
        assert 14.0 < results[-1].retry_after <= 15.0  # one call every 15 s at 4/min
        assert not limiter.hit("t:files", 4).allowed
    finally:
        limiter.reset()
