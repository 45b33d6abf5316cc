"""Running one command in a bubblewrap sandbox, with its output captured and capped.

SECURITY: the allow-list of commands is policy, not containment (`env` and `find -exec`
run other programs; a tenant with 'all' file access can store its own). What contains a
command is this sandbox, whatever runs in it:

- Namespaces (bwrap --unshare-all): no network but its own loopback, its own pid
  namespace (it sees only its own processes, and all of them die with the first), its
  own IPC, UTS and cgroup namespaces, and a user namespace in which it is the
  unprivileged user 1000 with no capabilities and no way to make further namespaces.
- A filesystem built for it (the mount layout below): the tenant's storage and a
  private /tmp are the only writable places; the system's /usr and libraries are
  read-only; /etc holds four generated files (no /etc/shadow, nothing of the server's
  configuration); the project directory and other tenants do not exist in it.
- A seccomp filter (capabilities.process.seccomp_filter), no_new_privs, a new session
  (no terminal to inject keystrokes into), rlimits (CPU, address space, file size, open
  files, processes), a pids cgroup that bounds a fork bomb and a memory cgroup that
  bounds the whole tree (capabilities.process.cgroups).
- The wall clock: the whole tree is killed at the timeout (SIGKILL to bubblewrap, which
  takes its pid namespace with it; the cgroup is swept as well).

Mount layout, chosen so that tenant paths mean the same inside and outside:

    /                 the tenant's storage root (with 'write' or 'all' file access an
                      overlay on it, whose changes are kept afterwards only if they fit
                      the quota, capabilities.process.writes; read-only with 'read'; an
                      empty tmpfs with 'none')
    /usr /lib /lib64  the server's, read-only
    /usr/bin, /bin    only the tenant's allow-listed commands
    /etc              passwd, group, nsswitch.conf, ld.so.cache; read-only
    /tmp              a private tmpfs of SANDBOX_LIMITS['tmp_bytes']
    /proc, /dev       the sandbox's own (null, zero, full, random, urandom, tty)
    /.symposium       an empty read-only tmpfs over the platform's folder

So `cwd: '/home/user'` is the folder home/user of the tenant's storage (made when it is
missing), and `ls -la /tmp` lists the command's private /tmp. The mount points (bin, dev,
etc, lib, lib64, proc, tmp, usr) are made in the tenant's root before the first command
and reserved by the file API (capabilities.files.paths.SANDBOX_SYSTEM_FOLDERS).
"""

import json
import logging
import math
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

from capabilities.base import CapabilityError
from capabilities.process import mounts, programs, seccomp_filter, spawner
from capabilities.process.cgroups import CommandCgroups
from capabilities.process.limits import MB, SANDBOX_HOME, SANDBOX_LIMITS, SANDBOX_UID, SANDBOX_USER

logger = logging.getLogger("symposium.process")

BWRAP = "/usr/bin/bwrap"
PRLIMIT = "/usr/bin/prlimit"
# prlimit sets the rlimits inside the sandbox, after bubblewrap has made the user
# namespace: set outside, RLIMIT_NPROC would count the server's own processes too.
SANDBOX_PRLIMIT = "/usr/libexec/symposium/prlimit"
READ_CHUNK = 64 * 1024
# The sandbox's folders of programs and libraries (mount points in the tenant's root,
# capabilities.files.paths.SANDBOX_SYSTEM_FOLDERS), filled per command.
SYSTEM_FOLDERS = ("/usr", "/bin", "/lib", "/lib64")

