"""What a command wrote to the tenant's storage, kept only when it fits the quota.

SECURITY: a command's writes do not go to the tenant's storage while it runs. The
storage is the read-only lower layer of an overlay whose upper layer is a tmpfs of
sandbox.write_bytes(policy) (capabilities.process.mounts.Staging): the quota at most,
and never more than the command's memory limit, whose memory cgroup counts that tmpfs
too. Past it the command gets "No space left on device", as on a full disk, however many
files it writes. When the command has ended, the server reads the upper layer (new and
changed files in full, removed ones as overlay whiteouts, replaced folders marked
opaque), works out the tenant's usage afterwards, and then either applies all of it to
the storage under the quota's lock, or, past the quota, none of it: the call fails with
QUOTA_EXCEEDED and the storage is as it was before the command.

Applied as the file API writes: never following a link in the storage, each file put
in place by a rename, plain permission bits only (no set-id bit, whatever the upper
layer says; the seccomp filter refuses to make one anyway). Only files, folders and
symbolic links are kept; fifos, sockets and device nodes made in the sandbox are not.
"""

import errno
import os
import secrets
import shutil
import stat

from capabilities.base import CapabilityError
from capabilities.files import quota
from capabilities.files.paths import PLATFORM_FOLDER, SANDBOX_SYSTEM_FOLDERS

# Top-level names of the sandbox's own mount points and of the platform's folder: what
# the command sees there is not the tenant's storage, so nothing under them is kept.
NOT_KEPT = {*SANDBOX_SYSTEM_FOLDERS, PLATFORM_FOLDER}
OPAQUE_XATTR = "user.overlay.opaque"
COPY_CHUNK = 1024 * 1024
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def keep(ctx, root_fd, writes_fd, owner=None):
    """Apply what the command wrote (the upper folder `writes_fd`) to the storage whose
    root is `root_fd`, or refuse all of it when the result would pass the quota. What is
    made belongs to `owner` (uid, gid), the command's user on the server, when given
    (the server is root and would otherwise own it)."""
    if not os.listdir(writes_fd):
        return  # it wrote nothing: the common case costs one read of an empty folder
    with quota.storage_lock(ctx, root_fd):
        usage = quota.current_usage(ctx, root_fd)
        delta = _walk(writes_fd, root_fd, top=True, apply=False, owner=owner)
        limit = ctx.policy.storage_quota
        if delta > 0 and usage + delta > limit:
            raise CapabilityError(
                "QUOTA_EXCEEDED",
                f"The command's changes to the files would use {usage + delta} bytes; the quota is {limit} bytes "
                f"({usage} in use). None of its changes were kept.",
            )
        try:
            _walk(writes_fd, root_fd, top=True, apply=True, owner=owner)
        finally:
            # Hard links, files changed meanwhile by hand: measured afresh next time.
            quota.forget_usage(ctx)


def _walk(upper, storage, *, top, apply, owner):
    """The change in bytes of the storage folder `storage` (None: a folder that does not
    exist yet, or is being replaced) if the upper folder `upper` is applied to it, and,
    with `apply`, applies it."""
    delta = 0
    for name in sorted(os.listdir(upper)):
        if top and name in NOT_KEPT:
            continue
        st = os.stat(name, dir_fd=upper, follow_symlinks=False)
        old = _lstat(storage, name)
        old_bytes = _bytes_in(storage, name, old) if old is not None else 0
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            # A whiteout: the command removed this entry.
            delta -= old_bytes
            if apply and old is not None:
                _remove(storage, name, old)
        elif stat.S_ISDIR(st.st_mode):
            child_upper = os.open(name, O_DIR, dir_fd=upper)
            try:
                replaced = old is not None and (_is_opaque(child_upper) or not stat.S_ISDIR(old.st_mode))
                if replaced:
                    delta -= old_bytes
                child_storage = None
                if apply:
                    if replaced:
                        _remove(storage, name, old)
                    if old is None or replaced:
                        os.mkdir(name, 0o755, dir_fd=storage)
                        _own(storage, name, owner)
                    child_storage = os.open(name, O_DIR, dir_fd=storage)
                elif old is not None and not replaced:
                    child_storage = os.open(name, O_DIR, dir_fd=storage)
                try:
                    delta += _walk(child_upper, child_storage, top=False, apply=apply, owner=owner)
                finally:
                    if child_storage is not None:
                        os.close(child_storage)
            finally:
                os.close(child_upper)
        elif stat.S_ISREG(st.st_mode):
            delta += st.st_size - old_bytes
            if apply:
                _copy_file(upper, storage, name, st, old, owner)
        elif stat.S_ISLNK(st.st_mode):
            delta -= old_bytes
            if apply:
                target = os.readlink(name, dir_fd=upper)
                if old is not None:
                    _remove(storage, name, old)
                os.symlink(target, name, dir_fd=storage)
                _own(storage, name, owner)
        # Anything else (a fifo, a socket) is not a file the storage keeps.
    return delta


def _lstat(folder, name):
    if folder is None:
        return None
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _bytes_in(folder, name, st):
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, O_DIR, dir_fd=folder)
        try:
            return quota.measure_usage(fd)
        finally:
            os.close(fd)
    return 0


def _is_opaque(fd):
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def _remove(folder, name, st):
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=folder)
    else:
        os.unlink(name, dir_fd=folder)


def _own(folder, name, owner):
    if owner is not None:
        os.chown(name, *owner, dir_fd=folder, follow_symlinks=False)


def _copy_file(upper, storage, name, st, old, owner):
    temporary = f".symposium-write-{secrets.token_hex(6)}"
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=upper)
    try:
        target = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=storage)
        try:
            while os.sendfile(target, source, None, COPY_CHUNK):
                pass
            if owner is not None:
                os.fchown(target, *owner)
            # Plain permission bits only: never a set-id bit in the storage (set after
            # the change of owner, which would clear them anyway).
            os.fchmod(target, stat.S_IMODE(st.st_mode) & 0o777)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(target)
        if old is not None and stat.S_ISDIR(old.st_mode):
            shutil.rmtree(name, dir_fd=storage)
        os.rename(temporary, name, src_dir_fd=storage, dst_dir_fd=storage)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=storage)
        except OSError:
            pass
        raise
    finally:
        os.close(source)
