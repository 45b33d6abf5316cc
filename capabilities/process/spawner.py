"""The spawner: a small process that forks the server's sandboxed commands and isolates.

A command's staging (capabilities.process.staging) runs between fork and exec, so a
command cannot be started with vfork or posix_spawn, and a fork copies the page tables of
the process that forks: a server of 300 MB pays about 7 ms a command for them, more than
`echo` takes. The spawner is a Python process of a few megabytes holding nothing but the
standard library; it forks in a fraction of a millisecond. One is started per server
process at its first command (with vfork: it needs nothing between fork and exec).

It is reached only through a socketpair the server made (SOCK_SEQPACKET): no path, no
abstract name, nothing another process could connect to. Per command the server sends one
message, the plan and the descriptors (SCM_RIGHTS): a socket of the command's own, its
stdin, stdout and stderr, and every descriptor bubblewrap is given, each with the number
the command line names. The spawner forks; the child puts the descriptors on their
numbers, closes every other one, starts a session, stages and execs bubblewrap with an
empty environment, as subprocess.Popen(start_new_session=True, env={}, preexec_fn=...)
would. On the command's socket the spawner answers `P<pid>` once bubblewrap runs (or
`F<errno>:<message>` when staging or exec failed) and `X<wait status>` when it ended.

When the server goes away (its end of the socketpair closes) the spawner kills the
process group of every command still running and exits. When the spawner goes away the
server starts another at its next command, and runs commands by forking itself until one
answers (capabilities.process.sandbox).

A launch (`launch=PATH`) is the same message with a launcher's arguments for argv: PATH
is a Python file whose main(argv) never returns (it execs), loaded into the spawner by
its path at its first launch and kept; the child calls it instead of exec'ing a new
Python to run it. The isolate pool launches its isolates so (isolates/sandbox.py: it
locks the child down and execs Deno), from a spawner of its own (isolates/pool.py), so
that commands and isolates do not queue behind each other and a pool's isolates die with
it. A fresh `python -I -S isolates/sandbox.py` spent about 25 ms starting the interpreter,
importing ctypes and compiling the launcher before its first step.
"""

import fcntl
import marshal
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from types import SimpleNamespace

MAX_MESSAGE = 1 << 20
MAX_FDS = 200
# Received descriptors are moved above this before they are put on their numbers, so that
# none is overwritten by another's dup2.
FD_FLOOR = 1024


class SpawnFailed(OSError):
    """The spawner could not start the command (staging or exec failed in its child)."""


class SpawnerGone(Exception):
    """The spawner did not take the command (it died or cannot be started)."""


# -- the server's side ----------------------------------------------------------------------


class Spawned:
    """A command the spawner started, with what the sandbox uses of subprocess.Popen:
    pid (its process group's too), stdin, stdout, stderr, poll(), wait(timeout) and
    returncode (negative for a signal)."""

    def __init__(self, pid, channel, stdin, stdout, stderr):
        self.pid = pid
        self.channel = channel
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            self._read_status(0)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None and not self._read_status(timeout):
            raise subprocess.TimeoutExpired("bubblewrap", timeout)
        return self.returncode

    def _read_status(self, timeout):
        self.channel.settimeout(timeout)
        try:
            message = self.channel.recv(64)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:
            message = b""
        finally:
            if self.channel.fileno() != -1:
                self.channel.settimeout(None)
        self.returncode = self.returncode_from(message)
        self.channel.close()
        return True

    @staticmethod
    def returncode_from(message):
        """The return code an `X<wait status>` answer tells of (negative for a signal)."""
        if message.startswith(b"X"):
            return os.waitstatus_to_exitcode(int(message[1:]))
        # The spawner went away before it said: the command was killed with it.
        return -signal.SIGKILL


