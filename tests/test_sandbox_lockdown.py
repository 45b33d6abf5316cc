"""The launcher's lockdown, proven without Deno.

Deno's own permission checks would stop a block long before most of these rules matter,
so these tests take Deno out of the picture: they run a small Python probe under
isolates/sandbox.py, exactly as the pool runs Deno, and have it attempt what a block that
had broken out of V8 would try. Each attempt must fail, with the error the rule gives.
"""

import errno
import json
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from isolates import sandbox

SYSTEM_PYTHON = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs a system Python under /usr to probe with")

# Each attempt prints {"ok": value} or {"errno": n, "error": text}. The probe reports and
# goes on, so one run of the launcher answers every question.
PROBE = r'''
import ctypes, errno, json, mmap, os, socket, sys, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = {}

def attempt(name, action):
    try:
        results[name] = {"ok": action()}
    except OSError as exc:
        results[name] = {"errno": exc.errno, "error": str(exc)}
    except Exception as exc:
        results[name] = {"errno": None, "error": f"{type(exc).__name__}: {exc}"}

def syscall(number, *args):
    result = libc.syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result

config = json.loads(sys.argv[1])

attempt("uid", lambda: [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()])
attempt("cwd", os.getcwd)
attempt("environment", lambda: dict(os.environ))
attempt("no_new_privs", lambda: libc.prctl(39, 0, 0, 0, 0))      # PR_GET_NO_NEW_PRIVS
attempt("seccomp_mode", lambda: libc.prctl(21, 0, 0, 0, 0))      # PR_GET_SECCOMP

def capabilities():
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    syscall(125, header, data)                                    # capget
    return list(data)
attempt("capabilities", capabilities)
attempt("bounding_set_has_sys_admin", lambda: libc.prctl(23, 21, 0, 0, 0))  # PR_CAPBSET_READ

# files
attempt("write_tmp", lambda: open("/tmp/symposium-probe", "w").write("x"))
attempt("write_beside_probe", lambda: open(config["probe_dir"] + "/written", "w").write("x"))
attempt("mkdir_tmp", lambda: os.mkdir("/tmp/symposium-probe-dir"))
attempt("read_etc_passwd", lambda: open("/etc/passwd").read())
attempt("read_proc_self_environ", lambda: open("/proc/self/environ", "rb").read())
attempt("read_proc_1_cmdline", lambda: open("/proc/1/cmdline", "rb").read())
attempt("read_server_settings", lambda: open(config["settings_file"]).read())
attempt("list_root", lambda: os.listdir("/"))
attempt("read_usr", lambda: len(os.listdir("/usr/lib")) > 0)

# sockets
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).fileno())
attempt("udp6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).fileno())
attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).fileno())
attempt("sctp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).fileno())
attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).fileno())
attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).fileno())
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).fileno())
attempt("socketpair", lambda: len(socket.socketpair()))

def connect(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(("127.0.0.1", port))
    return "connected"
attempt("connect_other_port", lambda: connect(config["other_port"]))
attempt("connect_broker_port", lambda: connect(config["broker_port"]))

def bind_any():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
attempt("bind", bind_any)
attempt("listen", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).listen())

def fast_open():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    return s.sendto(b"x", 0x20000000, ("127.0.0.1", config["other_port"]))  # MSG_FASTOPEN
attempt("tcp_fast_open", fast_open)

# processes
def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid
attempt("fork", fork)
attempt("posix_spawn", lambda: os.posix_spawn("/bin/true", ["true"], {}))
attempt("exec_sh", lambda: os.execv("/bin/sh", ["sh", "-c", "echo escaped"]))
attempt("exec_self_again", lambda: os.execv(sys.executable, [sys.executable, "-c", "print('escaped')"]))
attempt("ptrace_attach", lambda: syscall(101, 16, config["other_pid"], 0, 0))       # PTRACE_ATTACH
attempt("ptrace_traceme", lambda: syscall(101, 0, 0, 0, 0))                         # PTRACE_TRACEME
attempt("process_vm_readv", lambda: syscall(310, config["other_pid"], 0, 0, 0, 0, 0))
attempt("unshare_user", lambda: syscall(272, 0x10000000))                          # CLONE_NEWUSER
attempt("unshare_net", lambda: syscall(272, 0x40000000))
attempt("setns", lambda: syscall(308, 0, 0))
attempt("mount", lambda: syscall(165, b"none", b"/tmp", b"tmpfs", 0, 0))
attempt("chroot", lambda: syscall(161, b"/usr"))
attempt("kill_other_pid", lambda: os.kill(config["other_pid"], signal_number))
attempt("kill_process_group_zero", lambda: os.kill(0, 0))
attempt("kill_parent", lambda: os.kill(os.getppid(), 0))
attempt("kill_self", lambda: os.kill(os.getpid(), 0) or "signalled")
attempt("setuid_root", lambda: os.setuid(0))
attempt("unshare_time", lambda: syscall(272, 0x80))                                # CLONE_NEWTIME

# set-id bits: on a path that does not exist, only the filter answers EPERM (the kernel
# would say ENOENT, Landlock EACCES), so these show the rule itself
missing = "/nonexistent-symposium-probe"
attempt("chmod_setuid", lambda: os.chmod(missing, 0o4755))
attempt("chmod_setgid", lambda: os.chmod(missing, 0o2755))
attempt("fchmodat_setuid", lambda: syscall(268, -100, missing.encode(), 0o4755))  # fchmodat(AT_FDCWD)
attempt("create_setuid", lambda: os.open(missing, os.O_CREAT | os.O_WRONLY, 0o4755))
attempt("chmod_plain", lambda: os.chmod(missing, 0o755))

# kernel interfaces the runtime never needs
attempt("bpf", lambda: syscall(321, 0, 0, 0))
attempt("perf_event_open", lambda: syscall(298, 0, 0, -1, -1, 0))
attempt("userfaultfd", lambda: syscall(323, 0))
attempt("io_uring_setup", lambda: syscall(425, 8, ctypes.create_string_buffer(120)))
attempt("keyctl", lambda: syscall(250, 0, 0, 0, 0))
attempt("memfd_create", lambda: syscall(319, b"x", 0))
attempt("shared_anonymous_mmap", lambda: len(mmap.mmap(-1, 1 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)))
attempt("shmget", lambda: syscall(29, 0, 4096, 0o1600))                            # IPC_PRIVATE|IPC_CREAT
attempt("personality_set", lambda: syscall(135, 0x0040000))                       # ADDR_NO_RANDOMIZE
attempt("personality_query", lambda: syscall(135, ctypes.c_ulong(0xFFFFFFFF)) >= 0)  # as glibc passes it

# limits
def open_many():
    files = []
    try:
        for _ in range(1000):
            files.append(open("/dev/null", "rb"))
    finally:
        count = len(files)
        for f in files:
            f.close()
    return count
attempt("open_1000_files", open_many)
attempt("allocate_4_gb", lambda: len(bytearray(4 << 30)))

def many_threads():
    stop = threading.Event()
    threads = []
    try:
        for _ in range(500):
            t = threading.Thread(target=stop.wait)
            t.start()
            threads.append(t)
    finally:
        count = len(threads)
        stop.set()
        for t in threads:
            t.join()
    return count
attempt("start_500_threads", many_threads)

print(json.dumps(results))
'''.replace("signal_number", "0")


