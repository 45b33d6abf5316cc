"""The seccomp filter every sandboxed command runs under (handed to bubblewrap as BPF).

SECURITY: this is the sandbox's third wall, after the namespaces (no network, no view of
the server's files) and the unprivileged user (no capabilities). It refuses the system
calls a text tool never needs and that have been the door of kernel exploits and
sandbox escapes: new namespaces, mounts, ptrace, BPF, keyrings, io_uring, module and
kexec loading, userfaultfd, and any socket but a Unix one. Refused calls fail with an
errno (EPERM, or EAFNOSUPPORT for sockets) rather than killing the process, so a tool
that probes for a feature gets an error it can handle and the user gets its message.

Only the native architecture is allowed: a 32-bit system call through int 0x80 would
otherwise dodge a filter written for x86-64 numbers (libseccomp kills it instead).
"""

import errno
import os
import socket
import tempfile
from functools import lru_cache

import pyseccomp as seccomp

# Refused with EPERM.
DENIED_SYSCALLS = [
    # Namespaces and mounts: the sandbox's walls must stay where bubblewrap put them.
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr",
    "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    # Looking into or steering other processes.
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # Kernel attack surface no text tool uses.
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "lookup_dcookie",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "quotactl",
    "quotactl_fd", "personality",
    # The machine itself.
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "syslog", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm",
    "vhangup",
]

# clone() flags that would make a new namespace; glibc's fork() uses none of them.
NAMESPACE_FLAGS = [
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
]


def build_filter():
    sandbox_filter = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            sandbox_filter.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (ValueError, RuntimeError, OSError):
            pass  # not a system call on this architecture
    # Only Unix sockets (which a tool may use for nothing outside the sandbox anyway).
    sandbox_filter.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
    for flag in NAMESPACE_FLAGS:
        sandbox_filter.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, where a filter cannot read them: refuse it as
    # unknown, and the C library falls back to clone(), whose flags are checked above.
    sandbox_filter.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return sandbox_filter


@lru_cache(maxsize=1)
def filter_bpf():
    """The compiled filter, as the bytes bubblewrap's --seccomp expects."""
    with tempfile.TemporaryFile() as out:
        build_filter().export_bpf(out)
        out.seek(0)
        return out.read()


def filter_fd():
    """A readable descriptor holding the compiled filter, positioned at its start."""
    fd = os.memfd_create("symposium-seccomp", os.MFD_CLOEXEC)
    os.write(fd, filter_bpf())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
