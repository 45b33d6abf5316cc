"""The isolate launcher: locks a fresh process down, then execs the JavaScript runtime.

    ######################################################################################
    #  WARNING: SECURITY-CRITICAL FILE.                                                  #
    #  Everything a tenant's block can do to this machine is bounded by what this file   #
    #  sets up. Loosening any limit or rule below widens what hostile code can reach.    #
    #  A change here needs a second reviewer and must keep tests/test_sandbox_lockdown.py #
    #  passing (it proves each rule with a non-Deno probe).                              #
    ######################################################################################

Usage (the isolate pool runs it; nothing else should):

    python -I -S isolates/sandbox.py --memory-mb 128 --cpu-seconds 60 --broker-port 8001 \
        [--read PATH ...] [--seccomp-program FILE] -- /path/to/deno run ... main.js

The pool does not exec a new Python for each isolate: its spawner (a `python -I -S`
process of the standard library alone, capabilities/process/spawner.py) loads this file
once and, per isolate, forks and calls main() with these arguments in the child, after
putting the pool's pipes on 0-2, closing every other descriptor and starting a session.
The steps below are the same either way; the child begins single-threaded, as a fresh
launcher does, and holds nothing but the spawner's standard library and this file.

The seccomp filter is compiled once per server process (`prepare_seccomp_program`, which
the pool calls when it starts) into a BPF file; each launch reads that file, writes in the
two values only a launch knows (its pid and the address of its exec path) and loads it.
Without --seccomp-program the launcher compiles the filter itself with libseccomp, which
costs about 40 ms: tests and manual use only.

It runs as a brand-new (or newly forked), single-threaded process and, in this order:

1. starts its own session and process group, so the pool can kill the whole tree;
2. closes every inherited file descriptor except stdin/stdout/stderr and moves to `/`;
3. sets the resource limits of POLICY["rlimits"] and lowers its CPU priority
   (POLICY["nice"]);
4. when started as root: locks the securebits, empties the capability bounding set,
   and switches to a user id of its own (POLICY["identity"]), so that it holds no
   capability and owns nothing on this machine;
5. sets PR_SET_NO_NEW_PRIVS;
6. applies a Landlock ruleset (read-only files, execute only the target binary, TCP
   connect only to the broker's port, signals and abstract sockets scoped), built
   before step 4 so that the paths it grants are opened with the launcher's rights;
7. loads the seccomp filter of POLICY["seccomp"] (prepared once, see above);
8. execs the target with a clean environment, through libc's execve with a path buffer
   this file owns: the seccomp filter allows execve only with that exact pointer, so
   code running after the exec can never start another program.

The policy is the data structure POLICY below; every value carries the reason for it.
Where the kernel lacks a feature (Landlock missing or an older ABI), the launcher says so
on stderr with the prefix "symposium-sandbox:" and goes on with what the kernel has; the
pool logs those lines.

This file imports nothing from Django and nothing from the platform: it must start fast
and must not load code that could hold server secrets. The one file of the platform it
reads is capabilities/syscall_rules.py, plain data without imports, loaded by its path:
the system calls both sandboxes refuse. For the same reason it imports only what a
launch needs: no argparse, ctypes.util or signal (with the modules they pull in, such as
subprocess, re and enum, about two thirds of the launcher's own CPU), and libseccomp only
where a filter is compiled.
"""

import ctypes
import errno
import os
import resource
import struct
import sys

MB = 1024 * 1024

# The system calls this filter shares with the process sandbox's (refused in both): plain
# data in capabilities/syscall_rules.py, loaded by its path so that nothing else of the
# platform (no package __init__, no Django) runs in this process.
SHARED_RULES_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "capabilities", "syscall_rules.py")


class SharedRules:
    """The names syscall_rules.py defines, as attributes (a module without importlib)."""

    def __init__(self, namespace):
        self.__dict__.update(namespace)


def load_shared_rules(path=SHARED_RULES_FILE):
    namespace = {"__name__": "symposium_syscall_rules", "__file__": path}
    with open(path, "rb") as f:
        exec(compile(f.read(), path, "exec"), namespace)
    return SharedRules(namespace)


shared_rules = load_shared_rules()