ETC_FILES = {
    "passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:Symposium sandbox:{SANDBOX_HOME}:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "group": f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}


@dataclass
class SandboxOutcome:
    exit_code: int | None
    signal: str | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration: float  # seconds, from the command's start
    # What the command wrote to the tenant's storage: a descriptor of the upper folder
    # of its overlay (capabilities.process.writes), None when it could write nothing.
    # The caller keeps or discards it, and closes it.
    writes_fd: int | None = None
    memory_limit_hit: bool = False


def available():
    return os.access(BWRAP, os.X_OK) and os.access(PRLIMIT, os.X_OK)


def _data_fd(name, data: bytes):
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def build_arguments(request, policy, storage, fds, root_fd):
    """bubblewrap's arguments for `request`. `storage` is (fd, writable) or None; data for
    generated files is put in memfds appended to `fds` (to be passed to bubblewrap);
    `root_fd` is the descriptor the staged root will have in bubblewrap."""
    a = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_UID),
        "--hostname", "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
        "--clearenv",
    ]
    for name, value in request.env.items():
        a += ["--setenv", name, value]

    # The root: the tenant's storage (or an empty tmpfs), prepared nosuid, nodev and
    # noexec in the command's own namespace before bubblewrap starts (mounts.Staging), on
    # the descriptor number `root_fd` once staged.
    writable = storage is None or storage[1]
    a += ["--bind-fd" if writable else "--ro-bind-fd", str(root_fd), "/"]
    a += system_view(request)

    a += ["--tmpfs", "/etc"]
    if os.path.exists("/etc/ld.so.cache"):
        a += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for name, content in ETC_FILES.items():
        fd = _data_fd(f"symposium-etc-{name}", content.encode())
        fds.append(fd)
        a += ["--ro-bind-data", str(fd), f"/etc/{name}"]
    a += ["--remount-ro", "/etc"]

    # The private /tmp: a tmpfs of SANDBOX_LIMITS["tmp_bytes"], nosuid, nodev, noexec,
    # made by mounts.Staging.
    a += ["--bind", mounts.STAGED_TMP, "/tmp"]
    a += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    if storage is not None:
        a += ["--tmpfs", "/.symposium", "--remount-ro", "/.symposium"]

    cwd = "/" + "/".join(request.cwd.parts)
    if storage is None or request.cwd.parts[:1] == ("tmp",):
        a += ["--dir", cwd]  # in a fresh tmpfs: made here
    a += ["--chdir", cwd]

    seccomp = seccomp_filter.filter_fd()
    fds.append(seccomp)
    a += ["--seccomp", str(seccomp)]

    return a


def system_view(request):
    """bubblewrap's arguments for the server's files a command sees: its tenant's
    allowed programs (in /usr/bin and /bin, nothing else there), the libraries they load,
    the trees they need at run time, /usr/share (read-only, noexec) and prlimit; not the
    rest of /usr, so that no command can exec a program off the allow-list, whatever it
    execs through (capabilities.process.programs)."""
    # /usr, /bin, /lib and /lib64 hold only what Staging bound into them (system_files),
    # each file at the very path the loader, the PATH or a #! line names it by.
    a = []
    for folder in SYSTEM_FOLDERS:
        # /bin is the same folder as /usr/bin (the commands, nothing else).
        source = mounts.STAGED_SYSTEM + ("/usr/bin" if folder == "/bin" else folder)
        a += ["--ro-bind", source, folder]
    return a


def system_files(request):
    """(files, trees) of the server the command sees, for Staging to bind. Worked out
    once per allow-list and kept while none of its programs has changed on the server
    (a package upgrade): reading the programs and their libraries costs milliseconds a
    command should not pay each time."""
    allowed = tuple(sorted(request.allowed_programs.items()))
    return _system_files(allowed, programs.modification_times([program for _, program in allowed] + [PRLIMIT]))


@lru_cache(maxsize=256)
def _system_files(allowed, _mtimes):
    files, trees = programs.visible_files([*(program for _, program in allowed), PRLIMIT])
    files = dict(files)
    for name, program in allowed:
        files[f"/usr/bin/{name}"] = program
    files[SANDBOX_PRLIMIT] = PRLIMIT
    return tuple(sorted(files.items())), tuple(trees)


