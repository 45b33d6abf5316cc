"""Which containment layers this machine gives the platform, found by trying them.

Each layer is probed the way the platform uses it, never read off a configuration:

- the isolate launcher (isolates/sandbox.py) is run with the pool's arguments (the pool
  runs the same main() in a fork of its spawner), on the system's Python with a small
  probe that tries to write a file, read /etc/passwd, connect to a port that is not the
  broker's and make a user namespace (Landlock and seccomp);
- one command is run through the process capability's own handler (bubblewrap,
  capabilities/process), which prints its /proc/self/status and mount table (user
  namespaces, its seccomp filter, nosuid/nodev/noexec storage);
- a per-command pids cgroup is made and removed as the process capability makes them,
  and a child cgroup is tried for a memory controller (cgroup delegation).

`manage.py sandboxcheck` prints the report; the web server logs it once at start
(`check_at_start`, from symposium/asgi.py) and, with DEBUG off, refuses to start when a
layer named in settings.SYMPOSIUM_REQUIRED_LAYERS is missing (docs/isolates.md).
"""

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from capabilities.base import CallContext, CapabilityError
from capabilities.process import cgroups
from capabilities.process import handler as process_handler
from capabilities.process import sandbox as process_sandbox
from isolates import sandbox as isolate_sandbox
from tenants.models import PermissionProfile
from tenants.policy import build_policy, profile_values

logger = logging.getLogger("symposium.sandbox")

SYSTEM_PYTHON = "/usr/bin/python3"
PROBE_TIMEOUT_SECONDS = 30

# The layers, in the order they are reported, and what each one stops. A required layer
# is named as here; "landlock:N" requires at least Landlock ABI N.
LAYERS = {
    "landlock": ("Landlock (isolates)", (
        "an isolate writing any file",
        "an isolate reading server files (/etc/passwd, settings, other tenants' storage)",
        "an isolate running any program but its runtime",
        "TCP from an isolate to any port but the broker's (ABI 4 and later)",
        "signals and abstract unix sockets out of an isolate (ABI 6 and later)",
    )),
    "seccomp": ("seccomp (isolates and commands)", (
        "new namespaces, mount, ptrace, bpf, io_uring, keyrings (escapes through the kernel)",
        "exec of anything but the runtime, in an isolate",
        "set-uid and set-gid bits (chmod 4755)",
        "sockets other than TCP (raw, UDP, netlink) from an isolate",
    )),
    "namespaces": ("user namespaces / bubblewrap (commands)", (
        "a command reaching the network (its own loopback only)",
        "a command seeing or signalling other processes",
        "a command seeing the server's files beyond its allowed programs",
        "a command holding any capability on the host",
    )),
    "cgroup-pids": ("cgroup delegation: pids (commands)", (
        "a fork bomb in a command (pids.max per command)",
    )),
    "cgroup-memory": ("cgroup delegation: memory (commands)", (
        "a command's whole process tree exceeding a memory limit (memory.max)",
    )),
    "nosuid-storage": ("nosuid, nodev, noexec storage (commands)", (
        "set-uid programs made in tenant storage",
        "device files in tenant storage",
        "running programs or loading libraries a tenant stored",
    )),
}


@dataclass
class Layer:
    name: str
    active: bool
    detail: str
    abi: int = 0  # Landlock's ABI, for "landlock:N"
    stops: tuple = field(default=())

    @property
    def title(self):
        return LAYERS[self.name][0]

    def line(self):
        """One line for the server's log."""
        state = "active" if self.active else "MISSING"
        return f"{self.title}: {state} ({self.detail})"


# -- isolates: Landlock and seccomp, through the launcher --------------------------------

LAUNCHER_PROBE = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
config = json.loads(sys.argv[1])
found = {"seccomp": libc.prctl(21, 0, 0, 0, 0), "no_new_privs": libc.prctl(39, 0, 0, 0, 0)}

def attempt(name, action):
    try:
        action()
        found[name] = "allowed"
    except OSError as e:
        found[name] = errno.errorcode.get(e.errno, str(e.errno))

def connect():
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", config["other_port"]))
    finally:
        s.close()

def unshare():
    if libc.unshare(0x10000000) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))

attempt("write_file", lambda: open(config["write_to"], "w").close())
attempt("read_passwd", lambda: open("/etc/passwd").read())
attempt("connect_other_port", connect)
attempt("unshare_user", unshare)
print(json.dumps(found), flush=True)
try:
    os.execv("/bin/true", ["true"])
except OSError as e:
    print(json.dumps({"exec_other": errno.errorcode.get(e.errno, str(e.errno))}), flush=True)
