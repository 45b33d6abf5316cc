"""The child's side of a sandboxed command's staging: between fork and exec of
bubblewrap, it enters the command's cgroups, becomes the sandbox's user, makes a user and
mount namespace of its own and prepares the writable places in it
(capabilities.process.mounts says what and why).

This module needs nothing but the standard library: the server's child runs it after a
fork of the server, and the spawner (capabilities.process.spawner) after a fork of its
own small process.
"""

import ctypes
import os
import socket

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


def check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def stage(plan):
    """What the child does between fork and exec of bubblewrap, as planned by
    capabilities.process.mounts.Staging (`plan` holds its fields, `plan.report` the
    socket the writes folder goes back on): system calls only."""
    pid = str(os.getpid()).encode()
    os.nice(plan.nice)  # inherited by bubblewrap and everything the command starts
    for procs in plan.cgroup_procs:
        # Every process bubblewrap and the command will make is born in here.
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
    if plan.switch_user:
        os.setgroups([])
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
    # After a change of user (root handing over to the sandbox's user) the process is
    # not dumpable, and its own /proc/self/uid_map would not be writable by it.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    # Only its own ids, mapped to themselves: all an unprivileged process may map.
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"{plan.uid} {plan.uid} 1")
    write_file("/proc/self/gid_map", f"{plan.gid} {plan.gid} 1")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    check(libc.mount(b"tmpfs", STAGING.encode(), b"tmpfs", LOCKED_FLAGS, b"size=65536,mode=0755"), "staging tmpfs")
    os.mkdir(STAGED_SANDBOX)
    os.mkdir(STAGED_ROOT)
    os.mkdir(STAGED_TMP)
    _stage_system(plan)
    check(libc.mount(b"tmpfs", STAGED_TMP.encode(), b"tmpfs", LOCKED_FLAGS, plan.tmp_options), "tmp")
    root = STAGED_ROOT.encode()
    overlay = plan.overlay_bytes is not None and (plan.storage_tree is not None or plan.storage_path is not None)
    storage_at = STAGED_LOWER.encode() if overlay else root
    if overlay:
        os.mkdir(STAGED_LOWER)
    if plan.storage_tree is not None:
        check(libc.syscall(SYS_move_mount, plan.storage_tree, b"", AT_FDCWD, storage_at, MOVE_MOUNT_F_EMPTY_PATH), "attaching storage")
    elif plan.storage_path is not None:
        check(libc.mount(plan.storage_path, storage_at, None, MS_BIND, None), "binding storage")
        flags = MS_REMOUNT | MS_BIND | LOCKED_FLAGS | (0 if plan.writable and not overlay else MS_RDONLY)
        check(libc.mount(None, storage_at, None, flags, None), "remounting storage")
    else:
        # No file access: an empty root of its own, gone afterwards (bubblewrap makes
        # its mount points in it, so it is writable, within the size of /tmp).
        check(libc.mount(b"tmpfs", root, b"tmpfs", LOCKED_FLAGS, plan.tmp_options), "empty root")
    if overlay:
        _stage_overlay(plan)
    # bubblewrap binds the root from this descriptor (it checks that the path it
    # finds is the same folder).
    staged = os.open(root, os.O_PATH | os.O_DIRECTORY)
    os.dup2(staged, plan.root_fd_number)
    os.close(staged)


def _stage_overlay(plan):
    writes = STAGED_WRITES.encode()
    os.mkdir(writes)
    options = f"size={plan.overlay_bytes},mode=0755".encode()
    check(libc.mount(b"tmpfs", writes, b"tmpfs", LOCKED_FLAGS, options), "writes tmpfs")
    os.mkdir(writes + b"/upper", 0o755)
    os.mkdir(writes + b"/work", 0o700)
    check(libc.mount(b"overlay", STAGED_ROOT.encode(), b"overlay", LOCKED_FLAGS, plan.overlay_options), "storage overlay")
    upper = os.open(writes + b"/upper", os.O_RDONLY | os.O_DIRECTORY)
    try:
        # The tmpfs lives as long as this descriptor, after the namespace is gone.
        socket.send_fds(plan.report, [b"w"], [upper])
    finally:
        os.close(upper)


def _stage_system(plan):
    system = STAGED_SYSTEM.encode()
    os.mkdir(system)
    check(libc.mount(b"tmpfs", system, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1048576,mode=0755"), "system tmpfs")
    for folder in plan.system_folders:
        os.mkdir(folder, 0o755)
    for target, real, is_tree in plan.system_binds:
        if not is_tree:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o755))
        check(libc.mount(real, target, None, MS_BIND | (MS_REC if is_tree else 0), None), "binding a system file")
    # bubblewrap's read-only binds of these trees make every mount in them read-only,
    # nosuid and nodev; /usr/share is made noexec (and read-only) here.
    share = system + b"/usr/share"
    check(libc.mount(None, share, None, MS_REMOUNT | MS_BIND | MS_RDONLY | LOCKED_FLAGS, None), "remounting /usr/share")