def build_command_line(request, policy):
    """What runs in the sandbox: prlimit setting the rlimits, then the command."""
    cpu = math.ceil(request.timeout) + SANDBOX_LIMITS["cpu_grace_seconds"]
    address_space = max(policy.memory_mb, SANDBOX_LIMITS["min_address_space_mb"]) * MB
    nproc, nofile = SANDBOX_LIMITS["processes"], SANDBOX_LIMITS["open_files"]
    return [
        SANDBOX_PRLIMIT,
        f"--nproc={nproc}:{nproc}",
        f"--nofile={nofile}:{nofile}",
        f"--as={address_space}:{address_space}",
        f"--fsize={policy.max_file_size}:{policy.max_file_size}",
        f"--cpu={cpu}:{cpu}",
        "--core=0:0",
        "--",
        # Found through the fixed PATH in the sandbox's /usr/bin, so that argv[0] is the
        # bare name and messages read "ls: ..." as in a terminal.
        request.command,
        *request.args,
    ]


def memory_limit_bytes(policy):
    """What a command's whole tree may hold in memory at once: the profile's memory_mb
    (at least SANDBOX_LIMITS['min_address_space_mb']), its tmpfs files included."""
    return max(policy.memory_mb, SANDBOX_LIMITS["min_address_space_mb"]) * MB


def write_bytes(policy):
    """The size of the tmpfs that holds what a command writes to the tenant's storage
    until it ends: the quota at most, and never more than the command's memory, which
    it is part of (capabilities.process.writes)."""
    return min(policy.storage_quota, memory_limit_bytes(policy))


def run(request, policy, storage):
    """Runs `request` in the sandbox and returns a SandboxOutcome. With writable storage,
    the outcome's writes_fd holds what the command wrote, for the caller to merge."""
    if not available():
        raise CapabilityError("INTERNAL", "Process execution is not available on this server (no sandbox).")
    cgroups = CommandCgroups.create(SANDBOX_LIMITS["processes"], memory_limit_bytes(policy))
    if not cgroups.pids_bounded and os.geteuid() == 0:
        # As root, RLIMIT_NPROC binds nothing (see capabilities.process.cgroups): without a
        # cgroup nothing would bound a fork bomb, so no command runs at all.
        cgroups.remove()
        raise CapabilityError(
            "INTERNAL", "Process execution is not available on this server: it cannot limit the number of processes."
        )
    fds = []
    staging = None
    kept = False
    try:
        staging = _staging(storage, fds, request, policy, cgroups)
        arguments = build_arguments(request, policy, storage, fds, staging.root_fd_number)
        args_fd = _data_fd("symposium-bwrap-args", b"".join(arg.encode() + b"\0" for arg in arguments))
        fds.append(args_fd)
        outcome = _run_bwrap(request, policy, args_fd, fds, staging)
        outcome.writes_fd = staging.writes_fd
        outcome.memory_limit_hit = cgroups.memory_limit_hit()
        kept = True
        return outcome
    finally:
        for fd in fds:
            os.close(fd)
        if staging is not None:
            staging.close(keep_writes=kept)
        cgroups.kill_all()
        cgroups.remove()


def _staging(storage, fds, request, policy, cgroups):
    """How the command's writable places are prepared (capabilities.process.mounts). The
    staged root takes the number of a descriptor reserved here, passed to bubblewrap."""
    files, trees = system_files(request)
    reserved = os.open("/", os.O_PATH | os.O_CLOEXEC)
    fds.append(reserved)
    tree = None
    path = None
    writable = True
    overlay = None
    if storage is not None:
        storage_fd, writable = storage
        if writable:
            # The command writes to an overlay whose upper layer is a tmpfs of this size;
            # the storage itself is only read (capabilities.process.writes).
            overlay = write_bytes(policy)
        tree = mounts.detached_storage(storage_fd, writable=False if overlay else writable)
        if tree is not None:
            fds.append(tree)
        else:
            path = os.readlink(f"/proc/self/fd/{storage_fd}")
    return mounts.Staging(
        storage_path=path,
        storage_tree=tree,
        writable=writable,
        overlay_bytes=overlay,
        tmp_bytes=SANDBOX_LIMITS["tmp_bytes"],
        ids=mounts.sandbox_host_ids(),
        root_fd_number=reserved,
        system_files=files,
        system_trees=trees,
        cgroup_procs=cgroups.procs_files(),
    )