"""


def probe_launcher():
    """What the probe found under the isolate launcher, its warnings, or an error text."""
    if not os.path.exists(SYSTEM_PYTHON):
        return None, [], f"no system Python at {SYSTEM_PYTHON} to probe with"
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    folder = tempfile.mkdtemp(prefix="symposium-sandboxcheck-")
    os.chmod(folder, 0o777)
    try:
        broker_port, other_port = (s.getsockname()[1] for s in listeners)
        config = {"other_port": other_port, "write_to": os.path.join(folder, "written")}
        command = [
            sys.executable, "-I", isolate_sandbox.__file__, "--memory-mb", "64", "--cpu-seconds", "10",
            "--broker-port", str(broker_port), "--", SYSTEM_PYTHON, "-I", "-S", "-c", LAUNCHER_PROBE, json.dumps(config),
        ]
        try:
            result = subprocess.run(command, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return None, [], f"the launcher's probe did not finish within {PROBE_TIMEOUT_SECONDS} s"
        warnings = [line.split(":", 1)[1].strip() for line in result.stderr.decode(errors="replace").splitlines()
                    if line.startswith("symposium-sandbox:")]
        lines = result.stdout.decode(errors="replace").splitlines()
        try:
            found = json.loads(lines[0])
        except (IndexError, ValueError):
            return None, warnings, f"the launcher refused to run (exit {result.returncode}): {'; '.join(warnings)[:200] or 'no output'}"
        found["exec_other"] = json.loads(lines[1])["exec_other"] if len(lines) > 1 else "allowed"
        found["written"] = os.path.exists(config["write_to"])
        return found, warnings, ""
    finally:
        for listener in listeners:
            listener.close()
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


def landlock_layer(found, error):
    abi = isolate_sandbox.landlock_abi()
    if found is None:
        return Layer("landlock", False, error or "the launcher's probe gave no answer", abi)
    refused = [what for what, key in (("writing", "write_file"), ("reading /etc/passwd", "read_passwd"))
               if found.get(key) == "EACCES"]
    active = abi > 0 and len(refused) == 2 and not found["written"]
    if abi <= 0:
        return Layer("landlock", False, "the kernel has no Landlock", abi)
    if not active:
        return Layer("landlock", False, f"ABI {abi}, but the probe was not stopped: write {found['write_file']}, read {found['read_passwd']}", abi)
    tcp = "TCP to other ports refused" if found["connect_other_port"] in ("EACCES", "EPERM") else "no TCP rules (ABI < 4)"
    scoped = "signals and abstract sockets scoped" if abi >= 6 else "no scoping (ABI < 6)"
    return Layer("landlock", True, f"ABI {abi}; files read-only, {tcp}, {scoped}", abi)


def seccomp_layer(found, error, command_status):
    parts = []
    active = True
    if found is None:
        active = False
        parts.append(f"isolates: not probed ({error})")
    elif found["seccomp"] == 2 and found["unshare_user"] in ("EPERM", "EACCES") and found["exec_other"] != "allowed":
        parts.append("isolates: filter loaded, unshare and exec refused")
    else:
        active = False
        parts.append(f"isolates: mode {found['seccomp']}, unshare {found['unshare_user']}, exec {found['exec_other']}")
    if command_status is not None:
        mode = command_status.get("Seccomp", "?")
        if mode == "2":
            parts.append("commands: filter loaded")
        else:
            active = False
            parts.append(f"commands: mode {mode}")
    return Layer("seccomp", active, "; ".join(parts))


# -- commands: bubblewrap, the storage's mount flags, cgroups -----------------------------


@dataclass
class CommandProbe:
    status: dict | None  # /proc/self/status fields inside the sandbox
    mounts: dict  # mount point -> its options, inside the sandbox
    error: str


def probe_command():
    """Run `cat /proc/self/status /proc/self/mountinfo` through the process capability's
    handler, on a throwaway storage folder with write access, as a tenant's call runs."""
    if not process_sandbox.available():
        return CommandProbe(None, {}, f"bubblewrap is not installed ({process_sandbox.BWRAP})")
    profile = PermissionProfile(name="sandboxcheck", files_access="write", process_allowed=True, process_commands="cat")
    folder = Path(tempfile.mkdtemp(prefix="symposium-sandboxcheck-"))
    os.chmod(folder, 0o755)
    ctx = CallContext(tenant_id=0, tenant_slug="sandboxcheck", run_id="sandboxcheck",
                      policy=build_policy(profile_values(profile), profile.name), storage_root=folder / "storage")
    try:
        reply = process_handler.execute(ctx.bounded(PROBE_TIMEOUT_SECONDS), {
            "command": "cat", "args": ["/proc/self/status", "/proc/self/mountinfo"]})
    except CapabilityError as e:
        return CommandProbe(None, {}, e.message)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], capture_output=True)
    if reply["exitCode"] != 0:
        return CommandProbe(None, {}, f"the probe command failed: {reply['stderr'][:200]}")
    status, mounts = {}, {}
    for line in reply["stdout"].splitlines():
        if ":\t" in line:
            key, _, value = line.partition(":\t")
            status[key] = value.strip()
        else:
            # mountinfo: id parent dev root mount-point options ... (proc(5))
            fields = line.split()
            if len(fields) >= 6:
                mounts[fields[4]] = set(fields[5].split(","))
    return CommandProbe(status, mounts, "")