class Spawner:
    """The server process's spawner (see the module's docstring)."""

    def __init__(self):
        self.owner = os.getpid()
        self.lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            theirs.close()
        self.control = ours

    def alive(self):
        return self.owner == os.getpid() and self.process.poll() is None

    def spawn(self, argv, *, plan, report_fd, pass_fds, stdin_data, timeout):
        """Starts `argv` as the spawner's grandchild and returns a Spawned. `plan` is
        Staging.plan()'s fields (or None: no staging), `pass_fds` keep their numbers,
        `stdin_data` is True for a pipe (else /dev/null). Raises SpawnFailed when the
        command's staging or exec failed or the spawner did not answer, SpawnerGone
        when the spawner could not be given the command."""
        channel, pipes = self.request(argv, plan=plan, report_fd=report_fd, pass_fds=pass_fds, stdin_data=stdin_data)
        channel.settimeout(timeout)
        try:
            answer = channel.recv(4096)
        except OSError:  # TimeoutError included
            answer = b""
        channel.settimeout(None)
        return self.started(answer, channel, pipes)

    def request(self, argv, *, plan=None, report_fd=None, pass_fds=(), stdin_data=True, launch=None):
        """Sends the spawner one command (or, with `launch` a launcher's path, one launch:
        argv is then the launcher's arguments) and returns its channel and the server's
        ends of its pipes (stdin's None without `stdin_data`), for started() once the
        channel answers. Raises SpawnerGone when the spawner could not be given it."""
        channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours_pipes, child_ends = [], []
        try:
            try:
                if stdin_data:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    ours_pipes.append(open(w, "wb", buffering=0))
                    child_ends.append(r)
                else:
                    ours_pipes.append(None)
                    child_ends.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
                for _ in range(2):
                    r, w = os.pipe2(os.O_CLOEXEC)
                    ours_pipes.append(open(r, "rb", buffering=0))
                    child_ends.append(w)
                report = [report_fd] if report_fd is not None else []
                header = marshal.dumps({"argv": list(argv), "targets": [0, 1, 2, *pass_fds, *report], "plan": plan, "launch": launch})
                try:
                    with self.lock:
                        socket.send_fds(self.control, [header], [theirs.fileno(), *child_ends, *pass_fds, *report])
                except OSError as e:
                    # Not sent, so not started: the caller may start it another way.
                    raise SpawnerGone(str(e)) from None
            finally:
                theirs.close()
                for fd in child_ends:
                    os.close(fd)
        except BaseException:
            self.discard(channel, ours_pipes)
            raise
        return channel, ours_pipes

    @staticmethod
    def discard(channel, pipes):
        """Closes what request() returned, for a command given up before it answered (it
        ends at its stdin's end of file, or with the spawner)."""
        channel.close()
        for stream in pipes:
            if stream is not None:
                stream.close()

    @staticmethod
    def started(answer, channel, pipes):
        """The Spawned that the channel's first answer tells of, or SpawnFailed."""
        if answer.startswith(b"P"):
            return Spawned(int(answer[1:]), channel, *pipes)
        Spawner.discard(channel, pipes)
        errno_text, _, message = answer[1:].decode(errors="replace").partition(":")
        # Sent but not answered: it may have started, so it is not started again (the
        # command's cgroups are emptied afterwards whatever became of it).
        raise SpawnFailed(int(errno_text) if errno_text.isdigit() else 0, message or "the spawner did not answer")

    def close(self):
        self.control.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_spawner = None
_spawner_lock = threading.Lock()


