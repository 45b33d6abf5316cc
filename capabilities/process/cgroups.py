"""The cgroups of one sandboxed command: a pids cgroup (how many processes it can have)
and a memory cgroup (how much memory all of them, and the files they hold in memory,
can take together).

Why a pids cgroup and not only RLIMIT_NPROC: the kernel never applies RLIMIT_NPROC to a
process whose real user is root on the host, and inside bubblewrap's user namespace the
sandbox's user 1000 *is* the server's user on the host when the server is not root.
When the server runs as root, as it does in development here, the rlimit therefore
binds nothing, and a fork bomb would only meet the machine's pid_max. A pids cgroup
counts every task of the command, whoever it runs as.

Why a memory cgroup and not only RLIMIT_AS: the rlimit bounds each process, so 64
processes of a command could take 64 times the profile's memory; and it does not count
the tmpfs pages a command fills (its /tmp, what it writes to the tenant's storage,
capabilities.process.mounts). A memory cgroup counts all of these, for the whole tree,
and the kernel kills the command's processes when they would go past it. Swap is
counted too where the kernel accounts it (memsw, memory.swap.max), so that the bound is
on memory, not on memory plus swap.

Where the cgroups are made, in this order:
  1. settings.SYMPOSIUM_PROCESS_CGROUP: a delegated cgroup v2 folder the server may
     write, with +pids and +memory in its cgroup.subtree_control (a systemd unit's
     Delegate=yes gives one). One folder per command holds both limits.
  2. Otherwise the cgroup v1 hierarchies at /sys/fs/cgroup/pids and
     /sys/fs/cgroup/memory: a folder per command under the server's own cgroup in each.
A controller that cannot be had is left out (logged once): without the memory cgroup the
command still runs, bounded per process by RLIMIT_AS (the stated fallback in
docs/process.md); without the pids cgroup a server running as root refuses to run
commands at all (capabilities.process.sandbox).

The command enters them before bubblewrap starts (the child that becomes bubblewrap
writes its own pid, capabilities.process.mounts.Staging), so every process it will ever
have is counted; the folders are removed when it has ended.
"""

import logging
import os
import secrets
import signal
import time
from pathlib import Path

from django.conf import settings

logger = logging.getLogger("symposium.process")

V1_MOUNTS = {"pids": Path("/sys/fs/cgroup/pids"), "memory": Path("/sys/fs/cgroup/memory")}
PARENT_NAME = "symposium-process"
_warned = set()


def _own_v1_path(controller):
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path.lstrip("/")
    except (OSError, ValueError):
        pass
    return None


def parent_folders():
    """{controller: folder under which per-command cgroups are made} for the controllers
    that can be had, and whether they are one cgroup v2 folder."""
    configured = settings.SYMPOSIUM_PROCESS_CGROUP
    if configured:
        folder = Path(configured)
        try:
            enabled = (folder / "cgroup.subtree_control").read_text().split()
        except OSError:
            # A cgroup v1 folder (pids, as this setting meant before there was a memory
            # cgroup): the memory controller is then looked for in the v1 hierarchy.
            found = {"pids": folder}
            memory = _v1_parent("memory")
            if memory is not None:
                found["memory"] = memory
            return found, False
        return {name: folder for name in ("pids", "memory") if name in enabled}, True
    found = {}
    for controller in V1_MOUNTS:
        folder = _v1_parent(controller)
        if folder is not None:
            found[controller] = folder
    return found, False


def _v1_parent(controller):
    own = _own_v1_path(controller)
    mount = V1_MOUNTS[controller]
    if own is None or not (mount / "cgroup.procs").exists():
        return None
    return mount / own / PARENT_NAME


def _warn_once(key, message, *args):
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


class CommandCgroups:
    """One command's cgroups. `create()` makes those that can be had; `pids_bounded` and
    `memory_bounded` say which did."""

    def __init__(self, folders):
        self.folders = folders  # {controller: folder}, one folder for both on v2

    @property
    def pids_bounded(self):
        return "pids" in self.folders

    @property
    def memory_bounded(self):
        return "memory" in self.folders

    def procs_files(self):
        """The cgroup.procs files the command's first process writes its pid to."""
        return sorted({str(folder / "cgroup.procs") for folder in self.folders.values()})

    @classmethod
    def create(cls, max_pids, memory_bytes):
        parents, unified = parent_folders()
        name = f"symposium-{secrets.token_hex(8)}"
        made = {}
        limits = {
            "pids": [("pids.max", str(max_pids))],
            "memory": (
                [("memory.max", str(memory_bytes)), ("memory.swap.max", "0"), ("memory.oom.group", "1")]
                if unified
                else [("memory.limit_in_bytes", str(memory_bytes)), ("memory.memsw.limit_in_bytes", str(memory_bytes))]
            ),
        }
        for controller, parent in parents.items():
            path = parent / name
            if path not in made.values():
                try:
                    parent.mkdir(exist_ok=True)
                    path.mkdir()
                except OSError as e:
                    _warn_once(("mkdir", controller), "No %s cgroup for sandboxed commands (%s).", controller, e.strerror)
                    continue
            try:
                for index, (knob, value) in enumerate(limits[controller]):
                    try:
                        (path / knob).write_text(value)
                    except FileNotFoundError:
                        # memsw, swap.max and oom.group are absent on kernels without swap
                        # accounting; the first knob of each controller never is.
                        if index == 0:
                            raise
            except OSError as e:
                _warn_once(("limit", controller), "Cannot limit %s for sandboxed commands (%s).", controller, e.strerror)
                if path not in made.values():
                    _remove(path)
                continue
            made[controller] = path
        return cls(made)

    def pids(self):
        found = set()
        for path in self.procs_files():
            try:
                found.update(int(p) for p in Path(path).read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def memory_peak(self):
        """The most memory the command's tree held at once, in bytes (None if unknown)."""
        folder = self.folders.get("memory")
        for knob in ("memory.max_usage_in_bytes", "memory.peak"):
            try:
                return int((folder / knob).read_text())
            except (OSError, ValueError, TypeError):
                continue
        return None

    def memory_limit_hit(self):
        """Whether the kernel killed a process of the command for memory."""
        folder = self.folders.get("memory")
        if folder is None:
            return False
        for knob, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
            try:
                for line in (folder / knob).read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == key and int(value) > 0:
                        return True
            except (OSError, ValueError):
                continue
        return False

    def kill_all(self):
        # A pid namespace dies with its first process, so this finds nothing in the
        # normal case; it is the belt to bubblewrap's braces.
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self):
        for path in set(self.folders.values()):
            _remove(path, self)


def _remove(path, cgroups=None):
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            # Busy until the last killed task is reaped, a few milliseconds.
            if cgroups is not None:
                cgroups.kill_all()
            time.sleep(0.01)
    logger.warning("A sandboxed command's cgroup could not be removed: %s", path.name)