# Flag values from <linux/sched.h>, <linux/socket.h> and <sys/mman.h> (x86_64).
CLONE_THREAD = 0x00010000
CLONE_NEW_FLAGS = shared_rules.CLONE_NAMESPACE_FLAGS
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM = 1
SOCK_TYPE_MASK = 0xF
IPPROTO_TCP = 6
MSG_FASTOPEN = 0x20000000
MAP_SHARED = 0x01
MAP_ANONYMOUS = 0x20
TIOCSTI = 0x5412
PERSONALITY_QUERY = 0xFFFFFFFF

# The whole policy. Values that depend on the run (memory, CPU seconds, the broker's
# port) are functions of the launch's Limits; everything else is fixed.
POLICY = {
    # The isolate's CPU priority below the server's (added to the server's nice value):
    # when both want the cores, the server that answers every tenant's requests and calls
    # comes first, and a busy block, or the pool starting isolates, only gets what it
    # leaves. Isolates share what is left alike, whoever's they are.
    "nice": 10,
    "rlimits": {
        # CPU seconds of all the process's threads (V8's compiler and GC threads count
        # too). At the soft limit the kernel sends SIGXCPU, which terminates Deno; the
        # hard limit one second later is SIGKILL in case SIGXCPU is ever handled. This is
        # the backstop of the run's CPU budget, whose milliseconds the run service
        # measures and enforces itself (isolates/runs.py): the pool asks for the budget
        # rounded up to whole seconds, plus a second for start-up (about 0.15 s) and a
        # second of grace, so that the kernel acts only if the service could not.
        "RLIMIT_CPU": lambda lim: (lim.cpu_seconds, lim.cpu_seconds + 1),
        # Private writable memory (heap, thread stacks, ArrayBuffer backing stores,
        # WebAssembly memories once grown, brk). This is what stops allocations outside
        # the V8 heap, which --max-old-space-size does not see (denoland/deno#26202).
        # RLIMIT_AS cannot be used: V8 reserves gigabytes of address space it never
        # touches (a 16 GB pointer cage, WebAssembly guard regions), which RLIMIT_DATA
        # does not count while it stays inaccessible. The budget is data_limit_bytes():
        # the runtime's own need plus ONE budget of the profile's memory that the JS heap
        # and everything outside it share, so that memory outside the heap can never
        # exceed the profile's figure, whatever the heap holds.
        "RLIMIT_DATA": lambda lim: (data_limit_bytes(lim.memory_mb),) * 2,
        # Open descriptors. Deno holds about 20 for its event loop, the worker and the
        # broker's websocket; the block itself cannot open files or sockets.
        "RLIMIT_NOFILE": lambda lim: (256, 256),
        # No file may be written at all (Landlock forbids it too); a write that slips
        # past would get SIGXFSZ. Pipes and sockets are not files and are unaffected.
        "RLIMIT_FSIZE": lambda lim: (0, 0),
        # No core dumps: a dump would hold the block's memory (and its secrets) on disk.
        "RLIMIT_CORE": lambda lim: (0, 0),
        # Threads (Linux counts threads as processes, per real user id). Deno runs about
        # 8 (tokio, V8 platform workers, the block's worker); the rest is headroom for
        # more cores. It binds only when the isolate has a user id of its own (see
        # "identity"): the kernel does not apply it to uid 0.
        "RLIMIT_NPROC": lambda lim: (96, 96),
        # No locked memory, no POSIX message queues, no real-time or raised priority:
        # nothing the runtime uses, each a way to hold kernel memory or CPU.
        "RLIMIT_MEMLOCK": lambda lim: (0, 0),
        "RLIMIT_MSGQUEUE": lambda lim: (0, 0),
        "RLIMIT_RTPRIO": lambda lim: (0, 0),
        "RLIMIT_NICE": lambda lim: (0, 0),
    },
    "identity": {
        # When started as root, the isolate becomes uid/gid UID_BASE + its pid: a user
        # that owns no file, shares no signals with any other process (so the kernel
        # itself refuses kill/ptrace on everything else) and makes RLIMIT_NPROC count
        # only this isolate's threads. pid_max is far below the gap to 2**32.
        "uid_base": 1_900_000_000,
        # Everything that can re-grant privilege across exec is locked off.
        "securebits": (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7),
    },
    "environment": {
        # The complete environment of the runtime: nothing of the server's is passed on.
        # DENO_DIR and HOME point at a path that does not exist and cannot be created
        # (Landlock forbids all writes), so Deno keeps its caches in memory and reads no
        # configuration of the server's user (~/.npmrc, ~/.cache/deno).
        "DENO_DIR": "/nonexistent/deno",
        "HOME": "/nonexistent",
        "NO_COLOR": "1",
        "DENO_NO_UPDATE_CHECK": "1",
        "DENO_NO_PACKAGE_JSON": "1",
        # Fixed time zone: the server's /etc/localtime is not readable, and a block's
        # Date output should not depend on the host.
        "TZ": "UTC",
        "LANG": "C.UTF-8",
    },
    "landlock": {
        # Read-only trees: the system's shared libraries and programs' data. Deno reads
        # only its libc and friends here; nothing under these is tenant data or secret.
        "read_dirs": ["/usr", "/lib", "/lib64"],
        # Single files read at start-up: the loader's cache and the entropy source.
        # (Landlock refuses directory rights on a file, so files get file rights only.)
        "read_files": ["/etc/ld.so.cache", "/dev/urandom", "/dev/null"],
        # EXECUTE is granted on the target binary (plus READ to map it) and on its ELF
        # interpreter, which the kernel opens for execution during the exec; nothing
        # else on the machine can be executed.
        # TCP: connect only to the broker's port, bind nothing. Landlock ports are not
        # tied to an address, so Deno's --allow-net=127.0.0.1:PORT narrows it further.
        "connect_tcp_ports": lambda lim: [lim.broker_port],
        # ABI 6: no signals to, and no abstract unix sockets of, processes outside this
        # sandbox (the pool, which is outside, can still kill the isolate).
        "scope_signals": True,
        "scope_abstract_unix_sockets": True,
    },
    "seccomp": {
        # Syscalls refused outright with EPERM. Each is a way out of the sandbox or into
        # the kernel's less-trodden paths, and the runtime uses none of them. The list
        # both sandboxes refuse (capabilities/syscall_rules.py: namespaces, mounts,
        # ptrace, handle opens, execveat and memfds, BPF, io_uring, keyrings, the
        # machine's own controls) comes first; then what only the isolate refuses.
        "deny": shared_rules.denied_syscalls() + [
            # signals and descriptors through pidfds (signals are checked by pid below)
            "pidfd_send_signal", "pidfd_open",
            # new processes: threads only (see clone below)
            "fork", "vfork",
            # IPC objects that outlive the process in the host's IPC namespace (and
            # shared memory that RLIMIT_DATA does not count)
            "shmget", "shmat", "shmctl", "shmdt", "msgget",
            "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl",
            "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
            "mq_getsetattr",
            # listening sockets: listen() on an unbound socket binds it implicitly, which
            # Landlock's bind rule does not see; the isolate only ever connects out.
            "listen", "accept", "accept4",
        ],
        # Refused with ENOSYS rather than EPERM, so that glibc falls back to clone(),
        # whose flags (unlike clone3's, which sit in memory) the filter can inspect.
        "enosys": ["clone3"],
        # socket(): only TCP over IPv4/IPv6, and no AF_UNIX socket (Deno needs only
        # socketpair(), and a unix socket could reach local daemons, such as a database
        # that trusts local connections, that Landlock's path rules do not guard).
        # For each family: SOCK_STREAM only, protocol 0 or IPPROTO_TCP only.
        "socket_families": [AF_INET, AF_INET6],
        # clone(): threads only, never a new namespace (CLONE_NEWTIME included).
        "clone_required": CLONE_THREAD,
        "clone_forbidden": CLONE_NEW_FLAGS,
        # Signals only to this process itself (its pid is known when the filter is built).
        "signal_self_only": ["kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"],
        # TCP Fast Open connects inside sendto()/sendmsg(), past the connect() hook.
        "no_fastopen": {"sendto": 3, "sendmsg": 2, "sendmmsg": 3},
        # Shared anonymous memory is not counted by RLIMIT_DATA.
        "no_shared_anonymous_mmap": True,
        # Faking terminal input into a shell that might own the same terminal.
        "no_tiocsti": True,
        # Personality can only be read: setting it could disable ASLR or make all
        # readable memory executable.
        "personality_query_only": True,
        # execve only with the launcher's own path buffer (see exec_target).
        "execve_only_launcher_buffer": True,
        # No mode change or creation that sets a set-user-id or set-group-id bit
        # (capabilities/syscall_rules.py): Landlock forbids all writes already, and this
        # stays true even where the kernel has no Landlock.
        "no_set_id_bits": True,
    },
}