def spawner():
    """This process's spawner, started (again) when there is none or it died; None
    when it cannot be started."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.alive():
            if _spawner is not None and _spawner.owner == os.getpid():
                _spawner.control.close()
            try:
                _spawner = Spawner()
            except OSError:
                _spawner = None
        return _spawner


# -- the spawner's side ---------------------------------------------------------------------


def _load_staging():
    # By its path: importing it as capabilities.process.staging would run the package's
    # __init__, which loads Django.
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "staging.py")
    spec = importlib.util.spec_from_file_location("symposium_staging", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_launcher(path):
    # By its path, as the staging (the isolate launcher imports nothing of the platform).
    import importlib.util

    spec = importlib.util.spec_from_file_location("symposium_launcher", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(request, fds, failure, staging, launchers):
    """In the forked child: never returns."""
    try:
        os.setsid()
        # Everything out of the way of the numbers the command line names, first.
        failure = fcntl.fcntl(failure, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR) for fd in fds]
        targets = request["targets"]
        for fd, target in zip(moved, targets):
            os.dup2(fd, target, inheritable=True)
        keep = set(targets) | {failure}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if request.get("launch"):
            # As a launcher started as its own `python -I -S` would be (SIGPIPE and
            # SIGXFSZ ignored, as Python sets them, and so inherited by Deno), with
            # SIGINT back to its default. The launcher closes every descriptor but 0-2
            # (the failure pipe too: the answer is P<pid> from there on; a refusal is its
            # line on stderr and exit code 70, as a launcher's own) and execs Deno.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            launchers[request["launch"]].main(request["argv"])
            os._exit(127)
        for name in ("SIGPIPE", "SIGXFSZ", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        plan = request["plan"]
        if plan is not None:
            report = socket.socket(fileno=targets[-1]) if plan.get("overlay_bytes") is not None else None
            staging.stage(SimpleNamespace(**plan, report=report))
            if report is not None:
                report.close()  # bubblewrap is not given it
        argv = request["argv"]
        os.execve(argv[0], argv, {})
    except BaseException as e:  # noqa: BLE001 (the child reports whatever stopped it, and exits)
        try:
            os.write(failure, f"{getattr(e, 'errno', 0) or 0}:{e}".encode(errors="replace")[:2000])
        finally:
            os._exit(127)
    os._exit(127)


def serve(control_fd):
    # Ctrl-C at a development server reaches its whole process group: the server's own
    # end (closing the socketpair) is what ends the spawner.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    staging = _load_staging()
    launchers = {}  # path -> the launcher loaded from it
    control = socket.socket(fileno=control_fd)
    waiting = selectors.DefaultSelector()
    waiting.register(control, selectors.EVENT_READ, ("control", None))
    running = {}  # pid -> the command's channel

    def start(message, fds):
        channel = socket.socket(fileno=fds[0])
        try:
            request = marshal.loads(message)
            if request.get("launch") and request["launch"] not in launchers:
                launchers[request["launch"]] = _load_launcher(request["launch"])
            read_failure, write_failure = os.pipe2(os.O_CLOEXEC)
        except Exception as e:  # noqa: BLE001 (a bad request, or a launcher that will not load, is answered; the spawner goes on)
            channel.send(f"F0:{e}".encode())
            channel.close()
            for fd in fds[1:]:
                os.close(fd)
            return
        try:
            pid = os.fork()
        except OSError as e:
            pid = None
            _send(channel, f"F{e.errno}:{e.strerror}".encode())
            channel.close()
        if pid == 0:
            _child(request, fds[1:], write_failure, staging, launchers)
        for fd in fds[1:]:
            os.close(fd)
        os.close(write_failure)
        if pid is None:
            os.close(read_failure)
            return
        # EOF once bubblewrap was exec'd (the pipe is close-on-exec), a reason otherwise.
        chunks = []
        while True:
            chunk = os.read(read_failure, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_failure)
        if chunks:
            os.waitpid(pid, 0)
            _send(channel, b"F" + b"".join(chunks))
            channel.close()
            return
        _send(channel, b"P%d" % pid)
        running[pid] = channel
        waiting.register(os.pidfd_open(pid), selectors.EVENT_READ, ("exit", pid))

    while True:
        for key, _ in waiting.select():
            kind, pid = key.data
            if kind == "exit":
                waiting.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                channel = running.pop(pid)
                _send(channel, b"X%d" % status)
                channel.close()
                continue
            try:
                message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, MAX_FDS)
            except OSError:
                message, fds = b"", []
            if not message:
                # The server is gone: so are its commands.
                for pid in running:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
                return
            if fds:
                start(message, fds)


def _send(channel, data):
    try:
        channel.send(data)
    except OSError:
        pass  # the server stopped waiting for this command


if __name__ == "__main__":
    serve(int(sys.argv[1]))