def launcher(*command, memory_mb=64, cpu_seconds=5, broker_port=9, read=(), prepared=True):
    """The launcher's command line as the pool builds it: with the seccomp program
    prepared once for this process (or, with prepared=False, compiling its own)."""
    args = [sys.executable, "-I", *(["-S"] if prepared else []), str(sandbox.__file__), "--memory-mb", str(memory_mb),
            "--cpu-seconds", str(cpu_seconds), "--broker-port", str(broker_port)]
    if prepared:
        args += ["--seccomp-program", sandbox.prepared_seccomp_program()]
    for path in read:
        args += ["--read", str(path)]
    return args + ["--", *command]


@pytest.fixture(scope="module")
def listeners():
    """Two real TCP servers on 127.0.0.1: one on the "broker" port, one on another."""
    servers = []
    for _ in range(2):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        servers.append(server)
    yield {"broker_port": servers[0].getsockname()[1], "other_port": servers[1].getsockname()[1]}
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def readable_folder():
    """A folder the isolate's own uid can traverse (pytest's tmp folders are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="symposium-probe-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def script_in(folder, name, code):
    script = folder / name
    script.write_text(code)
    script.chmod(0o644)
    return script


@pytest.fixture(scope="module")
def probe(readable_folder, listeners):
    """The probe's findings, from one run under the launcher."""
    folder = readable_folder
    script = script_in(folder, "probe.py", PROBE)
    # Another process of the same (root) user as the server: what a block would attack.
    victim = subprocess.Popen(["sleep", "60"])
    config = {
        "probe_dir": str(folder),
        "settings_file": str(Path(__file__).resolve().parent.parent / "symposium" / "settings.py"),
        "other_pid": victim.pid,
        **listeners,
    }
    try:
        result = subprocess.run(
            launcher(SYSTEM_PYTHON, "-I", "-S", str(script), json.dumps(config), broker_port=listeners["broker_port"], read=[script]),
            capture_output=True,
            timeout=60,
        )
        assert victim.poll() is None, "the probe managed to end another process"
    finally:
        victim.kill()
        victim.wait()
    assert result.returncode == 0, result.stderr.decode()
    findings = json.loads(result.stdout)
    findings["_folder"] = folder
    return findings


