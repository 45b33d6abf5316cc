"""The system calls both sandboxes refuse: data, read by two filters.

SECURITY: this is the one definition behind two seccomp filters, the isolate's
(isolates/sandbox.py, which runs before Deno and imports nothing of the platform: it loads
this file by its path) and the process sandbox's (capabilities/process/seccomp_filter.py,
handed to bubblewrap). A call added here is refused in both. Each filter adds what only
its own sandbox may refuse (the isolate also refuses fork, IPC and listening sockets,
which text tools use); nothing here may be loosened for one sandbox alone.

This module must stay plain data with no imports: the isolate's launcher executes it
before it has locked itself down, so it must not be able to pull in any other code.
"""

# Refused with EPERM, grouped by why. Names this architecture or libseccomp does not know
# are skipped by both filters (OPTIONAL_SYSCALLS says which may be missing).
DENIED_SYSCALLS = {
    # The sandbox's walls must stay where they were put: no new namespaces, no mounts, no
    # new root.
    "namespaces and mounts": [
        "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr",
        "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    ],
    # Looking into or steering other processes (and file descriptors of other processes).
    "other processes": [
        "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
        "pidfd_getfd", "migrate_pages", "move_pages",
    ],
    # Opening files by handle bypasses the path walk (and so the mount tree and Landlock).
    "handle-based opens": ["open_by_handle_at", "name_to_handle_at"],
    # A second way to run a program: execveat runs a descriptor (a memfd, a file opened
    # before a wall went up), and an anonymous memory file is executable wherever it came
    # from, past every noexec mount. Neither sandbox's programs need them.
    "programs from descriptors": ["execveat", "memfd_create", "memfd_secret"],
    # Kernel attack surface with a history of escapes, which neither sandbox uses.
    "kernel attack surface": [
        "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "keyctl", "add_key", "request_key", "lookup_dcookie",
        "fanotify_init", "quotactl", "quotactl_fd", "uselib",
    ],
    # The machine itself.
    "the machine": [
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
        "reboot", "swapon", "swapoff", "acct", "syslog", "vhangup", "settimeofday",
        "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "sethostname",
        "setdomainname",
    ],
}

# Newer calls an older libseccomp may not know by name: a filter may skip these, and only
# these, when it cannot add a rule for them.
OPTIONAL_SYSCALLS = {"memfd_secret", "quotactl_fd", "mount_setattr", "process_madvise", "fchmodat2"}

# clone() flags (from <linux/sched.h>) that make a new namespace. clone() with any of them
# is refused (EPERM); clone3(), whose flags sit in memory where a filter cannot read them,
# answers ENOSYS so that the C library falls back to clone().
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# Set-user-id and set-group-id bits (S_ISUID | S_ISGID). A file given them inside a
# sandbox is a file with them on the server's disk, where anyone who can reach it would
# run it as its owner: the filters refuse (EPERM) a mode change that sets either bit.
SET_ID_BITS = {"S_ISUID": 0o4000, "S_ISGID": 0o2000}

# For each call that sets a file's mode, which argument (counted from 0) is the mode.
MODE_ARGUMENT = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2}

# Calls that create a file with a mode of the caller's choosing, and where the mode is.
# A file made set-id at creation is empty (any write clears the bits for a caller without
# CAP_FSETID), but refusing it keeps the rule simple: no set-id bit is ever given.
CREATE_MODE_ARGUMENT = {"creat": 1, "mknod": 1, "mknodat": 2}
# open() and openat() take a mode only with O_CREAT (or O_TMPFILE, which includes
# O_DIRECTORY and a bit of its own): flags argument, mode argument.
OPEN_MODE_ARGUMENTS = {"open": (1, 2), "openat": (2, 3)}
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000


def denied_syscalls():
    """Every name of DENIED_SYSCALLS, in order."""
    return [name for group in DENIED_SYSCALLS.values() for name in group]


def add_set_id_rules(rule, action, sc):
    """Adds the rules that refuse every set-id bit: `rule(action, name, *conditions)` adds
    one rule to the filter being built, `sc` is the pyseccomp module (passed in, so that
    this file imports nothing). A MASKED_EQ condition tests one bit, so "either bit" is a
    rule per bit."""
    for bit in SET_ID_BITS.values():
        for name, mode in {**MODE_ARGUMENT, **CREATE_MODE_ARGUMENT}.items():
            rule(action, name, sc.Arg(mode, sc.MASKED_EQ, bit, bit))
        for name, (flags, mode) in OPEN_MODE_ARGUMENTS.items():
            for created in (O_CREAT, O_TMPFILE_BIT):
                rule(action, name, sc.Arg(flags, sc.MASKED_EQ, created, created), sc.Arg(mode, sc.MASKED_EQ, bit, bit))
