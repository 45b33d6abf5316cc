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

from django.conf import settings

from capabilities.files.paths import PLATFORM_FOLDER

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

# Where the prepared places are, in the command's own mount namespace only: a folder that
# exists on every Debian system, that any user may enter, and that bubblewrap does not use
# itself (it builds its new root on /tmp). A tmpfs is mounted over it first, so nothing
# of the server's /mnt is seen or changed.
STAGING = "/mnt"
STAGED_SANDBOX = f"{STAGING}/symposium-sandbox"
STAGED_ROOT = f"{STAGING}/symposium-sandbox/root"
STAGED_TMP = f"{STAGING}/symposium-sandbox/tmp"
# With storage the command may write: the storage itself, read-only, as the overlay's
# lower layer, and the tmpfs holding the upper layer (what the command wrote).
STAGED_LOWER = f"{STAGING}/symposium-sandbox/lower"
STAGED_WRITES = f"{STAGING}/symposium-sandbox/writes"
# The sandbox's system folders, built here so that bubblewrap binds four trees instead
# of a hundred files (each of its binds rereads the mount table: a hundred cost tens of
# milliseconds). /usr/share (programs' data: awk's library, terminfo, zoneinfo) is bound
# into it read-only and noexec, so that nothing there runs.
STAGED_SYSTEM = f"{STAGING}/symposium-sandbox/system"

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY = 2, 4, 8, 1
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_DUMPABLE = 4
SYS_open_tree, SYS_move_mount, SYS_mount_setattr = 428, 429, 442
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
AT_EMPTY_PATH, AT_RECURSIVE, AT_FDCWD = 0x1000, 0x8000, -100
MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
# Every writable place of the sandbox carries these.
LOCKED_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def sandbox_host_ids():
    """The (uid, gid) a command runs as on the server: see the module's docstring."""
    if os.geteuid() == 0:
        uid = settings.SYMPOSIUM_PROCESS_SANDBOX_UID
        return uid, uid
    return os.geteuid(), os.getegid()


def _check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


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
        self.overlay_options = (
            f"lowerdir={STAGED_LOWER},upperdir={STAGED_WRITES}/upper,workdir={STAGED_WRITES}/work,userxattr".encode()
        )
        self.writes_fd = None
        self._report = socket.socketpair() if overlay_bytes is not None else None

    def __call__(self):
        try:
            self._stage()
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

    def _stage(self):
        pid = str(os.getpid()).encode()
        for procs in self.cgroup_procs:
            # Every process bubblewrap and the command will make is born in here.
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if self.switch_user:
            os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
            os.setresuid(self.uid, self.uid, self.uid)
        # After a change of user (root handing over to the sandbox's user) the process is
        # not dumpable, and its own /proc/self/uid_map would not be writable by it.
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
        # Only its own ids, mapped to themselves: all an unprivileged process may map.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{self.uid} {self.uid} 1")
        _write("/proc/self/gid_map", f"{self.gid} {self.gid} 1")
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
        _check(libc.mount(b"tmpfs", STAGING.encode(), b"tmpfs", LOCKED_FLAGS, b"size=65536,mode=0755"), "staging tmpfs")
        os.mkdir(STAGED_SANDBOX)
        os.mkdir(STAGED_ROOT)
        os.mkdir(STAGED_TMP)
        self._stage_system()
        _check(libc.mount(b"tmpfs", STAGED_TMP.encode(), b"tmpfs", LOCKED_FLAGS, self.tmp_options), "tmp")
        root = STAGED_ROOT.encode()
        overlay = self.overlay_bytes is not None and (self.storage_tree is not None or self.storage_path is not None)
        storage_at = STAGED_LOWER.encode() if overlay else root
        if overlay:
            os.mkdir(STAGED_LOWER)
        if self.storage_tree is not None:
            _check(libc.syscall(SYS_move_mount, self.storage_tree, b"", AT_FDCWD, storage_at, MOVE_MOUNT_F_EMPTY_PATH), "attaching storage")
        elif self.storage_path is not None:
            _check(libc.mount(self.storage_path, storage_at, None, MS_BIND, None), "binding storage")
            flags = MS_REMOUNT | MS_BIND | LOCKED_FLAGS | (0 if self.writable and not overlay else MS_RDONLY)
            _check(libc.mount(None, storage_at, None, flags, None), "remounting storage")
        else:
            # No file access: an empty root of its own, gone afterwards (bubblewrap makes
            # its mount points in it, so it is writable, within the size of /tmp).
            _check(libc.mount(b"tmpfs", root, b"tmpfs", LOCKED_FLAGS, self.tmp_options), "empty root")
        if overlay:
            self._stage_overlay()
        # bubblewrap binds the root from this descriptor (it checks that the path it
        # finds is the same folder).
        staged = os.open(root, os.O_PATH | os.O_DIRECTORY)
        os.dup2(staged, self.root_fd_number)
        os.close(staged)

    def _stage_overlay(self):
        writes = STAGED_WRITES.encode()
        os.mkdir(writes)
        options = f"size={self.overlay_bytes},mode=0755".encode()
        _check(libc.mount(b"tmpfs", writes, b"tmpfs", LOCKED_FLAGS, options), "writes tmpfs")
        os.mkdir(writes + b"/upper", 0o755)
        os.mkdir(writes + b"/work", 0o700)
        _check(libc.mount(b"overlay", STAGED_ROOT.encode(), b"overlay", LOCKED_FLAGS, self.overlay_options), "storage overlay")
        upper = os.open(writes + b"/upper", os.O_RDONLY | os.O_DIRECTORY)
        try:
            # The tmpfs lives as long as this descriptor, after the namespace is gone.
            socket.send_fds(self._report[1], [b"w"], [upper])
        finally:
            os.close(upper)

    def _stage_system(self):
        system = STAGED_SYSTEM.encode()
        os.mkdir(system)
        _check(libc.mount(b"tmpfs", system, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1048576,mode=0755"), "system tmpfs")
        for folder in self.system_folders:
            os.mkdir(folder, 0o755)
        for target, real, is_tree in self.system_binds:
            if not is_tree:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o755))
            _check(libc.mount(real, target, None, MS_BIND | (MS_REC if is_tree else 0), None), "binding a system file")
        # bubblewrap's read-only binds of these trees make every mount in them read-only,
        # nosuid and nodev; /usr/share is made noexec (and read-only) here.
        share = system + b"/usr/share"
        _check(libc.mount(None, share, None, MS_REMOUNT | MS_BIND | MS_RDONLY | LOCKED_FLAGS, None), "remounting /usr/share")


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


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)