def refused(finding, *errnos):
    assert "ok" not in finding, f"expected a refusal, got {finding}"
    assert finding["errno"] in errnos, finding
    return finding["error"]


def test_it_runs_as_a_user_of_its_own_without_capabilities(probe):
    uid, euid, gid, groups = probe["uid"]["ok"]
    assert uid == euid == gid and uid >= sandbox.POLICY["identity"]["uid_base"]
    assert groups == []
    assert probe["capabilities"]["ok"] == [0] * 6
    assert probe["bounding_set_has_sys_admin"]["ok"] == 0
    assert probe["no_new_privs"]["ok"] == 1
    assert probe["seccomp_mode"]["ok"] == 2  # SECCOMP_MODE_FILTER
    refused(probe["setuid_root"], errno.EPERM)


def test_it_sees_a_clean_environment_and_no_server_folder(probe):
    assert probe["environment"]["ok"] == sandbox.POLICY["environment"]
    assert probe["cwd"]["ok"] == "/"


def test_cant_write_files(probe):
    assert "Permission denied" in refused(probe["write_tmp"], errno.EACCES)
    refused(probe["write_beside_probe"], errno.EACCES)
    refused(probe["mkdir_tmp"], errno.EACCES)
    assert not (probe["_folder"] / "written").exists()
    assert not Path("/tmp/symposium-probe").exists()


def test_cant_read_etc_passwd_or_any_server_file(probe):
    refused(probe["read_etc_passwd"], errno.EACCES)
    refused(probe["read_server_settings"], errno.EACCES)
    refused(probe["list_root"], errno.EACCES)
    # ... while the shared libraries stay readable, or nothing could run.
    assert probe["read_usr"]["ok"] is True


def test_cant_read_proc_self_environ_or_other_processes(probe):
    refused(probe["read_proc_self_environ"], errno.EACCES)
    refused(probe["read_proc_1_cmdline"], errno.EACCES)


def test_cant_open_udp_raw_netlink_packet_or_unix_sockets(probe):
    for kind in ("udp", "udp6", "raw", "sctp", "netlink", "packet", "unix"):
        assert "Operation not permitted" in refused(probe[kind], errno.EPERM), kind
    # socketpair() stays: Deno's event loop uses one internally.
    assert probe["socketpair"]["ok"] == 2


def test_cant_connect_to_any_port_but_the_brokers(probe):
    assert "Permission denied" in refused(probe["connect_other_port"], errno.EACCES)
    assert probe["connect_broker_port"]["ok"] == "connected"
    refused(probe["tcp_fast_open"], errno.EPERM)


def test_cant_bind_or_listen(probe):
    refused(probe["bind"], errno.EACCES)
    refused(probe["listen"], errno.EPERM)


