"""The isolate pool: locked-down Deno processes, kept warm, one per run.

    pool = IsolatePool(broker_port=8001, warm_size=2, warm_limits=[(128, 60)])
    isolate = await pool.acquire(memory_mb=128, cpu_seconds=60)
    await isolate.assign("ws://127.0.0.1:8001/ws/isolate/", token)
    exit = await isolate.wait()          # an IsolateExit: return code, reason, peak memory
    isolate.kill()                       # SIGKILL to its process group (wall clock, stop)
    await pool.shutdown()                # kills everything the pool started

An isolate is the launcher, `isolates/sandbox.py ... -- deno run ... runtime/main.js PORT`,
run by the pool's spawner (capabilities/process/spawner.py) in a fork of itself: the
launcher locks the process down and execs Deno, whose bootstrap creates the block's Worker
and prints "ready". It is then *warm*: waiting for its one assignment, which reaches it
on the connection to the broker that it opened at once (the run bound to that connection
in memory, isolates/waiting.py) or, when that connection is not waiting, on stdin. The V8 heap
limit is a per-process flag and RLIMIT_CPU is set by the launcher (changing it from
outside needs CAP_SYS_RESOURCE, which the server does not have and should not need), so
warm isolates are kept per (memory, CPU) pair: in practice one set per permission
profile, warmed when a profile is first used or named in `warm_limits`.

Everything is asyncio, with no thread of its own: the pool belongs to the event loop that
first uses it (Daphne's, or the one `asyncio.run` makes for a management command), and
never blocks it. Isolates that outlive their server clean themselves up: a warm one sees
its stdin close, a running one its websocket; the spawner kills them when the server's end
of it closes, and the launcher asks the kernel to kill the isolate when the spawner dies.
"""

import asyncio
import base64
import collections
import fcntl
import json
import logging
import os
import secrets
import signal
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

import deno

from capabilities.process import spawner as spawners
from isolates import sandbox, waiting

logger = logging.getLogger(__name__)

ISOLATES_DIR = Path(__file__).resolve().parent
SANDBOX = ISOLATES_DIR / "sandbox.py"
RUNTIME_DIR = ISOLATES_DIR / "runtime"
MAIN_JS = RUNTIME_DIR / "main.js"
WORKER_JS = RUNTIME_DIR / "worker.js"

# RLIMIT_CPU counts the isolate's start-up (about 0.15 s of CPU) too: it gets this much
# on top of the run's budget, so that the block itself has at least what it was promised.
STARTUP_CPU_ALLOWANCE = 1
# How long a spawn may take to print "ready" (a loaded machine starts Deno in ~0.1 s).
READY_TIMEOUT = 20.0
# An isolate taken for a run is replaced this long after, not at once: a spare's start-up
# (some 100 ms of a core) begun at the same instant would compete with that run's own
# start for the machine's cores (measured on two: warm start 12.4 -> 7.7-8.7 ms p50).
REFILL_AFTER_TAKE_SECONDS = 0.05
# How much of an isolate's stderr is kept (the end of it: V8's last words are there).
STDERR_TAIL_BYTES = 16 * 1024
# What one isolate may write to stderr in all: the launcher's notes, the runtime's last
# words and V8's out-of-memory report take a few KB and a few dozen lines. Past either
# bound the isolate is ended (it is flooding: the block found a way to its stderr, which
# the runtime closes), so that reading it costs the server a bounded amount of work.
STDERR_MAX_BYTES = 1024 * 1024
STDERR_MAX_LINES = 5000
# Longer lines are kept as several (reading one never holds more than this).
STDERR_LINE_BYTES = 4096
# Lines that are the launcher's or the runtime's own. Only stderr written before the
# isolate is assigned its run is taken for theirs as it reads (no block code is in the
# process yet); later, only the runtime's lines carrying the isolate's mark, a secret the
# pool hands the bootstrap with the assignment and the block's worker never sees. Every
# other line written after the assignment is kept under UNTRUSTED_PREFIX, so that none
# can pass for a "symposium-sandbox:" or "symposium-runtime:" line.
UNTRUSTED_PREFIX = b"[isolate] "
# Distinct launcher notes logged per pool (the launcher has a handful; a bound all the same).
MAX_NOTED = 64
# How often a running isolate's memory is sampled for its peak.
SAMPLE_INTERVAL = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/PID/stat's CPU times
# A crashed isolate whose sampled VmData came this close to its RLIMIT_DATA ran out of
# memory (the sampler sees the last SAMPLE_INTERVAL's growth late, hence the slack).
DATA_LIMIT_SLACK = 16 * 1024 * 1024
MIN_MEMORY_MB = 16

# Exit codes of runtime/main.js.
RUNTIME_EXIT_REASONS = {
    0: "finished",
    10: "released before it was assigned a run",
    11: "the assignment or start frame was malformed",
    12: "the broker connection closed before the block finished",
    13: "stopped by the broker",
    14: "the runtime failed to start",
    70: "the sandbox could not be set up",
}

