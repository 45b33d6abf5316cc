"""The process sandbox's limits, in one place. Each says what it bounds and why.

The profile decides *whether* a tenant runs processes, which commands, for how long and
how much output comes back (process_allowed, process_commands, process_timeout_seconds,
process_max_output). Everything here bounds what one running command can take from the
server while it runs, whatever the profile.
"""

MB = 1024 * 1024

SANDBOX_LIMITS = {
    # Processes and threads of one command, all descendants included (pids cgroup, and
    # RLIMIT_NPROC where the server does not run as root). A fork bomb stops here; `sort`
    # on a big input uses a handful of threads, a pipeline of find/xargs a few more.
    "processes": 64,
    # Open files per process (RLIMIT_NOFILE). Text tools open a few; a leak of thousands
    # would only tie up kernel memory.
    "open_files": 256,
    # Address space per process (RLIMIT_AS), at least this many MB and otherwise the
    # profile's memory_mb: what a block may use in its isolate it may use in a process.
    "min_address_space_mb": 256,
    # CPU seconds beyond the wall-clock timeout (RLIMIT_CPU): a second wall, in the kernel,
    # in case the wall clock's kill were ever late.
    "cpu_grace_seconds": 1,
    # The command's CPU priority below the server's (added to its nice value), as an
    # isolate's (isolates/sandbox.py): when both want the cores, the server that answers
    # every tenant comes first.
    "nice": 10,
    # The private /tmp lives in memory (tmpfs); this is its size.
    "tmp_bytes": 64 * MB,
    # What a block can hand over in one call: arguments and environment are copied to
    # the kernel at exec time, where Linux allows about 2 MB in total.
    "max_args": 4096,
    "max_args_bytes": 256 * 1024,
    "max_env_vars": 128,
    "max_env_bytes": 64 * 1024,
    # How long to wait for the sandbox to report that it has started (bubblewrap's own
    # setup: namespaces, mounts) before giving up on it.
    "startup_seconds": 10,
}

# Inside the sandbox the command runs as this unprivileged user, in its own user
# namespace, with no capabilities; its files on the server belong to the server's user.
SANDBOX_UID = 1000
SANDBOX_USER = "user"
SANDBOX_HOME = "/home/user"

# The environment every command starts with; the block's `env` is added to it.
BASE_ENVIRONMENT = {
    "PATH": "/usr/bin:/bin",
    "HOME": SANDBOX_HOME,
    "LANG": "C.UTF-8",
}