def _run_bwrap(request, policy, args_fd, fds, staging):
    status_read, status_write = os.pipe()
    block_read, block_write = os.pipe()
    status = _StatusReader(status_read)
    passed = [args_fd, status_write, block_read, *fds]
    command = [
        BWRAP,
        "--json-status-fd", str(status_write),
        "--block-fd", str(block_read),
        # The other options, the block's environment included, are read from a memfd:
        # none of them shows in the server's process list.
        "--args", str(args_fd),
        "--",
        *build_command_line(request, policy),
    ]
    process = None
    try:
        try:
            try:
                process = _start(command, request, passed, staging)
            except (OSError, subprocess.SubprocessError) as e:
                # The child could not prepare the command's namespace (Staging) or run
                # bubblewrap at all.
                logger.error("The process sandbox failed to start: %s", e)
                raise CapabilityError("INTERNAL", "The sandbox could not start the command.") from None
        finally:
            os.close(status_write)
            os.close(block_read)
            staging.parent_side_done(process is not None)
        child_pid = status.child_pid(SANDBOX_LIMITS["startup_seconds"])
        try:
            _hand_pipes_to(process, staging)
            if child_pid is None:
                raise OSError("bubblewrap reported no sandbox process")
            if staging.overlay_bytes is not None and staging.writes_fd is None:
                raise OSError("the command's writes folder was not handed over")
            os.write(block_write, b"go")
        except OSError as e:
            _kill(process)
            _sandbox_failed(process, str(e))
        outcome = _collect(process, request, policy)
        if outcome.exit_code is not None and not status.command_ran():
            _sandbox_failed(process, outcome.stderr[:2000].decode(errors="replace"))
        return outcome
    finally:
        os.close(block_write)
        status.close()
        if process is not None:
            if process.poll() is None:
                _kill(process)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None and not stream.closed:
                    stream.close()


def _start(command, request, passed, staging):
    """bubblewrap, started by this process's spawner (capabilities.process.spawner: a
    fork of a small process instead of this one), or by forking this process where the
    spawner is off or gone. Either way bubblewrap runs as the sandbox's user (the
    server's own unless the server is root), in its own session, with an empty
    environment, in the cgroups and the namespace that Staging enters and prepares in
    the child."""
    if settings.SYMPOSIUM_PROCESS_SPAWNER:
        helper = spawner.spawner()
        if helper is not None:
            plan, report_fd = staging.plan()
            try:
                return helper.spawn(command, plan=plan, report_fd=report_fd, pass_fds=passed,
                                    stdin_data=request.stdin is not None, timeout=SANDBOX_LIMITS["startup_seconds"])
            except spawner.SpawnerGone as e:
                logger.warning("The process spawner is gone (%s); this command forks the server", e)
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE if request.stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=passed,
        env={},
        start_new_session=True,  # its own process group, killed as one
        close_fds=True,
        preexec_fn=staging,
    )


def _hand_pipes_to(process, staging):
    """The command's stdin, stdout and stderr are the server's pipes; a command that
    reopens one (`sed /dev/stdin`, `tee /dev/stderr`) does so as the sandbox's user, so
    they are made its own. Done before bubblewrap starts the command (--block-fd)."""
    if os.geteuid() != 0:
        return
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            os.fchown(stream.fileno(), staging.uid, staging.gid)


def _sandbox_failed(process, detail):
    """bubblewrap itself failed to set the sandbox up. What it said names the server's
    folders: it goes to the server's log, and the block gets a plain fact."""
    if process.stderr is not None and not process.stderr.closed:
        detail = f"{detail} {process.stderr.read(2000).decode(errors='replace')}".strip()
    logger.error("The process sandbox failed to start: %s", detail)
    raise CapabilityError("INTERNAL", "The sandbox could not start the command.")