# What V8 and Rust print when memory runs out. The JS heap: V8 gave up on its heap at the
# --max-old-space-size limit ("Reached heap limit", or CALL_AND_RETRY_LAST after a last-
# resort GC near it). Elsewhere: an allocation outside the heap (ArrayBuffers, the
# runtime's own memory, a heap page) that RLIMIT_DATA refused.
HEAP_LIMIT_MARKERS = (b"Fatal JavaScript out of memory", b"JavaScript heap out of memory")
MEMORY_LIMIT_MARKERS = (b"Fatal process out of memory", b"memory allocation of", b"out of memory")


# The block resolves no names: a DNS query is a channel of its own to any resolver, outside
# symposium.network's checks and audit log. The Worker has no net permission, so Deno
# refuses the queries; the runtime makes every way to ask refuse plainly, before any
# socket: Deno.resolveDns in worker.js, and the named exports of node:dns and
# node:dns/promises here, through an import map
# that puts a module of refusals in their place (Deno applies it to the Worker's imports,
# static and dynamic). Its exports mirror node:dns's, so that `import { lookup } from
# "node:dns"` links and then refuses, with a message saying why.
NODE_DNS_EXPORTS = (
    "Resolver", "getDefaultResultOrder", "getServers", "lookup", "lookupService", "resolve",
    "resolve4", "resolve6", "resolveAny", "resolveCaa", "resolveCname", "resolveMx",
    "resolveNaptr", "resolveNs", "resolvePtr", "resolveSoa", "resolveSrv", "resolveTxt",
    "reverse", "setDefaultResultOrder", "setServers",
)  # fmt: skip
DNS_REFUSAL = (
    "{what} is not available to content blocks: a block resolves no names. "
    "symposium.network.fetch(url) resolves and checks the host itself."
)


def _refusing_module(specifier, with_promises):
    lines = ["const NotCapable = Deno.errors.NotCapable;"]
    for name in NODE_DNS_EXPORTS:
        message = json.dumps(DNS_REFUSAL.format(what=f"{specifier} {name}()"))
        lines.append(f"export function {name}() {{ throw new NotCapable({message}); }}")
    names = list(NODE_DNS_EXPORTS)
    if with_promises:
        lines.append(f"export const promises = Object.freeze({{ {', '.join(NODE_DNS_EXPORTS)} }});")
        names.append("promises")
    lines.append(f"export default Object.freeze({{ {', '.join(names)} }});")
    source = "\n".join(lines) + "\n"
    return "data:text/javascript;base64," + base64.b64encode(source.encode()).decode()


# Node's side of the block's standard streams (see isolates/runtime/worker.js, which closes
# Deno's): node keeps descriptors 0-2 of its own (node:fs's writeSync(2)), and its native
# stream handles write to any descriptor they are given (node:tty's WriteStream(2),
# node:net's Socket({fd: 2}), process.binding("tty_wrap")). This module closes node's
# descriptors, makes the handles' one shared write path refuse, and points node:console,
# process.stdout, process.stderr and process._rawDebug at the block's console (cap
# included). The import map puts a module in place of every node built-in that imports
# this one first and then re-exports the built-in, so it has run before any node module
# reaches the block (statically, dynamically, or through createRequire and
# getBuiltinModule, which are node's), and only in runs that use node: loading node
# costs memory a run without it should keep.
SEAL_NODE = """\
import { closeSync } from "node:fs";
import nodeConsole from "node:console";
import process from "node:process";
import { Writable } from "node:stream";
const NotCapable = Deno.errors.NotCapable;
function refuses() {
  return function () {
    throw new NotCapable("Writing to the isolate's standard streams is not available to content blocks; use console.log()");
  };
}
for (const fd of [0, 1, 2]) {
  try { closeSync(fd); } catch { /* not in node's table */ }
}
const streamWrap = Object.getPrototypeOf(process.binding("tty_wrap").TTY.prototype);
for (const name of ["writeBuffer", "writev", "writeUtf8String", "writeAsciiString", "writeLatin1String", "writeUcs2String"]) {
  Object.defineProperty(streamWrap, name, { value: refuses(), writable: false, configurable: false });
}
Object.freeze(streamWrap);
for (const key of Reflect.ownKeys(nodeConsole)) {
  // Deno's console, whose methods worker.js has made the block's already.
  if (typeof nodeConsole[key] !== "function" || key === "Console" || !Object.getOwnPropertyDescriptor(nodeConsole, key).configurable) continue;
  Object.defineProperty(nodeConsole, key, { value: (...args) => globalThis.console[key]?.(...args), writable: false, configurable: false });
}
Object.freeze(nodeConsole);
function consoleStream(level, fd) {
  const decoder = new TextDecoder();
  const stream = new Writable({
    decodeStrings: false,
    write(chunk, _encoding, callback) {
      const text = typeof chunk === "string" ? chunk : decoder.decode(chunk);
      globalThis.console[level](text.endsWith("\\n") ? text.slice(0, -1) : text);
      callback();
    },
  });
  Object.defineProperties(stream, { fd: { value: fd }, isTTY: { value: false } });
  return stream;
}
const stdout = consoleStream("log", 1);
const stderr = consoleStream("error", 2);
Object.defineProperty(process, "stdout", { get: () => stdout, configurable: false });
Object.defineProperty(process, "stderr", { get: () => stderr, configurable: false });
Object.defineProperty(process, "stdin", { get: () => { throw new NotCapable("process.stdin is not available to content blocks"); }, configurable: false });
Object.defineProperty(process, "_rawDebug", { value: (...args) => globalThis.console.error(...args), writable: false, configurable: false });
"""
# Deno's node built-ins (node:module's builtinModules, Deno 2.9).
NODE_BUILTINS = (
    "_http_agent", "_http_common", "_http_outgoing", "_http_server", "_stream_duplex",
    "_stream_passthrough", "_stream_readable", "_stream_transform", "_stream_writable",
    "_tls_common", "_tls_wrap", "assert", "assert/strict", "async_hooks", "buffer",
    "child_process", "cluster", "console", "constants", "crypto", "dgram",
    "diagnostics_channel", "domain", "events", "fs", "fs/promises", "http", "http2", "https",
    "inspector", "inspector/promises", "module", "net", "os", "path", "path/posix",
    "path/win32", "perf_hooks", "process", "punycode", "querystring", "readline",
    "readline/promises", "repl", "sqlite", "stream", "stream/consumers", "stream/promises",
    "stream/web", "string_decoder", "sys", "test", "test/reporters", "timers",
    "timers/promises", "tls", "trace_events", "tty", "url", "util", "util/types", "v8", "vm",
    "wasi", "worker_threads", "zlib",
)  # fmt: skip


