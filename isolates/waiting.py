"""Warm isolates' connections to the broker, waiting for their run (docs/broker.md).

A warm isolate opens its connection while it waits in the pool and says it waits on it
with the key the pool gave it at spawn (on stdin, which nothing but the pool writes).
When the pool assigns the isolate a run, it binds the run to that connection here, in
memory: the broker claims the run and sends its start at once, with no word to the
isolate on stdin and no hello back. An isolate whose connection is not waiting (not yet
open, or closed) is assigned on stdin and says hello, as any isolate can.

Only keys the pool issued are kept, one entry per live isolate, so that a connection
cannot park itself here with a key of its own. Nothing here imports Django: the pool
uses it.
"""

import asyncio

# key -> None (issued, no connection waits) or (loop, bind): bind(token) is the waiting
# connection's coroutine that claims and starts the run.
_waiting = {}


def expect(key):
    """The pool spawned an isolate with this key."""
    _waiting[key] = None


def forget(key):
    """The isolate exited or was assigned: its key binds nothing any more."""
    _waiting.pop(key, None)


def connection_waits(key, bind):
    """A connection says it is the isolate of `key`, waiting: True if it is now the one
    the pool will bind a run to (the key was issued, and no other connection has it)."""
    if not isinstance(key, str) or key not in _waiting or _waiting[key] is not None:
        return False
    _waiting[key] = (asyncio.get_running_loop(), bind)
    return True


def connection_gone(key, bind):
    """The waiting connection closed before a run was bound to it."""
    entry = _waiting.get(key)
    if entry is not None and entry[1] == bind:
        _waiting[key] = None


def take(key):
    """The waiting connection's bind(token) for this isolate, once (None when no
    connection of this event loop waits): the key binds nothing after this."""
    entry = _waiting.pop(key, None)
    if entry is None:
        return None
    loop, bind = entry
    return bind if loop is asyncio.get_running_loop() else None
