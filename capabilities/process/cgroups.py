"""A pids cgroup per sandboxed command: the bound on how many processes it can have.

Why a cgroup and not only RLIMIT_NPROC: the kernel never applies RLIMIT_NPROC to a
process whose real user is root on the host, and inside bubblewrap's user namespace the
sandbox's user 1000 *is* the server's user on the host (that is how it may write the
tenant's files). When the server runs as root, as it does in development here, the
rlimit therefore binds nothing, and a fork bomb would only meet the machine's pid_max.
A pids cgroup counts every task of the command, whoever it runs as.

The cgroup is found from settings.SYMPOSIUM_PROCESS_CGROUP (a folder of a pids cgroup
the server may write: a delegated cgroup v2 subtree with +pids in its subtree_control,
or a cgroup v1 pids folder), else the server's own cgroup in the v1 pids hierarchy at
/sys/fs/cgroup/pids. Under it, one folder per command: symposium-<random>, with
pids.max set before the command starts and removed when it has ended.
"""

import logging
import os
import secrets
import signal
import time
from pathlib import Path

from django.conf import settings

logger = logging.getLogger("symposium.process")

V1_PIDS_MOUNT = Path("/sys/fs/cgroup/pids")


def _own_v1_pids_path():
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "pids" in controllers.split(","):
                return path.lstrip("/")
    except (OSError, ValueError):
        pass
    return None


def parent_folder():
    """The folder under which per-command cgroups are made, or None."""
    configured = settings.SYMPOSIUM_PROCESS_CGROUP
    if configured:
        return Path(configured)
    own = _own_v1_pids_path()
    if own is None or not (V1_PIDS_MOUNT / "cgroup.procs").exists():
        return None
    return V1_PIDS_MOUNT / own / "symposium-process"


class PidsCgroup:
    """One command's cgroup. `create()` returns None where there is none to be had."""

    def __init__(self, path):
        self.path = path

    @classmethod
    def create(cls, max_pids):
        parent = parent_folder()
        if parent is None:
            return None
        path = parent / f"symposium-{secrets.token_hex(8)}"
        try:
            parent.mkdir(exist_ok=True)
            path.mkdir()
        except OSError as e:
            logger.warning("No pids cgroup for a sandboxed command (%s).", e.strerror)
            return None
        try:
            (path / "pids.max").write_text(str(max_pids))
        except OSError as e:
            logger.warning("Cannot set pids.max for a sandboxed command (%s).", e.strerror)
            cls(path).remove()
            return None
        return cls(path)

    def add(self, pid):
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self):
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

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
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                # Busy until the last killed task is reaped, a few milliseconds.
                self.kill_all()
                time.sleep(0.01)
        logger.warning("A sandboxed command's cgroup could not be removed: %s", self.path.name)