def test_cant_fork_or_spawn(probe):
    refused(probe["fork"], errno.EPERM)
    refused(probe["posix_spawn"], errno.EPERM)


def test_cant_exec_anything_not_even_itself(probe):
    refused(probe["exec_sh"], errno.EPERM)
    refused(probe["exec_self_again"], errno.EPERM)


def test_cant_ptrace_or_read_other_processes_memory(probe):
    refused(probe["ptrace_attach"], errno.EPERM)
    refused(probe["ptrace_traceme"], errno.EPERM)
    refused(probe["process_vm_readv"], errno.EPERM)


def test_cant_unshare_setns_mount_or_chroot(probe):
    for attempt in ("unshare_user", "unshare_net", "setns", "mount", "chroot"):
        refused(probe[attempt], errno.EPERM)


def test_cant_make_a_time_namespace(probe):
    refused(probe["unshare_time"], errno.EPERM)
    assert "CLONE_NEWTIME" in sandbox.POLICY["seccomp"]["clone_forbidden"]


def test_cant_give_a_file_set_id_bits(probe):
    for attempt in ("chmod_setuid", "chmod_setgid", "fchmodat_setuid", "create_setuid"):
        refused(probe[attempt], errno.EPERM)
    # A mode without set-id bits reaches the kernel (and Landlock), which answers for it.
    refused(probe["chmod_plain"], errno.ENOENT, errno.EACCES)


def test_both_sandboxes_refuse_the_one_shared_list():
    """The isolate's filter and the process sandbox's are built from one definition
    (capabilities/syscall_rules.py): every call of it is refused by both."""
    import io

    from capabilities import syscall_rules
    from capabilities.process import seccomp_filter

    def rules_text(seccomp_filter_object):
        out = tempfile.TemporaryFile()
        seccomp_filter_object.export_pfc(out)
        out.seek(0)
        return out.read().decode()

    isolate = rules_text(sandbox.build_seccomp_filter(0, os.getpid()))
    process = rules_text(seccomp_filter.build_filter())
    for name in syscall_rules.denied_syscalls():
        if name in syscall_rules.OPTIONAL_SYSCALLS and f'"{name}"' not in isolate:
            continue  # unknown to this libseccomp, in both
        assert f'"{name}"' in isolate, name
        assert f'"{name}"' in process, name
    for name in syscall_rules.MODE_ARGUMENT:
        if name != "fchmodat2" or '"fchmodat2"' in isolate:
            assert f'"{name}"' in isolate and f'"{name}"' in process, name
    assert sandbox.CLONE_NEW_FLAGS is not None and sandbox.CLONE_NEW_FLAGS == syscall_rules.CLONE_NAMESPACE_FLAGS


def test_cant_signal_another_process(probe):
    refused(probe["kill_other_pid"], errno.EPERM)
    refused(probe["kill_process_group_zero"], errno.EPERM)
    refused(probe["kill_parent"], errno.EPERM)
    assert probe["kill_self"]["ok"] == "signalled"