def namespaces_layer(probe):
    if probe.status is None:
        return Layer("namespaces", False, probe.error)
    uid = probe.status.get("Uid", "").split()[:1]
    caps = probe.status.get("CapEff", "")
    if uid == ["1000"] and caps and int(caps, 16) == 0 and probe.status.get("NoNewPrivs") == "1":
        return Layer("namespaces", True, "bubblewrap: own user, pid, network and mount namespaces; uid 1000 without capabilities")
    return Layer("namespaces", False, f"the command ran as uid {' '.join(uid)} with capabilities {caps}")


def nosuid_layer(probe):
    if probe.status is None:
        return Layer("nosuid-storage", False, probe.error)
    wanted = {"nosuid", "nodev", "noexec"}
    missing = {point: sorted(wanted - probe.mounts.get(point, set())) for point in ("/", "/tmp")}
    missing = {point: flags for point, flags in missing.items() if flags}
    if not missing:
        return Layer("nosuid-storage", True, "storage (/) and /tmp mounted nosuid, nodev, noexec in the sandbox")
    return Layer("nosuid-storage", False, "; ".join(f"{point} lacks {', '.join(flags)}" for point, flags in missing.items()))


def pids_layer():
    made = cgroups.CommandCgroups.create(8, 512 * 1024 * 1024)
    try:
        if not made.pids_bounded:
            root = " (as root, process execution is refused without it)" if os.geteuid() == 0 else " (RLIMIT_NPROC bounds commands instead)"
            return Layer("cgroup-pids", False, "no pids cgroup can be made" + root)
        return Layer("cgroup-pids", True, f"pids.max per command under {made.folders['pids'].parent}")
    finally:
        made.remove()


def memory_layer():
    made = cgroups.CommandCgroups.create(8, 512 * 1024 * 1024)
    try:
        if not made.memory_bounded:
            return Layer("cgroup-memory", False, "no memory cgroup can be made per command (a delegated cgroup v2 with +memory, or the v1 memory hierarchy)")
        return Layer("cgroup-memory", True, f"a memory limit per command under {made.folders['memory'].parent}")
    finally:
        made.remove()


def probe_layers():
    """Every layer of LAYERS, probed on this machine, in order."""
    found, warnings, error = probe_launcher()
    command = probe_command()
    layers = [
        landlock_layer(found, error),
        seccomp_layer(found, error, command.status),
        namespaces_layer(command),
        pids_layer(),
        memory_layer(),
        nosuid_layer(command),
    ]
    for layer in layers:
        layer.stops = LAYERS[layer.name][1]
    return layers


# -- what the settings require ------------------------------------------------------------


def parse_required(names):
    """SYMPOSIUM_REQUIRED_LAYERS as [(layer, minimum ABI)], or ImproperlyConfigured."""
    required = []
    for item in names:
        name, _, abi = item.strip().partition(":")
        if name not in LAYERS or (abi and (name != "landlock" or not abi.isdigit())):
            raise ImproperlyConfigured(
                f"SYMPOSIUM_REQUIRED_LAYERS names {item!r}; the layers are {', '.join(LAYERS)} (and landlock:N for a minimum ABI)."
            )
        required.append((name, int(abi) if abi else 0))
    return required


def missing_layers(layers, required):
    """The required layers these probes did not find, each as a sentence."""
    by_name = {layer.name: layer for layer in layers}
    missing = []
    for name, abi in required:
        layer = by_name[name]
        if not layer.active:
            missing.append(f"{layer.title} is missing: {layer.detail}")
        elif abi and layer.abi < abi:
            missing.append(f"{layer.title}: ABI {abi} is required, this kernel has ABI {layer.abi}")
    return missing


_checked = False
_announce = True


def announce_active_layers(announce):
    """Whether the start-up check logs the layers it finds active (it always logs a
    missing one). `runblock` turns it off: its stderr is the block's console."""
    global _announce
    _announce = announce


def check_at_start():
    """Log the layers once per process, and refuse to start (ImproperlyConfigured) with
    DEBUG off when a required layer is missing. With DEBUG on, the same is a warning.

    The probes take a second or two (they start the launcher and a sandboxed command).
    With no layer required, nothing waits on them: they run in a background thread and
    log when done, so `runblock` and a development server start at once."""
    global _checked
    if _checked:
        return
    required = parse_required(settings.SYMPOSIUM_REQUIRED_LAYERS)
    if not required:
        _checked = True
        threading.Thread(target=_log_layers, name="sandboxcheck", daemon=True).start()
        return
    _check(required)


def _log_layers():
    try:
        _check(())
    except Exception:
        logger.exception("the sandbox's self-check failed")


def _check(required):
    global _checked
    layers = probe_layers()
    for layer in layers:
        if not layer.active:
            logger.warning("sandbox layer %s", layer.line())
        elif _announce:
            logger.info("sandbox layer %s", layer.line())
    missing = missing_layers(layers, required)
    if missing and not settings.DEBUG:
        raise ImproperlyConfigured(
            "Symposium will not start: SYMPOSIUM_REQUIRED_LAYERS requires containment this machine does not give. "
            + " ".join(missing) + " Run `manage.py sandboxcheck` for details (docs/isolates.md)."
        )
    for sentence in missing:
        logger.warning("a required sandbox layer is missing (DEBUG is on, so the server starts): %s", sentence)
    _checked = True