def _in_scope_prefix():
    """The first line of every module the import map adds: it imports the sealer, and its
    base64 ends in "/", which makes it a scope prefix (import map scopes match by
    prefix only up to a "/"). Modules in the scope import node's built-ins themselves; a
    data: URL a block makes to start the same way still runs the sealer first."""
    head = 'import "symposium:seal-node"; //'
    line = head + "?"
    while len(line.encode()) % 3:
        line = line[:-1] + " ?"
    assert base64.b64encode(line.encode()).decode().endswith("/")
    return line


IN_SCOPE = _in_scope_prefix()


def _in_scope_module(source):
    return "data:text/javascript;base64," + base64.b64encode(f"{IN_SCOPE}\n{source}".encode()).decode()


def import_map():
    """The runtime's import map, as a data: URL (Deno reads it before any permission)."""
    imports = {"symposium:seal-node": _in_scope_module(SEAL_NODE)}
    for name in NODE_BUILTINS:
        specifier = json.dumps(f"node:{name}")
        imports[f"node:{name}"] = _in_scope_module(f"export * from {specifier};\nexport {{ default }} from {specifier};\n")
    imports["node:dns"] = _refusing_module("node:dns", True)
    imports["node:dns/promises"] = _refusing_module("node:dns/promises", False)
    scope = "data:text/javascript;base64," + base64.b64encode(IN_SCOPE.encode()).decode()
    scopes = {scope: {f"node:{name}": f"node:{name}" for name in NODE_BUILTINS}}
    return "data:application/json;base64," + base64.b64encode(json.dumps({"imports": imports, "scopes": scopes}).encode()).decode()


IMPORT_MAP = import_map()


