"""The tenant's storage in use, for the storage quota: one quota for its files and its
database, whichever engine holds the database.

Usage is the sum of the sizes of the regular files under the tenant's root, everything
included: the platform's folder (the tenant's SQLite database is the tenant's data),
files written by processes, and temporary files of writes in progress. A file with
several hard links counts once; folders and links count nothing. On PostgreSQL the
tenant's database is not a file of its storage: what its schema holds on the database
server (tables with their indexes and TOAST, materialized views, sequences) is added
(capabilities.database.postgres.tenant_bytes), so files and database together are
bounded by the one quota (docs/database.md says how each engine enforces its side).

Measuring walks the tree (os.fwalk: by descriptor, never following links), which costs
about 5 ms per thousand files on this machine. So the figure is cached in run_state() for
USAGE_CACHE_SECONDS and adjusted by each write and delete of the file API, under a lock
on the tenant's root folder, so that two parallel writes cannot both fit in the last
free megabyte. Writes that bypass the file API (a process, the database) are not seen
until the figure expires or is dropped (process.execute drops it when it has applied a
command's writes; a database call adjusts it by what the database grew or shrank).
"""

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager

from capabilities.base import run_state

# How long a measured figure is trusted. Bounds how stale the quota can be after writes
# the file API does not see (the SQLite database growing).
USAGE_CACHE_SECONDS = 60
# How long a write waits for another write of the same tenant, when the call itself has
# no deadline.
LOCK_WAIT_SECONDS = 30


def _cache_key(ctx):
    return f"files-usage:{ctx.tenant_id}"


def _database_key(ctx):
    return f"database-usage:{ctx.tenant_id}"


def measure_usage(root_fd):
    """Bytes in regular files under the folder `root_fd`, walked without following links."""
    total = 0
    seen = set()
    for _, _, filenames, dir_fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
        for name in filenames:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we walked
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def current_usage(ctx, root_fd):
    """The tenant's usage, files and database: the cached figures, or fresh measurements
    (then cached)."""
    usage = run_state().get(_cache_key(ctx))
    if usage is None:
        usage = measure_usage(root_fd)
        run_state().set(_cache_key(ctx), usage, USAGE_CACHE_SECONDS)
    return usage + database_usage(ctx)


def files_usage(ctx):
    """current_usage() for a caller that has not opened the storage root."""
    root_fd = os.open(ctx.tenant_path_root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return current_usage(ctx, root_fd) - database_usage(ctx)
    finally:
        os.close(root_fd)


def database_usage(ctx):
    """Bytes of the tenant's database outside its storage folder: 0 on SQLite (the file
    is in the storage, counted with the files), the schema's size on PostgreSQL."""
    from django.conf import settings

    if not settings.USING_POSTGRES:
        return 0
    usage = run_state().get(_database_key(ctx))
    if usage is None:
        from capabilities.database import postgres

        usage = postgres.tenant_bytes(ctx)
        record_database_usage(ctx, usage)
    return usage


def cached_database_usage(ctx):
    return run_state().get(_database_key(ctx))


def forget_database_usage(ctx):
    run_state().delete(_database_key(ctx))


def record_database_usage(ctx, usage):
    """The database's size as just measured by a call that ran in it."""
    run_state().set(_database_key(ctx), usage, USAGE_CACHE_SECONDS)


def record_change(ctx, usage, delta):
    """`usage` is what current_usage() returned; the files grew by `delta`."""
    files = usage - database_usage(ctx)
    run_state().set(_cache_key(ctx), max(0, files + delta), USAGE_CACHE_SECONDS)


def adjust_cached_usage(ctx, delta):
    """Adjust the cached figure, if there is one (no measurement just to subtract)."""
    files = run_state().get(_cache_key(ctx))
    if files is not None:
        run_state().set(_cache_key(ctx), max(0, files + delta), USAGE_CACHE_SECONDS)


def forget_usage(ctx):
    """Drop the cached figure after changes the file API did not count."""
    run_state().delete(_cache_key(ctx))


@contextmanager
def storage_lock(ctx, root_fd):
    """Serialise the quota's check-and-write for one tenant, across threads and worker
    processes of this machine (flock on the root folder's own descriptor)."""
    waiting = ctx.bounded(LOCK_WAIT_SECONDS)
    while True:
        try:
            fcntl.flock(root_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        waiting.check_deadline("Another write of this tenant took too long; try again.")
        time.sleep(0.005)
    try:
        yield
    finally:
        fcntl.flock(root_fd, fcntl.LOCK_UN)
