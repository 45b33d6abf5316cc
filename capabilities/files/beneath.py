"""Opening files strictly beneath a tenant's storage root, never through a symbolic link.

SECURITY: every file operation of a block goes through this module. Checking a path's
text is not enough: a symbolic link planted in storage (by a process, by an admin's
restore, by a bug) would lead a plain open() to /etc or to another tenant. So nothing
here resolves a path as a whole. Paths are opened relative to an open descriptor of the
tenant's root, and the kernel is told to refuse any symbolic link on the way:

- openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
  RESOLVE_NO_XDEV (Linux 5.6+, called through ctypes): the kernel resolves the whole
  path and refuses to leave the root, follow any link, or cross a mount point.
- Where openat2 is missing, a walk: one openat(O_NOFOLLOW | O_DIRECTORY) per folder from
  the descriptor of the previous one, then the last name with O_NOFOLLOW. Each step is
  relative to a folder already held open, so swapping a folder for a link between two
  steps changes nothing: the open either sees the link and fails, or sees a real folder.

Both refuse a link with ELOOP (or ENOTDIR, for a link where a folder is expected);
callers turn that into PERMISSION_DENIED. Neither ever follows one, so there is no check
followed by a use to race against.
"""

import ctypes
import errno
import os
import stat
from contextlib import contextmanager

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_STRICTLY_BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV

SYS_OPENAT2 = 437  # the same number on every architecture Linux has added since 5.1


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dir_fd, path, flags, mode):
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, RESOLVE_STRICTLY_BENEATH)
    encoded = os.fsencode(path)
    for _ in range(16):
        fd = _libc.syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(encoded),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        # EAGAIN: a rename elsewhere in the tree raced the lookup; the kernel asks us to
        # try again rather than risk a wrong answer.
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err))
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def _kernel_has_openat2():
    try:
        os.close(_openat2(_probe_fd(), ".", O_DIR, 0))
        return True
    except OSError as e:
        return e.errno not in (errno.ENOSYS, errno.EPERM)  # EPERM: a seccomp filter refusing it


def _probe_fd():
    global _PROBE_FD
    if _PROBE_FD is None:
        _PROBE_FD = os.open("/", O_DIR)
    return _PROBE_FD


_PROBE_FD = None
# Tests set this to False to prove that the fallback walk holds the same line.
USE_OPENAT2 = _kernel_has_openat2()


def _open_walk(dir_fd, parts, flags, mode):
    current = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            following = os.open(part, O_DIR | os.O_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = following
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
    finally:
        os.close(current)


def open_beneath(dir_fd, parts, flags, mode=0o644):
    """An fd for the path `parts` (a tuple of names) under the folder `dir_fd`, opened
    with `flags`. The root itself when `parts` is empty. Raises OSError."""
    flags |= os.O_CLOEXEC
    if not parts:
        return os.open(".", flags, dir_fd=dir_fd)
    if USE_OPENAT2:
        return _openat2(dir_fd, "/".join(parts), flags | os.O_NOFOLLOW, mode)
    return _open_walk(dir_fd, parts, flags, mode)


def make_dirs_beneath(dir_fd, parts, mode=0o755):
    """An fd for the folder `parts` under `dir_fd`, creating the missing folders one by
    one (each made with mkdirat and opened with O_NOFOLLOW from its parent's fd)."""
    current = os.dup(dir_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, mode, dir_fd=current)
            except FileExistsError:
                pass
            following = os.open(part, O_DIR | os.O_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = following
    except BaseException:
        os.close(current)
        raise
    return current


def first_non_folder(dir_fd, parts):
    """What the first name of `parts` that is not a folder is ('file', 'link', 'other'),
    or None. The kernel answers ENOTDIR both for a file and for a link met where a folder
    was expected; messages need to know which. Walked by descriptor, following nothing."""
    current = os.dup(dir_fd)
    try:
        for part in parts:
            try:
                st = os.stat(part, dir_fd=current, follow_symlinks=False)
            except OSError:
                return None
            if not stat.S_ISDIR(st.st_mode):
                return "file" if stat.S_ISREG(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "other"
            try:
                following = os.open(part, O_DIR | os.O_NOFOLLOW, dir_fd=current)
            except OSError:
                return None  # changed under us; no better answer than the kernel's
            os.close(current)
            current = following
        return None
    finally:
        os.close(current)


@contextmanager
def opened(fd):
    try:
        yield fd
    finally:
        os.close(fd)


def open_storage_root(ctx):
    """An fd of the tenant's storage root folder, created on first use. The root's own
    location comes from the server's settings, never from the block."""
    return os.open(ctx.tenant_path_root(), O_DIR)