# RLIMIT_DATA budget, in MB. V8 on x86_64 reserves a 512 MB code range per isolate and
# maps it read-write-execute, so the kernel counts it as data although it is never
# resident; a Deno process with its main isolate and the block's Worker holds two.
V8_CODE_RANGE_MB = 512
ISOLATES_PER_PROCESS = 2
# Everything else private and writable in an idle isolate (thread stacks, allocator
# arenas, both isolates' initial heaps): 43 MB on Deno 2.9 (VmData less the code ranges,
# docs/isolates.md), with headroom for what the runtime allocates while a block runs
# (frames to and from the broker). A block can fill this headroom too: it is part of what
# docs/isolates.md states as the most memory outside the heap.
RUNTIME_DATA_MB = 64


def semi_space_mb(memory_mb):
    """One of V8's young-generation semi-spaces, as isolates/pool.py sizes it with
    --max-semi-space-size (a sixteenth of the heap, between 1 and 16 MB; a test keeps the
    two in step). The young generation is outside --max-old-space-size."""
    return max(1, min(16, memory_mb // 16))


def heap_budget_mb(memory_mb):
    """What the JS heap may take at its limit: the old generation (the profile's figure)
    and the young generation (three semi-spaces: two and the new large-object space)."""
    return memory_mb + 3 * semi_space_mb(memory_mb)


def data_limit_bytes(memory_mb):
    """RLIMIT_DATA for a run whose profile allows `memory_mb`: the runtime's own need plus
    one heap budget, which memory outside the heap (ArrayBuffers, typed arrays,
    WebAssembly memories) shares with the heap. A block that leaves its heap empty can put
    at most the heap budget and the runtime's headroom outside it; one that fills its heap
    can put next to nothing outside it; neither reaches past the sum."""
    return (ISOLATES_PER_PROCESS * V8_CODE_RANGE_MB + RUNTIME_DATA_MB + heap_budget_mb(memory_mb)) * MB


class Limits:
    def __init__(self, memory_mb, cpu_seconds, broker_port):
        self.memory_mb = memory_mb
        self.cpu_seconds = cpu_seconds
        self.broker_port = broker_port


def warn(message):
    """Report a missing kernel feature; the pool forwards these lines to its log."""
    os.write(2, f"symposium-sandbox: {message}\n".encode())


def fail(message):
    """Refuse to start: an isolate that cannot be locked down must never run a block."""
    os.write(2, f"symposium-sandbox: refusing to start: {message}\n".encode())
    os._exit(70)


# The C library the interpreter itself is linked with (dlopen of the main program), found
# without ctypes.util, whose search imports subprocess, tempfile and re.
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        fail(f"{what}: {os.strerror(err)}")
    return result


# -- 1-2: session, descriptors, working directory ---------------------------------------


def detach():
    # A new session makes this process the leader of its own process group, so the pool
    # can kill it and anything it could ever start with one killpg().
    try:
        os.setsid()
    except PermissionError:
        pass  # already a group leader (the pool may have asked for a new session itself)
    # Nothing inherited may leak into the isolate: a server socket or database
    # connection left open by a careless parent would be reachable by the block.
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    # Deno.cwd() needs no permission: do not let it reveal a server path.
    os.chdir("/")


# -- 3: resource limits ------------------------------------------------------------------


def apply_rlimits(limits):
    for name, value in POLICY["rlimits"].items():
        if name == "RLIMIT_NPROC" and os.geteuid() != 0:
            # Without root the isolate keeps the server's uid, and the kernel counts every
            # thread of that user against this limit (the server's and every other
            # isolate's): it would stop Deno starting threads, not bound this isolate.
            # The service manager's limit for the server's user applies instead.
            continue
        soft, hard = value(limits)
        resource.setrlimit(getattr(resource, name), (soft, hard))


# -- 4: identity and capabilities --------------------------------------------------------

PR_SET_PDEATHSIG = 1
# The signal module would import enum (a third of the launcher's imports); SIGKILL is 9
# on every Linux architecture.
SIGKILL = 9
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_capset = 126


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def last_capability():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def drop_privileges(parent_pid):
    """Leave no capability behind, in any set, and (as root) become a user of our own."""
    running_as_root = os.geteuid() == 0
    uid = None
    if running_as_root:
        check(libc.prctl(PR_SET_SECUREBITS, POLICY["identity"]["securebits"], 0, 0, 0), "locking securebits")
        for cap in range(last_capability() + 1):
            # EINVAL means the kernel does not know this capability: nothing to drop.
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() != errno.EINVAL:
                fail(f"dropping capability {cap} from the bounding set: {os.strerror(ctypes.get_errno())}")
        uid = POLICY["identity"]["uid_base"] + os.getpid()
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # If the server that started the isolate dies, the kernel kills the isolate. (This
    # must come after the uid switch, which clears it; and the parent may already be
    # gone by now, which the ppid check catches.)
    check(libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "setting the parent-death signal")
    if os.getppid() != parent_pid:
        fail("the process that started the isolate has exited")
    # Ambient capabilities would survive the exec; clear them (a no-op when unsupported).
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    check(libc.syscall(SYS_capset, ctypes.byref(header), ctypes.byref(data)), "clearing capabilities")
    # no_new_privs: no setuid binary, file capability or LSM transition can ever give
    # this process or its exec'd program more privilege. Landlock and seccomp require it.
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    return uid


# -- 6: Landlock -------------------------------------------------------------------------

SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
# All filesystem rights each ABI knows: handling them all means denying every one we do
# not grant (writes, removals, creation of any node, renames across directories,
# truncation, device ioctls).
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def landlock_abi():
    abi = libc.syscall(SYS_landlock_create_ruleset, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return abi if abi > 0 else 0


def elf_interpreter(path):
    """The PT_INTERP path of a 64-bit little-endian ELF binary, or None (static, script)."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return None
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == 3:  # PT_INTERP
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


def prepare_landlock(limits, target, extra_reads):
    """Build the ruleset (not yet enforced). Runs before the uid switch: the paths are
    opened with the launcher's own rights, so a folder only root may traverse can still
    be granted. Returns the ruleset's fd, or None when the kernel has no Landlock."""
    abi = landlock_abi()
    if abi == 0:
        warn("Landlock is not available on this kernel: the filesystem and TCP rules are not applied")
        return None
    rules = POLICY["landlock"]
    attr = RulesetAttr()
    attr.handled_access_fs = FS_RIGHTS_BY_ABI.get(abi, FS_RIGHTS_BY_ABI[5])
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
    else:
        warn(f"Landlock ABI {abi} has no TCP rules: outbound connections are bounded by seccomp and Deno only")
    if abi >= 6:
        attr.scoped = (SCOPE_SIGNAL if rules["scope_signals"] else 0) | (
            SCOPE_ABSTRACT_UNIX_SOCKET if rules["scope_abstract_unix_sockets"] else 0
        )
    else:
        warn(f"Landlock ABI {abi} cannot scope signals and abstract sockets: seccomp alone bounds signals")
    # The size argument lets older kernels accept the struct without the fields they lack.
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = check(libc.syscall(SYS_landlock_create_ruleset, ctypes.byref(attr), size, 0), "creating the Landlock ruleset")

    def allow_path(path, access):
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # /lib64 does not exist everywhere; a missing path needs no rule
        try:
            rule = PathBeneathAttr(access, fd)
            check(libc.syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0), f"a Landlock rule for {path}")
        finally:
            os.close(fd)

    for path in rules["read_dirs"] + [p for p in extra_reads if os.path.isdir(p)]:
        allow_path(path, FS_READ_FILE | FS_READ_DIR)
    for path in rules["read_files"] + [p for p in extra_reads if not os.path.isdir(p)]:
        allow_path(path, FS_READ_FILE)
    allow_path(target, FS_READ_FILE | FS_EXECUTE)
    interpreter = elf_interpreter(target)
    if interpreter:
        # The kernel opens a dynamic binary's ELF interpreter for execution as part of
        # the exec, so it needs EXECUTE too. Run as a program it could load any readable
        # binary, which is why the seccomp rule on execve is the first lock, not this.
        allow_path(os.path.realpath(interpreter), FS_READ_FILE | FS_EXECUTE)
    if abi >= 4:
        for port in rules["connect_tcp_ports"](limits):
            rule = NetPortAttr(NET_CONNECT_TCP, port)
            check(libc.syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_NET_PORT, ctypes.byref(rule), 0), "the Landlock TCP rule")
    return ruleset


def enforce_landlock(ruleset):
    """From here on this process and the program it execs live inside the ruleset."""
    if ruleset is None:
        return
    check(libc.syscall(SYS_landlock_restrict_self, ruleset, 0), "enforcing the Landlock ruleset")
    os.close(ruleset)


# -- 7: seccomp --------------------------------------------------------------------------


def build_seccomp_filter(exec_path_address, own_pid):
    """The filter as a pyseccomp object (not loaded): tests export it to read it."""
    # Imported here, not at the top: pyseccomp loads libseccomp through ctypes, which the
    # launcher pays for only in the process that builds a filter.
    import pyseccomp as sc

    rules = POLICY["seccomp"]
    eperm = sc.ERRNO(errno.EPERM)
    # Default allow with a deny list: an allow-list would break on any runtime update,
    # and every dangerous call the runtime could make is named here.
    f = sc.SyscallFilter(sc.ALLOW)
    # A syscall made through another ABI (int 0x80, x32) would dodge every rule below,
    # whose numbers are x86_64's: such a call kills the whole process.
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)

    def rule(action, name, *conditions):
        try:
            f.add_rule(action, name, *conditions)
        except (OSError, RuntimeError, ValueError) as exc:
            # A syscall this libseccomp or architecture does not know cannot be called
            # by name here either; skipping it loses nothing.
            if name not in shared_rules.OPTIONAL_SYSCALLS:
                fail(f"seccomp rule for {name}: {exc}")

    for name in rules["deny"]:
        rule(eperm, name)
    for name in rules["enosys"]:
        rule(sc.ERRNO(errno.ENOSYS), name)

    # socket(family, type, protocol): refuse every family not listed (AF_UNSPEC and
    # AF_UNIX included), and for the listed ones every type but SOCK_STREAM and every
    # protocol but TCP (SCTP or MPTCP streams would escape Landlock's TCP rules).
    allowed = sorted(rules["socket_families"])
    for family in range(0, max(allowed) + 1):
        if family not in allowed:
            rule(eperm, "socket", sc.Arg(0, sc.EQ, family))
    rule(eperm, "socket", sc.Arg(0, sc.GT, max(allowed)))
    for family in allowed:
        for sock_type in range(SOCK_TYPE_MASK + 1):
            if sock_type != SOCK_STREAM:
                rule(eperm, "socket", sc.Arg(0, sc.EQ, family), sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, sock_type))
        for protocol in range(1, IPPROTO_TCP):
            rule(eperm, "socket", sc.Arg(0, sc.EQ, family), sc.Arg(2, sc.EQ, protocol))
        rule(eperm, "socket", sc.Arg(0, sc.EQ, family), sc.Arg(2, sc.GT, IPPROTO_TCP))

    # clone(flags, ...): a thread or nothing, and never a namespace.
    rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, rules["clone_required"], 0))
    for flag in rules["clone_forbidden"].values():
        rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))

    for name in rules["signal_self_only"]:
        rule(eperm, name, sc.Arg(0, sc.NE, own_pid))

    for name, flags_arg in rules["no_fastopen"].items():
        rule(eperm, name, sc.Arg(flags_arg, sc.MASKED_EQ, MSG_FASTOPEN, MSG_FASTOPEN))

    if rules["no_shared_anonymous_mmap"]:
        both = MAP_SHARED | MAP_ANONYMOUS
        rule(eperm, "mmap", sc.Arg(3, sc.MASKED_EQ, both, both))
    if rules["no_tiocsti"]:
        rule(eperm, "ioctl", sc.Arg(1, sc.EQ, TIOCSTI))
    if rules["personality_query_only"]:
        rule(eperm, "personality", sc.Arg(0, sc.NE, PERSONALITY_QUERY))
    if rules["execve_only_launcher_buffer"]:
        rule(eperm, "execve", sc.Arg(0, sc.NE, exec_path_address))
    if rules["no_set_id_bits"]:
        shared_rules.add_set_id_rules(rule, eperm, sc)
    return f