def test_cant_reach_risky_kernel_interfaces(probe):
    for attempt in ("bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "keyctl", "memfd_create", "shared_anonymous_mmap", "shmget", "personality_set"):
        refused(probe[attempt], errno.EPERM)
    assert probe["personality_query"]["ok"] is True


def test_cant_exceed_descriptor_thread_or_memory_limits(probe):
    assert "Too many open files" in refused(probe["open_1000_files"], errno.EMFILE)
    assert probe["allocate_4_gb"]["error"].startswith("MemoryError")
    # RLIMIT_NPROC binds because the isolate has a uid of its own.
    assert "can't start new thread" in probe["start_500_threads"]["error"]


def test_cant_outlive_its_cpu_time(readable_folder):
    spin = script_in(readable_folder, "spin.py", "while True:\n    pass\n")
    result = subprocess.run(launcher(SYSTEM_PYTHON, "-I", "-S", str(spin), cpu_seconds=1, read=[spin]), capture_output=True, timeout=30)
    assert result.returncode == -signal.SIGXCPU


def test_cant_make_syscalls_through_the_32_bit_abi(readable_folder):
    # getpid through `int 0x80` (the i386 ABI) would bypass rules written for x86_64
    # numbers; the filter's bad-architecture action kills the process instead.
    code = textwrap.dedent(
        """
        import ctypes, mmap
        page = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))  # mov eax, 20; int 0x80; ret
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        print(ctypes.CFUNCTYPE(ctypes.c_int)(address)())
        """
    )
    script = script_in(readable_folder, "int80.py", code)
    result = subprocess.run(launcher(SYSTEM_PYTHON, "-I", "-S", str(script), read=[script]), capture_output=True, timeout=30)
    assert result.returncode == -signal.SIGSYS


def test_it_compiles_the_same_filter_itself_without_a_prepared_program(readable_folder):
    # The slow path (manual use): libseccomp in the launcher. Its filter kills a 32-bit
    # syscall as the prepared one does.
    script = script_in(readable_folder, "int80_slow.py", textwrap.dedent(
        """
        import ctypes, mmap
        page = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))
        print(ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))())
        """))
    result = subprocess.run(launcher(SYSTEM_PYTHON, "-I", "-S", str(script), read=[script], prepared=False), capture_output=True, timeout=30)
    assert result.returncode == -signal.SIGSYS


def test_it_prepares_the_program_with_exactly_the_launchs_placeholders(tmp_path):
    path = sandbox.prepare_seccomp_program(str(tmp_path / "filter.bpf"))
    program = Path(path).read_bytes()
    words = [sandbox.BPF_INSTRUCTION.unpack_from(program, i)[3] for i in range(0, len(program), 8)]
    placeholders = {sandbox.PID_PLACEHOLDER, sandbox.EXEC_ADDRESS_PLACEHOLDER & 0xFFFFFFFF, sandbox.EXEC_ADDRESS_PLACEHOLDER >> 32}
    assert placeholders <= set(words)
    # A launch's values replace the placeholders and nothing else.
    patched = sandbox.read_seccomp_program(path, 0x7F00_1234_5678, 4321)
    changed = [i for i in range(0, len(program), 8) if program[i:i + 8] != patched[i:i + 8]]
    assert changed and all(words[i // 8] in placeholders for i in changed)
    assert sum(1 for w in words if w in placeholders) == len(changed)


def test_cant_start_with_a_program_that_is_not_the_prepared_filter(tmp_path):
    # An empty filter (allow everything) has none of the placeholders: the launcher
    # refuses it rather than start an isolate without its rules.
    allow_all = tmp_path / "allow.bpf"
    allow_all.write_bytes(sandbox.BPF_INSTRUCTION.pack(0x06, 0, 0, 0x7FFF0000))  # BPF_RET ALLOW
    command = launcher("/bin/true")
    command[command.index("--seccomp-program") + 1] = str(allow_all)
    result = subprocess.run(command, capture_output=True, timeout=30)
    assert result.returncode == 70
    assert b"lacks the launch's placeholders" in result.stderr


def test_it_refuses_to_start_without_a_program():
    result = subprocess.run([sys.executable, "-I", str(sandbox.__file__), "--memory-mb", "64", "--cpu-seconds", "5", "--broker-port", "9"], capture_output=True, timeout=30)
    assert result.returncode == 2
    assert b"no program given" in result.stderr


def test_it_sizes_the_data_limit_for_one_budget_shared_by_heap_and_off_heap():
    # One budget of the profile's memory (old and young generation), not two: memory
    # outside the heap can never take more than the profile's figure plus the runtime's
    # headroom, however empty the heap is.
    from isolates import pool

    for memory_mb in (64, 128, 256, 512):
        assert sandbox.semi_space_mb(memory_mb) == pool.semi_space_mb(memory_mb)
        runtime = (sandbox.ISOLATES_PER_PROCESS * sandbox.V8_CODE_RANGE_MB + sandbox.RUNTIME_DATA_MB) * sandbox.MB
        assert sandbox.data_limit_bytes(memory_mb) - runtime == sandbox.heap_budget_mb(memory_mb) * sandbox.MB
    assert sandbox.data_limit_bytes(128) - sandbox.data_limit_bytes(64) == (64 + 3 * 4) * sandbox.MB
