"""The seccomp filter every sandboxed command runs under (handed to bubblewrap as BPF).

SECURITY: this is the sandbox's third wall, after the namespaces (no network, no view of
the server's files) and the unprivileged user (no capabilities). It refuses the system
calls a text tool never needs and that have been the door of kernel exploits and
sandbox escapes: new namespaces, mounts, ptrace, BPF, keyrings, io_uring, module and
kexec loading, userfaultfd, memfds and execveat (a program run from a descriptor would
pass the noexec mounts), any socket but a Unix one, and every mode change or creation
that would set a set-user-id or set-group-id bit. The list it shares with the isolate's
filter is capabilities/syscall_rules.py. Refused calls fail with an
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

from capabilities import syscall_rules as rules

# Refused with EPERM, beyond the list both sandboxes share (capabilities.syscall_rules):
# personality() could turn off address randomisation or make readable memory executable;
# no text tool sets it.
PROCESS_ONLY_DENIED = ["personality"]


def build_filter():
    sandbox_filter = seccomp.SyscallFilter(seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)

    def rule(action, name, *conditions):
        try:
            sandbox_filter.add_rule(action, name, *conditions)
        except (ValueError, RuntimeError, OSError):
            if name not in rules.OPTIONAL_SYSCALLS:
                raise
            # a call this libseccomp does not know cannot be made by name here either

    for name in rules.denied_syscalls() + PROCESS_ONLY_DENIED:
        rule(eperm, name)
    # Only Unix sockets (which a tool may use for nothing outside the sandbox anyway).
    rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
    for flag in rules.CLONE_NAMESPACE_FLAGS.values():
        rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, where a filter cannot read them: refuse it as
    # unknown, and the C library falls back to clone(), whose flags are checked above.
    rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # No set-user-id or set-group-id file, ever: made here, it would be one on the
    # server's disk (docs/process.md).
    rules.add_set_id_rules(rule, eperm, seccomp)
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