def semi_space_mb(memory_mb):
    """V8's young generation is outside --max-old-space-size and defaults to 3 x 16 MB;
    for small heaps it would be most of the memory. A sixteenth of the heap per
    semi-space (between 1 and 16 MB) keeps it in proportion."""
    return max(1, min(16, memory_mb // 16))


def find_deno():
    return deno.find_deno_bin()


class IsolateStartError(RuntimeError):
    """An isolate did not come up. The message is for operators (it may quote stderr)."""


class LaunchedProcess:
    """An isolate forked by the pool's spawner (capabilities.process.spawner), with what
    Isolate uses of an asyncio subprocess: pid (its process group's too), returncode
    (negative for a signal), stdin (a StreamWriter), stdout and stderr (StreamReaders),
    wait() and get_pipe_transport(fd). Its exit status comes on its spawner channel: the
    spawner is its parent and reaps it."""

    def __init__(self, spawned, transports, stdin, stdout, stderr):
        self.pid = spawned.pid
        self.returncode = None
        self._channel = spawned.channel
        self._transports = transports
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self._waiter = None

    @classmethod
    async def connect(cls, spawned):
        loop = asyncio.get_running_loop()
        transports, readers = {}, []
        try:
            transports[0], stdin_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, spawned.stdin)
            stdin = asyncio.StreamWriter(transports[0], stdin_protocol, None, loop)
            for fd, pipe in ((1, spawned.stdout), (2, spawned.stderr)):
                reader = asyncio.StreamReader(loop=loop)
                transports[fd], _ = await loop.connect_read_pipe(lambda reader=reader: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
                readers.append(reader)
        except BaseException:
            for transport in transports.values():
                transport.close()
            spawners.Spawner.discard(spawned.channel, (spawned.stdin, spawned.stdout, spawned.stderr))
            try:
                os.killpg(spawned.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise
        spawned.channel.setblocking(False)
        return cls(spawned, transports, stdin, *readers)

    def get_pipe_transport(self, fd):
        return self._transports.get(fd)

    async def wait(self):
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiter)

    async def _wait(self):
        try:
            message = await asyncio.get_running_loop().sock_recv(self._channel, 64)
        except OSError:
            message = b""
        self._channel.close()
        self.returncode = spawners.Spawned.returncode_from(message)
        self._transports[0].close()  # stdin; stdout and stderr end at their end of file
        return self.returncode


@dataclass
class IsolateExit:
    returncode: int  # as asyncio reports it: negative for a signal
    signal: int | None  # the signal's number when a signal ended the process
    signal_name: str | None  # e.g. "SIGKILL"
    reason: str  # one sentence for the run's record
    heap_limit_hit: bool = False  # V8's heap limit (--max-old-space-size)
    memory_limit_hit: bool = False  # an allocation outside the JS heap failed (RLIMIT_DATA)
    cpu_limit_hit: bool = False  # RLIMIT_CPU
    killed: bool = False  # by Isolate.kill() (wall clock, stop, shutdown)
    stderr_flooded: bool = False  # ended for writing past STDERR_MAX_BYTES or STDERR_MAX_LINES
    peak_rss_bytes: int | None = None
    cpu_seconds: float | None = None
    stderr: str = ""  # the last STDERR_TAIL_BYTES, for operators; never shown to tenants

    @property
    def out_of_memory(self):
        return self.heap_limit_hit or self.memory_limit_hit


@dataclass(eq=False)  # identity, not value: isolates live in sets
class Isolate:
    """One locked-down process, good for exactly one run."""

    process: asyncio.subprocess.Process
    memory_mb: int
    cpu_limit_seconds: int
    spawned_at: float
    ready_at: float | None = None
    assigned_at: float | None = None
    _stderr_tail: collections.deque = field(default_factory=collections.deque)
    _stderr_size: int = 0
    _stderr_task: asyncio.Task | None = None
    _stderr_read: int = 0  # bytes read from stderr so far
    _stderr_lines: int = 0
    _stderr_partial: bytes = b""  # the line being read, up to STDERR_LINE_BYTES
    _stderr_trusted_until: int | None = None  # stderr offset at assignment (None before)
    _stderr_flooded: bool = False
    _mark: str = field(default_factory=lambda: secrets.token_hex(12))
    # What a connection of this isolate says to be bound its run in memory (isolates/waiting.py).
    _key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _binding: asyncio.Task | None = None
    _sampler: asyncio.Task | None = None
    _peak_rss: int | None = None
    _peak_data: int = 0  # the highest VmData sampled (what RLIMIT_DATA counts)
    _cpu_used: float | None = None
    # /proc/PID files the sampler reads, kept open while the process lives (name -> fd).
    _proc_fds: dict = field(default_factory=dict)
    _killed: bool = False
    _exit: IsolateExit | None = None

    @property
    def pid(self):
        return self.process.pid

    @property
    def alive(self):
        return self.process.returncode is None

    # -- lifecycle ----------------------------------------------------------------------

    async def assign(self, url, token):
        """Hand the isolate its run: bound in memory to the isolate's connection when it
        waits on one to this process's broker (isolates/waiting.py), else told on stdin
        to connect to `url` and say hello with `token`."""
        if self.assigned_at is not None:
            raise RuntimeError("an isolate runs exactly one block")
        self.assigned_at = time.monotonic()
        self._stderr_trusted_until = self._stderr_written()
        bind = waiting.take(self._key)
        if bind is not None:
            # Its stdin stays open: closed now, it could reach the isolate before the
            # start does on the connection, and a warm isolate whose stdin closes exits.
            self._binding = asyncio.ensure_future(self._bind(bind, token))
        else:
            try:
                self.process.stdin.write(json.dumps({"url": url, "token": token}).encode() + b"\n")
                await self.process.stdin.drain()
                self.process.stdin.close()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise IsolateStartError("the isolate exited before it was assigned its run") from exc
        self._sampler = asyncio.ensure_future(self._sample_memory())

    async def _bind(self, bind, token):
        try:
            await bind(token)
        except Exception:
            logger.exception("starting a run on its isolate's waiting connection failed")
            self.kill()

    def kill(self):
        """SIGKILL the isolate's whole process group. Reaping is asyncio's (see wait())."""
        if self.process.returncode is not None:
            return
        self._killed = True
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def terminate(self):
        """Kill and reap: returns the exit record."""
        self.kill()
        return await self.wait()

    async def wait(self):
        """Wait for the process to end and say how it ended."""
        if self._exit is not None:
            return self._exit
        returncode = await self.process.wait()
        # Anything left in the group (there should be nothing: the isolate cannot fork)
        # goes with its leader.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(self._stderr_task, 2)
            except asyncio.TimeoutError:
                self._stderr_task.cancel()
        if self._sampler is not None:
            self._sampler.cancel()
        self._exit = self._describe_exit(returncode)
        self._close_proc()
        return self._exit

    # -- memory and CPU figures -----------------------------------------------------------

    def _proc(self, name):
        """/proc/PID/<name> as it reads now, through a descriptor opened while the process
        lived and kept: re-read with one pread (an open() each time cost ten times as
        much, for every running isolate ten times a second), and never another
        process's file once this one is reaped and its pid is given again (b"" then)."""
        fd = self._proc_fds.get(name)
        if fd is None:
            if self.process.returncode is not None:
                return b""
            fd = self._proc_fds[name] = os.open(f"/proc/{self.pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(fd, 16384, 0)

    def _close_proc(self):
        for fd in self._proc_fds.values():
            os.close(fd)
        self._proc_fds.clear()

    def __del__(self):
        # An isolate dropped without being waited for (the pool waits for every one).
        self._close_proc()

    def _status_fields(self, *names):
        """These fields of /proc/PID/status, in bytes (None for each once the process is
        gone), from one read of the file."""
        found = dict.fromkeys(names)
        try:
            status = b"\n" + self._proc("status")
            for name in names:
                key = b"\n" + name.encode() + b":"
                start = status.find(key)
                if start >= 0:
                    start += len(key)
                    found[name] = int(status[start:status.index(b"kB", start)]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return found

    def rss(self):
        """Resident memory now, in bytes (None once the process is gone)."""
        return self._status_fields("VmRSS")["VmRSS"]

    @property
    def peak_rss(self):
        """The highest resident memory seen, in bytes: the kernel's high-water mark while
        the process lives, the last sample of it afterwards."""
        self._note_peaks(self._status_fields("VmHWM"))
        return self._peak_rss

    def _note_peaks(self, fields):
        if fields.get("VmHWM") is not None:
            self._peak_rss = max(fields["VmHWM"], self._peak_rss or 0)
        if fields.get("VmData") is not None:
            self._peak_data = max(fields["VmData"], self._peak_data)

    @property
    def cpu_seconds(self):
        """CPU seconds used by all of the process's threads (the last sample once it is
        gone)."""
        return self.cpu_time()

    def pss(self):
        """Proportional set size in bytes: memory with shared pages (the Deno binary, libc)
        divided among the processes that share them. The honest per-isolate cost."""
        try:
            with open(f"/proc/{self.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def cpu_time(self):
        """CPU seconds used so far by all of the process's threads."""
        try:
            fields = self._proc("stat").rsplit(b")", 1)[1].split()
            used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            return self._cpu_used
        self._cpu_used = used
        return used

    async def _sample_memory(self):
        # VmHWM is already a peak, so sampling it only has to happen before the process
        # disappears; a run that grows in its last SAMPLE_INTERVAL is under-reported by
        # that last growth at most.
        # Past half its heap budget (VmData within half the budget of RLIMIT_DATA) a
        # process is sampled ten times as often: a crash at the limit is told from other
        # crashes by the last sample (_crashed_at_data_limit), which a busy machine would
        # otherwise take too late. (Half of RLIMIT_DATA itself is always passed: V8's
        # reserved code ranges alone are most of it.)
        near = sandbox.data_limit_bytes(self.memory_mb) - sandbox.heap_budget_mb(self.memory_mb) * sandbox.MB // 2
        while self.process.returncode is None:
            self._note_peaks(self._status_fields("VmHWM", "VmData"))
            self.cpu_time()
            await asyncio.sleep(SAMPLE_INTERVAL / 10 if self._peak_data >= near else SAMPLE_INTERVAL)

    # -- internals ------------------------------------------------------------------------

    async def _read_stderr(self, pool):
        stream = self.process.stderr
        while True:
            chunk = await stream.read(4096)
            if not chunk:
                break
            if self._stderr_flooded:
                continue  # killed already: drain until the pipe closes, keep nothing
            self._take_stderr(chunk, pool)
        if self._stderr_partial:
            self._take_line(self._stderr_partial, self._stderr_read, pool)
            self._stderr_partial = b""

    def _stderr_written(self):
        """How many bytes the isolate has written to stderr so far: those read, those
        asyncio holds, and those still in the pipe."""
        written = self._stderr_read + len(getattr(self.process.stderr, "_buffer", b""))
        transport = self._pipe_transport(2)
        pipe = transport.get_extra_info("pipe") if transport is not None else None
        if pipe is not None:
            try:
                pending = bytearray(4)
                fcntl.ioctl(pipe.fileno(), termios.FIONREAD, pending)
                written += int.from_bytes(pending, sys.byteorder)
            except (OSError, ValueError):
                pass
        return written

    def _pipe_transport(self, fd):
        # A LaunchedProcess holds its pipes' transports itself; asyncio's subprocess (a
        # test's stand-in for an isolate) in its transport.
        holder = getattr(self.process, "_transport", self.process)
        return holder.get_pipe_transport(fd) if holder is not None else None

    def _take_stderr(self, chunk, pool):
        self._stderr_read += len(chunk)
        self._stderr_lines += chunk.count(b"\n")
        if self._stderr_read > STDERR_MAX_BYTES or self._stderr_lines > STDERR_MAX_LINES:
            self._stderr_flooded = True
            self._stderr_partial = b""
            self.kill()
            return
        data = self._stderr_partial + chunk
        base = self._stderr_read - len(data)  # the stderr offset data starts at
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            for offset in range(start, max(newline, start + 1), STDERR_LINE_BYTES):
                cut = min(offset + STDERR_LINE_BYTES, newline)
                self._take_line(data[offset:cut], base + (newline + 1 if cut == newline else cut), pool)
            start = newline + 1
        while len(data) - start >= STDERR_LINE_BYTES:
            self._take_line(data[start:start + STDERR_LINE_BYTES], base + start + STDERR_LINE_BYTES, pool)
            start += STDERR_LINE_BYTES
        self._stderr_partial = data[start:]

    def _take_line(self, line, end, pool):
        """Keep one line in the tail (`end` is the stderr offset just past it), saying
        whose it is. Lines written before the assignment are the launcher's and the
        runtime's (the launcher's notes go to the server's log); after it, a runtime line
        is believed only with the isolate's mark."""
        trusted = self._stderr_trusted_until is None or end <= self._stderr_trusted_until
        if trusted:
            if line.startswith(b"symposium-sandbox:"):
                pool._note_sandbox_message(line.decode(errors="replace"))
        else:
            marked = f"symposium-runtime[{self._mark}]:".encode()
            if line.startswith(marked):
                line = b"symposium-runtime:" + line[len(marked):]
            else:
                line = UNTRUSTED_PREFIX + line
        self._stderr_tail.append(line + b"\n")
        self._stderr_size += len(line) + 1
        while len(self._stderr_tail) > 1 and self._stderr_size - len(self._stderr_tail[0]) >= STDERR_TAIL_BYTES:
            self._stderr_size -= len(self._stderr_tail.popleft())

    def _stderr_bytes(self):
        data = b"".join(self._stderr_tail)
        if len(data) > STDERR_TAIL_BYTES:
            # The last whole lines that fit (a line cut at its start could pass for
            # another's: "[isolate] symposium-..." less its first bytes).
            data = data[-STDERR_TAIL_BYTES:]
            data = data[data.find(b"\n") + 1:]
        return data

    def _crashed_at_data_limit(self, returncode, signal_name):
        """Whether the process crashed (Deno's panic exit, 1, or a fatal signal) with its
        data segment at RLIMIT_DATA: an allocation refused where Deno panics rather than
        saying "out of memory", sometimes with nothing written at all."""
        if self._killed or signal_name in ("SIGKILL", "SIGXCPU"):
            return False
        if returncode != 1 and returncode >= 0:
            return False
        return self._peak_data >= sandbox.data_limit_bytes(self.memory_mb) - DATA_LIMIT_SLACK

    def _describe_exit(self, returncode):
        stderr = self._stderr_bytes()
        peak = self.peak_rss
        signal_name = None
        if returncode < 0:
            try:
                signal_name = signal.Signals(-returncode).name
            except ValueError:
                signal_name = f"signal {-returncode}"
        heap = any(marker in stderr for marker in HEAP_LIMIT_MARKERS)
        memory = not heap and (any(marker in stderr for marker in MEMORY_LIMIT_MARKERS) or self._crashed_at_data_limit(returncode, signal_name))
        cpu = signal_name == "SIGXCPU" or (
            signal_name == "SIGKILL" and not self._killed and self._cpu_used is not None and self._cpu_used >= self.cpu_limit_seconds
        )
        if self._stderr_flooded:
            reason = (f"the block wrote more than the isolate's standard error allows "
                      f"({STDERR_MAX_BYTES // 1024} KB or {STDERR_MAX_LINES} lines) and was ended; use console.log()")
        elif memory and b"CodeRange" in stderr:
            # A second V8 isolate (node:worker_threads) cannot reserve its code range.
            reason = "the block tried to start a nested worker, which its memory limit does not allow"
        elif heap:
            reason = f"the block ran out of memory: the JavaScript heap limit of {self.memory_mb} MB was reached"
        elif memory:
            reason = f"the block ran out of memory: the isolate's limit ({self.memory_mb} MB, which the JavaScript heap and the memory outside it share) was reached"
        elif cpu:
            reason = f"the block used up its CPU time limit of {self.cpu_limit_seconds} s"
        elif self._killed:
            reason = "killed by the platform"
        elif signal_name:
            reason = f"the isolate was ended by {signal_name}"
        else:
            reason = RUNTIME_EXIT_REASONS.get(returncode, f"the isolate exited with code {returncode}")
        return IsolateExit(
            returncode=returncode,
            signal=-returncode if returncode < 0 else None,
            signal_name=signal_name,
            reason=reason,
            heap_limit_hit=heap,
            memory_limit_hit=memory,
            cpu_limit_hit=cpu,
            killed=self._killed,
            stderr_flooded=self._stderr_flooded,
            peak_rss_bytes=peak,
            cpu_seconds=self._cpu_used,
            stderr=stderr.decode(errors="replace"),
        )


class IsolatePool:
    """Warm, locked-down isolates for one broker port, per memory size."""

    def __init__(self, broker_port, warm_size=2, warm_limits=(), deno_path=None, launcher=None):
        self.broker_port = int(broker_port)
        self.warm_size = int(warm_size)
        self.deno_path = deno_path or find_deno()
        # The launcher the spawner runs for each isolate: isolates/sandbox.py (a test can
        # give one that wraps it).
        self.launcher = str(launcher or SANDBOX)
        self._warm = {}  # (memory_mb, cpu_seconds) -> deque of ready isolates
        self._limits = list(dict.fromkeys((int(m), int(c)) for m, c in warm_limits))
        self._all = set()  # every isolate started and not yet known to be reaped
        self._loop = None
        self._refill_task = None
        self._refill_wanted = None
        self._closed = False
        self._noted = set()
        self._spawner = None  # the pool's own (capabilities.process.spawner), at its first isolate

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.shutdown()

    # -- public ---------------------------------------------------------------------------

    async def start(self):
        """Bind to the running loop and begin warming the configured sizes."""
        self._bind()
        self._request_refill()

    async def fill(self):
        """Wait until every warm set holds `warm_size` ready isolates (tests, benchmarks)."""
        self._bind()
        self._request_refill()
        while self._refill_task is not None and not self._refill_task.done():
            await asyncio.shield(self._refill_task)

    async def acquire(self, memory_mb, cpu_seconds):
        """A ready isolate with this V8 heap limit and CPU budget: a warm one if there is
        one, else a new one (cold start). It is the caller's: assign it, wait, kill."""
        self._bind()
        if self._closed:
            raise RuntimeError("the isolate pool is shut down")
        memory_mb, cpu_seconds = int(memory_mb), int(cpu_seconds)
        if memory_mb < MIN_MEMORY_MB or cpu_seconds < 1:
            raise ValueError(f"an isolate needs at least {MIN_MEMORY_MB} MB and 1 CPU second")
        key = (memory_mb, cpu_seconds)
        if key not in self._limits:
            self._limits.append(key)
        warm = self._warm.setdefault(key, collections.deque())
        isolate = None
        while warm and isolate is None:
            candidate = warm.popleft()
            if candidate.alive:
                isolate = candidate
        self._request_refill(REFILL_AFTER_TAKE_SECONDS)
        if isolate is None:
            isolate = await self._spawn(memory_mb, cpu_seconds)
        return isolate

    def keep_warm(self, limits):
        """Also keep warm isolates for these (memory_mb, cpu_seconds) pairs."""
        self._bind()
        for memory_mb, cpu_seconds in limits:
            key = (int(memory_mb), int(cpu_seconds))
            if key not in self._limits:
                self._limits.append(key)
        self._request_refill()

    def warm_count(self, memory_mb=None, cpu_seconds=None):
        if memory_mb is None:
            return sum(len(q) for q in self._warm.values())
        return len(self._warm.get((memory_mb, cpu_seconds), ()))

    async def shutdown(self):
        """Kill and reap every isolate this pool started, warm or running."""
        self._closed = True
        if self._refill_task is not None:
            self._refill_task.cancel()
            try:
                await self._refill_task
            except (asyncio.CancelledError, Exception):
                pass
        isolates = list(self._all)
        for isolate in isolates:
            isolate.kill()
        for isolate in isolates:
            try:
                await asyncio.wait_for(isolate.wait(), 5)
            except asyncio.TimeoutError:
                logger.error("isolate %s did not exit after SIGKILL", isolate.pid)
        self._warm.clear()
        self._all.clear()
        if self._spawner is not None:
            spawner, self._spawner = self._spawner, None
            await asyncio.to_thread(spawner.close)

    # -- internals ------------------------------------------------------------------------

    def _bind(self):
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("an IsolatePool belongs to the event loop that first used it; make one per loop")

    def _launcher_arguments(self, memory_mb, cpu_seconds, spare):
        port = self.broker_port
        deno_flags = [
            "run",
            "--unstable-worker-options",  # the Worker's `deno: {permissions: "none"}`
            "--no-prompt",  # a permission the runtime lacks fails, never waits on a tty
            "--no-config",
            "--no-lock",
            "--no-remote",
            "--no-npm",
            "--no-code-cache",  # DENO_DIR is not writable; do not even try
            f"--import-map={IMPORT_MAP}",  # node:dns's names refuse (see NODE_DNS_EXPORTS)
            f"--allow-net=127.0.0.1:{port}",  # the bootstrap reaches the broker, nothing else
            f"--allow-read={WORKER_JS}",  # ... and reads the worker's source, nothing else
            f"--v8-flags=--max-old-space-size={memory_mb},--max-semi-space-size={semi_space_mb(memory_mb)}",
            str(MAIN_JS),
            str(port),
            # A warm spare prepares more before it is ready than a run waiting for it can.
            "spare" if spare else "for-run",
        ]
        # The pool's spawner runs isolates/sandbox.py's main() with these in a fork of
        # itself (see _launch).
        return [
            "--memory-mb", str(memory_mb),
            "--cpu-seconds", str(cpu_seconds + STARTUP_CPU_ALLOWANCE),
            "--broker-port", str(port),
            "--read", str(RUNTIME_DIR),
            # The filter compiled once for this process, not per spawn (isolates/sandbox.py).
            "--seccomp-program", sandbox.prepared_seccomp_program(),
            "--",
            self.deno_path,
            *deno_flags,
        ]

    async def _launch(self, memory_mb, cpu_seconds, spare):
        """The isolate's launcher, run by this pool's spawner in a fork of itself: in its
        own session from its first instant (so kill() reaches it before the launcher has
        done anything), with the pipes to this process on 0-2 and no other descriptor,
        and none of the server's environment (the launcher's exec gives Deno its own)."""
        arguments = self._launcher_arguments(memory_mb, cpu_seconds, spare)
        for attempt in (1, 2):
            if self._spawner is None or not self._spawner.alive():
                # A spawner that died is replaced, as the command spawner is.
                try:
                    self._spawner = spawners.Spawner()
                except OSError as exc:
                    raise IsolateStartError(f"the isolate spawner could not be started: {exc}") from exc
            try:
                channel, pipes = self._spawner.request(arguments, launch=self.launcher)
                break
            except spawners.SpawnerGone as exc:
                self._spawner = None
                if attempt == 2:
                    raise IsolateStartError(f"the isolate spawner is gone: {exc}") from exc
        channel.setblocking(False)
        try:
            answer = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(channel, 4096), READY_TIMEOUT)
        except (asyncio.TimeoutError, OSError):
            answer = b""
        except BaseException:
            spawners.Spawner.discard(channel, pipes)
            raise
        try:
            spawned = spawners.Spawner.started(answer, channel, pipes)
        except spawners.SpawnFailed as exc:
            raise IsolateStartError(f"the isolate could not be started: {exc.strerror or exc}") from exc
        return await LaunchedProcess.connect(spawned)

    async def _spawn(self, memory_mb, cpu_seconds, spare=False):
        started = time.monotonic()
        process = await self._launch(memory_mb, cpu_seconds, spare)
        isolate = Isolate(process=process, memory_mb=memory_mb, cpu_limit_seconds=cpu_seconds, spawned_at=started)
        self._all.add(isolate)
        # The isolate's first line: its key (for its waiting connection) and its mark.
        waiting.expect(isolate._key)
        process.stdin.write(json.dumps({"key": isolate._key, "mark": isolate._mark}).encode() + b"\n")
        process_done = asyncio.ensure_future(process.wait())
        process_done.add_done_callback(lambda _: (self._all.discard(isolate), waiting.forget(isolate._key)))
        isolate._stderr_task = asyncio.ensure_future(isolate._read_stderr(self))
        try:
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            line = b""
        if line.strip() != b"ready":
            isolate.kill()
            exit = await isolate.wait()
            raise IsolateStartError(f"the isolate did not start ({exit.reason}): {exit.stderr.strip()[-2000:]}")
        isolate.ready_at = time.monotonic()
        # The runtime writes nothing more to stdout; closing it makes any later write (a
        # block reaching a raw stdout through node:process) fail instead of filling a pipe.
        transport = isolate._pipe_transport(1)
        if transport is not None:
            transport.close()
        return isolate

    def _request_refill(self, after=0.0):
        if self._closed or self.warm_size <= 0:
            return
        if self._refill_task is None or self._refill_task.done():
            self._refill_task = asyncio.ensure_future(self._refill(after))

    async def _refill(self, after=0.0):
        # One spawn at a time, in the background: warming must not starve running blocks
        # of the machine's cores.
        if after:
            await asyncio.sleep(after)
        while not self._closed:
            for memory_mb, cpu_seconds in list(self._limits):
                warm = self._warm.setdefault((memory_mb, cpu_seconds), collections.deque())
                while warm and not warm[0].alive:
                    warm.popleft()
                if len(warm) < self.warm_size:
                    break
            else:
                return
            try:
                isolate = await self._spawn(memory_mb, cpu_seconds, spare=True)
            except IsolateStartError as exc:
                logger.error("could not warm an isolate: %s", exc)
                await asyncio.sleep(1)
                continue
            if self._closed:
                isolate.kill()
                return
            warm.append(isolate)

    def _note_sandbox_message(self, line):
        # Once per distinct note (each isolate's launcher repeats them), and a bounded
        # set of them.
        if line not in self._noted and len(self._noted) < MAX_NOTED:
            self._noted.add(line)
            logger.warning("%s", line[:500])