class _StatusReader:
    """bubblewrap's --json-status-fd: one JSON object per line, {"child-pid": N} at the
    start and {"exit-code": N} once the command has ended (none when setup failed)."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b""
        self.closed = False

    def fileno(self):
        return self.fd

    def feed(self):
        chunk = os.read(self.fd, 4096)
        self.buffer += chunk
        return bool(chunk)

    def objects(self):
        found = []
        for line in self.buffer.splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
        return found

    def child_pid(self, timeout):
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as waiting:
            waiting.register(self.fd, selectors.EVENT_READ)
            while True:
                for obj in self.objects():
                    if "child-pid" in obj:
                        return obj["child-pid"]
                left = deadline - time.monotonic()
                if left <= 0 or not waiting.select(left) or not self.feed():
                    return None

    def command_ran(self):
        # Read what is left (the command has ended, so this does not block for long).
        while not self.closed:
            with selectors.DefaultSelector() as waiting:
                waiting.register(self.fd, selectors.EVENT_READ)
                if not waiting.select(1) or not self.feed():
                    break
        return any("exit-code" in obj for obj in self.objects())

    def close(self):
        if not self.closed:
            os.close(self.fd)
            self.closed = True


def _kill(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _collect(process, request, policy):
    """Feeds stdin, reads stdout and stderr up to the cap each, and waits for the end or
    the timeout. Past its cap a stream is closed: the command gets SIGPIPE, as when a
    shell pipes it into `head -c`, so 1 GB of output costs neither memory nor minutes."""
    cap = policy.process_max_output
    started = time.monotonic()
    deadline = started + request.timeout
    if request.stop_by is not None:
        deadline = min(deadline, request.stop_by)
    out_fd, err_fd = process.stdout.fileno(), process.stderr.fileno()
    files = {out_fd: process.stdout, err_fd: process.stderr}
    buffers = {out_fd: bytearray(), err_fd: bytearray()}
    truncated = {out_fd: False, err_fd: False}
    pending_input = memoryview(request.stdin) if request.stdin is not None else None
    timed_out = False

    with selectors.DefaultSelector() as streams:
        for fd in buffers:
            os.set_blocking(fd, False)
            streams.register(fd, selectors.EVENT_READ)
        if pending_input is not None:
            stdin_fd = process.stdin.fileno()
            os.set_blocking(stdin_fd, False)
            if pending_input:
                streams.register(stdin_fd, selectors.EVENT_WRITE)
            else:
                process.stdin.close()
        while streams.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in streams.select(min(left, 1.0)):
                fd = key.fd
                if fd in buffers:
                    try:
                        chunk = os.read(fd, READ_CHUNK)
                    except BlockingIOError:
                        continue
                    buffer = buffers[fd]
                    buffer += chunk
                    if len(buffer) > cap:
                        del buffer[cap:]
                        truncated[fd] = True
                    if not chunk or truncated[fd]:
                        streams.unregister(fd)
                        files[fd].close()
                else:
                    try:
                        written = os.write(fd, pending_input[:READ_CHUNK])
                        pending_input = pending_input[written:]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending_input = pending_input[:0]  # the command stopped reading
                    if not pending_input:
                        streams.unregister(fd)
                        process.stdin.close()

    if not timed_out:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        _kill(process)
    duration = time.monotonic() - started

    exit_code, signal_name = process.returncode, None
    if timed_out:
        exit_code, signal_name = None, "SIGKILL"
    elif exit_code > 128 and exit_code - 128 in signal.valid_signals():
        # bubblewrap reports a command killed by signal N as 128+N, as shells do.
        signal_name = signal.Signals(exit_code - 128).name
    return SandboxOutcome(
        exit_code=exit_code,
        signal=signal_name,
        stdout=bytes(buffers[out_fd]),
        stderr=bytes(buffers[err_fd]),
        stdout_truncated=truncated[out_fd],
        stderr_truncated=truncated[err_fd],
        timed_out=timed_out,
        duration=duration,
    )
