"""Canvases in the run state: a canvas is its size plus its validated ops.

Nothing is rendered until export, so a canvas costs the cache only its ops, and any
worker process can take any call of the run. Keys are scoped by the tenant and run from the
call context (never by anything the block sends), so a canvas id from another run
names nothing here.

Layout, for canvas number n of run r of tenant t (the id a block sees is
"c<n>-<random>"; the random part makes an id of an earlier run useless in a later one):

    canvas:t:r:count        canvases the run has created (an atomic counter)
    canvas:t:r:n:meta       {"id", "width", "height"}
    canvas:t:r:n:ops        ops reserved on the canvas (an atomic counter)
    canvas:t:r:n:text       text characters stored on the canvas (an atomic counter)
    canvas:t:r:n:chunks     draw calls stored (an atomic counter)
    canvas:t:r:n:chunk:k    (first op's index, [ops]) of the k-th draw call

Each draw call stores its own chunk instead of rewriting one growing list, so a run
drawing in many small calls costs linear, not quadratic, cache traffic, and two calls
drawing at once never lose each other's ops: counters are reserved with the cache's
atomic increment (Redis INCR, or a lock in process memory) before anything is stored.
"""

import re
import secrets

from capabilities.base import run_state
from capabilities.canvas import limits

CANVAS_ID = re.compile(r"c([1-9][0-9]{0,6})-([0-9a-f]{12})")


def _key(scope, *parts):
    return ":".join(["canvas", scope, *map(str, parts)])


def _scope(ctx):
    # The tenant as well as the run: run ids are random and unique, and a key naming
    # both cannot collide across tenants even if two runs shared an id.
    return f"{ctx.tenant_id}:{ctx.run_id}"


def _timeout(ctx):
    return int(ctx.policy.time_limit_seconds) + limits.STATE_GRACE_SECONDS


def _counter_add(cache, key, delta, timeout):
    """Atomically add delta to a counter (created at 0) and return the new value."""
    cache.add(key, 0, timeout)
    try:
        return cache.incr(key, delta)
    except ValueError:
        # The key expired between add() and incr(): the run outlived its state.
        cache.add(key, 0, timeout)
        return cache.incr(key, delta)


def reserve_canvas_number(ctx):
    """The next canvas number of the run, or None when the run has made its last one."""
    cache = run_state()
    key = _key(_scope(ctx), "count")
    number = _counter_add(cache, key, 1, _timeout(ctx))
    if number > ctx.policy.canvas_max_per_run:
        cache.decr(key, 1)
        return None
    return number


def create(ctx, number, width, height):
    canvas_id = f"c{number}-{secrets.token_hex(6)}"
    run_state().set(_key(_scope(ctx), number, "meta"), {"id": canvas_id, "width": width, "height": height}, _timeout(ctx))
    return canvas_id


def find(ctx, canvas_id):
    """(number, meta) of a canvas of this run, or None."""
    if not isinstance(canvas_id, str):
        return None
    match = CANVAS_ID.fullmatch(canvas_id)
    if not match:
        return None
    number = int(match.group(1))
    meta = run_state().get(_key(_scope(ctx), number, "meta"))
    if meta is None or not secrets.compare_digest(meta["id"], canvas_id):
        return None
    return number, meta


def meta(ctx, number):
    return run_state().get(_key(_scope(ctx), number, "meta"))


def op_count(ctx, number):
    return run_state().get(_key(_scope(ctx), number, "ops")) or 0


def text_count(ctx, number):
    return run_state().get(_key(_scope(ctx), number, "text")) or 0


def reserve(ctx, number, op_total, text_total, max_ops):
    """Reserve room for ops and text on a canvas. Returns the first op's index, or
    None (having reserved nothing) when the canvas's op or text limit would be passed."""
    cache, timeout = run_state(), _timeout(ctx)
    ops_key, text_key = _key(_scope(ctx), number, "ops"), _key(_scope(ctx), number, "text")
    end = _counter_add(cache, ops_key, op_total, timeout)
    if end > max_ops:
        cache.decr(ops_key, op_total)
        return None
    if text_total:
        text_end = _counter_add(cache, text_key, text_total, timeout)
        if text_end > limits.MAX_TEXT_PER_CANVAS:
            cache.decr(text_key, text_total)
            cache.decr(ops_key, op_total)
            return None
    return end - op_total


def append(ctx, number, start, ops):
    cache, timeout = run_state(), _timeout(ctx)
    chunk = _counter_add(cache, _key(_scope(ctx), number, "chunks"), 1, timeout)
    cache.set(_key(_scope(ctx), number, "chunk", chunk), (start, ops), timeout)


def load_ops(ctx, number, upto=None):
    """The canvas's ops in order (the first `upto` of them when given).

    A chunk whose counter is reserved but which is not stored yet belongs to a draw call
    still in flight, one the block did not await before exporting; its ops are left out,
    as they would be from a browser canvas the draw had not reached yet.
    """
    cache = run_state()
    chunks = cache.get(_key(_scope(ctx), number, "chunks")) or 0
    keys = [_key(_scope(ctx), number, "chunk", k) for k in range(1, chunks + 1)]
    stored = cache.get_many(keys) if keys else {}
    ops = []
    for start, chunk_ops in sorted(stored.values(), key=lambda chunk: chunk[0]):
        if upto is not None and start >= upto:
            break
        ops.extend(chunk_ops if upto is None else chunk_ops[: upto - start])
    return ops


def discard_run(ctx):
    """Forget every canvas of the context's run (for the broker to call when the run
    ends; the state expires on its own otherwise)."""
    cache, scope = run_state(), _scope(ctx)
    count = min(cache.get(_key(scope, "count")) or 0, ctx.policy.canvas_max_per_run)
    keys = [_key(scope, "count")]
    for number in range(1, count + 1):
        chunks = cache.get(_key(scope, number, "chunks")) or 0
        keys += [_key(scope, number, part) for part in ("meta", "ops", "text", "chunks")]
        keys += [_key(scope, number, "chunk", k) for k in range(1, chunks + 1)]
    cache.delete_many(keys)
