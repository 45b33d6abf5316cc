"""The writable places of a sandboxed command, mounted nosuid, nodev and noexec, and the
unprivileged user it runs as on the server.

SECURITY: bubblewrap mounts every bind nosuid and nodev but cannot mount anything noexec.
Without noexec, a program a tenant stores (or writes to /tmp) runs through any
allow-listed command that execs (`env ./x`, `find -exec`), and a shared object it stores
loads into one (`awk '@load "/x.so"'`, AWKLIBPATH), even through the dynamic loader
(`ld.so ./x`), since the kernel refuses to map a file of a noexec mount executable. So the
two writable places are prepared before bubblewrap starts, in a user and mount namespace
of the command's own (made in the child between fork and exec, so the server's own
namespaces never change):

    /mnt/symposium-sandbox/root   the tenant's storage (or an empty tmpfs without file
                                  access): nosuid, nodev, noexec, read-only for 'read';
                                  for 'write' and 'all' an overlay of
    /mnt/symposium-sandbox/lower  the storage, read-only, and
    /mnt/symposium-sandbox/writes a tmpfs of sandbox.write_bytes() holding the upper
                                  layer (what the command writes) and its work folder
    /mnt/symposium-sandbox/tmp    a tmpfs of SANDBOX_LIMITS['tmp_bytes']: nosuid, nodev,
                                  noexec
    /mnt/symposium-sandbox/system the sandbox's usr, bin, lib and lib64: a tmpfs holding
                                  only the files capabilities.process.programs lists,
                                  each bound read-only where the sandbox will see it, and
                                  the server's /usr/share as usr/share, read-only, noexec

bubblewrap then binds these as '/' and '/tmp', and the flags stay (a mount copied into a
less privileged namespace keeps them locked).

The user: inside the sandbox a command is uid 1000. On the server it is
  - when the server runs as root: settings.SYMPOSIUM_PROCESS_SANDBOX_UID (a user that owns
    nothing but the tenants' files, which are handed to it before a command that may
    write them). bubblewrap runs as that user; root only prepares the storage's mount
    (open_tree, mount_setattr) beforehand, since a user without privilege could not
    reach storage under a folder only root may enter;
  - otherwise: the server's own (unprivileged) user, the only one an unprivileged process
    can map. The shipped systemd units and image run the platform as such a user.
Either way the command holds no capability outside its namespaces, set-id bits are
refused by the seccomp filter, and inert in the sandbox (nosuid, no_new_privs).
"""

import ctypes
import os
import socket
import stat
from functools import lru_cache
from types import SimpleNamespace

from django.conf import settings

from capabilities.files.paths import PLATFORM_FOLDER
from capabilities.process import staging
from capabilities.process.limits import SANDBOX_LIMITS
from capabilities.process.staging import (  # noqa: F401  (the places, as the rest of the package names them)
    AT_EMPTY_PATH,
    AT_RECURSIVE,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    STAGED_LOWER,
    STAGED_SYSTEM,
    STAGED_TMP,
    STAGED_WRITES,
    SYS_mount_setattr,
    SYS_open_tree,
    libc,
)
from capabilities.process.staging import check as _check


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def sandbox_host_ids():
    """The (uid, gid) a command runs as on the server: see the module's docstring."""
    if os.geteuid() == 0:
        uid = settings.SYMPOSIUM_PROCESS_SANDBOX_UID
        return uid, uid
    return os.geteuid(), os.getegid()


def detached_storage(storage_fd, writable):
    """As root: a detached copy of the storage's mount, nosuid, nodev, noexec (and read-only
    unless `writable`), as a descriptor the command's namespace can attach. None when the
    server is not root (the namespace then binds the storage by its path itself)."""
    if os.geteuid() != 0:
        return None
    tree = _check(libc.syscall(SYS_open_tree, storage_fd, b"", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH), "open_tree")
    try:
        attr = MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC | (0 if writable else MOUNT_ATTR_RDONLY), 0, 0, 0)
        _check(
            libc.syscall(SYS_mount_setattr, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)),
            "mount_setattr",
        )
    except OSError:
        os.close(tree)
        raise
    return tree


def hand_storage_to(root_fd, uid, gid):
    """As root: makes the sandbox's user the owner of the tenant's files (not of the
    platform's folder), so a command may change what the file API wrote. Entries already
    theirs are left alone; links are changed themselves, never followed."""
    if os.geteuid() != 0:
        return
    pending = [os.dup(root_fd)]
    while pending:
        folder = pending.pop()
        try:
            st = os.fstat(folder)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(folder, uid, gid)
            with os.scandir(folder) as entries:
                for entry in entries:
                    if folder_is_root(folder, root_fd) and entry.name == PLATFORM_FOLDER:
                        continue
                    est = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(est.st_mode):
                        try:
                            pending.append(os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder))
                        except OSError:
                            continue
                    elif (est.st_uid, est.st_gid) != (uid, gid):
                        os.chown(entry.name, uid, gid, dir_fd=folder, follow_symlinks=False)
        finally:
            os.close(folder)