# The filter's two per-launch values, as the prepared program holds them until a launch
# writes in its own: 32-bit words that no other instruction of the filter uses (syscall
# numbers, flags and masks are all far from them; prepare_seccomp_program checks it).
EXEC_ADDRESS_PLACEHOLDER = 0x6B3D4E5F_2A1C3E4D
PID_PLACEHOLDER = 0x7A3F1C5B  # above any pid (pid_max is at most 2**22)
BPF_INSTRUCTION = struct.Struct("<HBBI")  # struct sock_filter: code, jt, jf, k
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def _placeholder_words(exec_address, pid):
    return {exec_address & 0xFFFFFFFF: "exec_low", exec_address >> 32: "exec_high", pid: "pid"}


def _program_bytes(exec_address, pid):
    import tempfile  # only where a program is compiled, never in a launch

    with tempfile.TemporaryFile() as out:  # libseccomp writes to a descriptor
        build_seccomp_filter(exec_address, pid).export_bpf(out)
        out.seek(0)
        return out.read()


def prepare_seccomp_program(path):
    """Compile the filter once into `path` (BPF, with placeholders for the launch's pid and
    exec address) for launches to load with --seccomp-program.

    The program is compiled twice with two different sets of placeholders, and must differ
    in exactly the instructions whose immediate is a placeholder word: so writing a
    launch's values over the placeholders gives the filter libseccomp would have built for
    them, and no instruction that compares anything else can be touched."""
    first = _program_bytes(EXEC_ADDRESS_PLACEHOLDER, PID_PLACEHOLDER)
    other_address, other_pid = EXEC_ADDRESS_PLACEHOLDER ^ 0x01020304_05060708, PID_PLACEHOLDER ^ 0x00F0F0F0
    second = _program_bytes(other_address, other_pid)
    words = _placeholder_words(EXEC_ADDRESS_PLACEHOLDER, PID_PLACEHOLDER)
    other_words = _placeholder_words(other_address, other_pid)
    if len(first) != len(second) or len(first) % BPF_INSTRUCTION.size:
        raise RuntimeError("the seccomp program's shape depends on the launch's values; it cannot be prepared once")
    seen = set()
    for offset in range(0, len(first), BPF_INSTRUCTION.size):
        a = BPF_INSTRUCTION.unpack_from(first, offset)
        b = BPF_INSTRUCTION.unpack_from(second, offset)
        if a[:3] != b[:3]:
            raise RuntimeError("the seccomp program's instructions depend on the launch's values")
        if a[3] in words:
            if words[a[3]] != other_words.get(b[3]):
                raise RuntimeError("a placeholder of the seccomp program is also used by another rule")
            seen.add(words[a[3]])
        elif a[3] != b[3]:
            raise RuntimeError("the seccomp program compares a launch's value without its placeholder")
    if seen != set(words.values()):
        raise RuntimeError(f"the seccomp program lacks placeholders {sorted(set(words.values()) - seen)}")
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        f.write(first)
    os.chmod(temporary, 0o644)  # the filter is no secret; the launcher reads it as root or not
    os.replace(temporary, path)
    return path