def folder_is_root(fd, root_fd):
    a, b = os.fstat(fd), os.fstat(root_fd)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Staging:
    """What the child does between fork and exec of bubblewrap (subprocess's preexec_fn):
    it enters the command's cgroups, becomes the sandbox's user, makes a user and mount
    namespace of its own and the places above in it. Everything it needs is computed
    before the fork; in the child it only makes system calls.

    With `overlay_bytes` (storage the command may write), the storage is mounted
    read-only as the lower layer of an overlay whose upper layer is a tmpfs of that
    size: the command's writes land there, within that bound, and the child hands the
    upper folder's descriptor to the server, which decides after the command whether
    they fit the tenant's quota (capabilities.process.writes)."""

    def __init__(
        self, *, storage_path, storage_tree, writable, tmp_bytes, ids, root_fd_number,
        system_files=(), system_trees=(), overlay_bytes=None, cgroup_procs=(),
    ):  # fmt: skip
        self.storage_path = os.fsencode(storage_path) if storage_path is not None else None
        self.storage_tree = storage_tree
        self.writable = writable
        self.tmp_options = f"size={tmp_bytes},mode=1777".encode()
        self.uid, self.gid = ids
        # As root the child becomes the sandbox's user itself (after entering the
        # cgroups, which only root may write here), instead of subprocess doing it first.
        self.switch_user = os.geteuid() == 0
        self.root_fd_number = root_fd_number
        self.cgroup_procs = [os.fsencode(path) for path in cgroup_procs]
        self.system_folders, self.system_binds = _plan_system(tuple(system_files), tuple(system_trees))
        self.overlay_bytes = overlay_bytes
        self.nice = SANDBOX_LIMITS["nice"]
        self.overlay_options = (
            f"lowerdir={STAGED_LOWER},upperdir={STAGED_WRITES}/upper,workdir={STAGED_WRITES}/work,userxattr".encode()
        )
        self.writes_fd = None
        self._report = socket.socketpair() if overlay_bytes is not None else None

    def plan(self):
        """The staging as plain values (what the spawner's child needs), and the
        descriptor its writes folder goes back on (None without one)."""
        fields = {k: v for k, v in vars(self).items() if k not in ("_report", "writes_fd")}
        return fields, (self._report[1].fileno() if self._report is not None else None)

    def __call__(self):
        try:
            fields, _ = self.plan()
            staging.stage(SimpleNamespace(**fields, report=self._report[1] if self._report is not None else None))
        except OSError as e:
            # Reported by subprocess as the child's failure; the message names no path.
            raise OSError(e.errno, "the command's namespace could not be prepared") from None

    def parent_side_done(self, started):
        """In the server, once the child has exec'd bubblewrap (or failed to): take the
        descriptor of what the command will write."""
        if self._report is None:
            return
        ours, theirs = self._report
        theirs.close()
        if started:
            ours.setblocking(False)
            try:
                _, fds, _, _ = socket.recv_fds(ours, 16, 1)
            except (BlockingIOError, OSError):
                fds = []
            if fds:
                self.writes_fd = fds[0]

    def close(self, keep_writes=False):
        if self._report is not None:
            for end in self._report:
                end.close()
            self._report = None
        if self.writes_fd is not None and not keep_writes:
            os.close(self.writes_fd)
            self.writes_fd = None

@lru_cache(maxsize=256)
def _plan_system(system_files, system_trees):
    """The folders, files and trees of the system tmpfs, in the order to make them:
    worked out before the fork (once per allow-list), so that the child only makes
    system calls. `system_files` are (path in the sandbox, file on the server);
    `system_trees` are bound at their own path."""
    system = STAGED_SYSTEM.encode()
    binds = [(os.fsencode(STAGED_SYSTEM + target), os.fsencode(real), False) for target, real in system_files]
    binds += [(os.fsencode(STAGED_SYSTEM + tree), os.fsencode(tree), True) for tree in system_trees]
    binds.append((system + b"/usr/share", b"/usr/share", True))
    folders = {system + b"/" + folder for folder in (b"usr/bin", b"bin", b"lib", b"lib64")}
    for target, _, is_tree in binds:
        folder = target if is_tree else os.path.dirname(target)
        while folder != system and folder not in folders:
            folders.add(folder)
            folder = os.path.dirname(folder)
    return tuple(sorted(folders, key=lambda f: (f.count(b"/"), f))), tuple(binds)