_prepared = {}


def prepared_seccomp_program():
    """This server process's prepared program (compiled on first use, about 40 ms), in a
    folder of its own that is removed when the process exits."""
    if os.getpid() not in _prepared:
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="symposium-seccomp-")
        os.chmod(folder, 0o755)  # readable by a launcher that is not the server's user
        atexit.register(shutil.rmtree, folder, True)
        _prepared[os.getpid()] = prepare_seccomp_program(os.path.join(folder, "isolate.bpf"))
    return _prepared[os.getpid()]


def read_seccomp_program(path, exec_path_address, own_pid):
    """The prepared program with this launch's values written over the placeholders."""
    with open(path, "rb") as f:
        program = bytearray(f.read())
    if not program or len(program) % BPF_INSTRUCTION.size or len(program) // BPF_INSTRUCTION.size > 4096:
        fail("the prepared seccomp program is not a BPF program")
    values = {
        EXEC_ADDRESS_PLACEHOLDER & 0xFFFFFFFF: exec_path_address & 0xFFFFFFFF,
        EXEC_ADDRESS_PLACEHOLDER >> 32: exec_path_address >> 32,
        PID_PLACEHOLDER: own_pid,
    }
    found = set()
    for offset in range(0, len(program), BPF_INSTRUCTION.size):
        code, jt, jf, k = BPF_INSTRUCTION.unpack_from(program, offset)
        if k in values:
            found.add(k)
            BPF_INSTRUCTION.pack_into(program, offset, code, jt, jf, values[k])
    if found != set(values):
        fail("the prepared seccomp program lacks the launch's placeholders")
    return bytes(program)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp_program(program):
    """Install a BPF program as this process's seccomp filter (no_new_privs is set)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // BPF_INSTRUCTION.size, ctypes.addressof(buffer))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "loading the seccomp filter")


# -- 8: exec -----------------------------------------------------------------------------


def exec_target(path_buffer, argv, environment):
    """execve through libc with buffers we own, so the filter knows the path pointer."""
    argv_buffers = [ctypes.create_string_buffer(os.fsencode(a)) for a in argv]
    c_argv = (ctypes.c_void_p * (len(argv) + 1))(*[ctypes.addressof(b) for b in argv_buffers], None)
    env_buffers = [ctypes.create_string_buffer(f"{k}={v}".encode()) for k, v in environment.items()]
    c_env = (ctypes.c_void_p * (len(env_buffers) + 1))(*[ctypes.addressof(b) for b in env_buffers], None)
    libc.execve(path_buffer, c_argv, c_env)
    fail(f"exec failed: {os.strerror(ctypes.get_errno())}")


USAGE = (
    "usage: isolates/sandbox.py --memory-mb MB --cpu-seconds S --broker-port PORT "
    "[--read PATH ...] [--seccomp-program FILE] -- PROGRAM [ARGUMENT ...]"
)


def usage_error(message):
    os.write(2, f"{USAGE}\nisolates/sandbox.py: error: {message}\n".encode())
    os._exit(2)


class Arguments:
    def __init__(self):
        self.memory_mb = self.cpu_seconds = self.broker_port = None
        self.read = []
        self.seccomp_program = None


def parse_args(argv):
    """The launcher's options, parsed by hand: argparse alone costs a cold start 18 ms."""
    args = Arguments()
    numbers = {"--memory-mb": "memory_mb", "--cpu-seconds": "cpu_seconds", "--broker-port": "broker_port"}
    index = 0
    while index < len(argv) and argv[index] != "--":
        option = argv[index]
        name, has_value, value = option.partition("=")
        if not has_value:
            if index + 1 >= len(argv):
                usage_error(f"{option} needs a value")
            value = argv[index + 1]
            index += 1
        index += 1
        if name in numbers:
            try:
                setattr(args, numbers[name], int(value))
            except ValueError:
                usage_error(f"{name}: not a whole number: {value!r}")
        elif name == "--read":
            args.read.append(value)
        elif name == "--seccomp-program":
            args.seccomp_program = value
        else:
            usage_error(f"unknown option {name}")
    command = argv[index + 1:]
    for name, attribute in numbers.items():
        if getattr(args, attribute) is None:
            usage_error(f"{name} is required")
    if not command:
        usage_error("no program given after --")
    if not (0 < args.broker_port < 65536) or args.memory_mb <= 0 or args.cpu_seconds <= 0:
        usage_error("limits must be positive and the port a TCP port")
    return args, command


def main(argv=None):
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    limits = Limits(args.memory_mb, args.cpu_seconds, args.broker_port)
    target = os.path.realpath(command[0])
    if not os.access(target, os.X_OK):
        fail("the program to run is not executable")
    extra_reads = [os.path.realpath(p) for p in args.read]
    parent_pid = os.getppid()

    detach()
    apply_rlimits(limits)
    os.nice(POLICY["nice"])
    path_buffer = ctypes.create_string_buffer(os.fsencode(target))
    if args.seccomp_program:
        # Read before the uid switch and Landlock, with the launcher's own rights.
        program = read_seccomp_program(args.seccomp_program, ctypes.addressof(path_buffer), os.getpid())
    else:
        # Import libseccomp before Landlock hides the venv's files from this process.
        import pyseccomp  # noqa: F401

        program = None
    ruleset = prepare_landlock(limits, target, extra_reads)
    drop_privileges(parent_pid)
    enforce_landlock(ruleset)
    if program is not None:
        load_seccomp_program(program)
    else:
        build_seccomp_filter(ctypes.addressof(path_buffer), os.getpid()).load()
    exec_target(path_buffer, command, POLICY["environment"])


if __name__ == "__main__":
    main()
