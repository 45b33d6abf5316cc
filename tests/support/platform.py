"""Real platform processes for the fault and cluster tests (and bench/load.py).

    platform = Platform.shared()            # a private PostgreSQL and Redis, migrated
    server = platform.start_server()        # `python -m daphne ... symposium.asgi:application`
    worker = platform.start_worker()        # `manage.py rqworker capabilities`
    session = platform.prepare({"acme": ("Interactive", {})})
    async with RunnerClient(server.port, session) as page:
        run = await page.start("acme", "export default () => 1")
        final = await page.finished(run)
    platform.redis.restart(); platform.pg.restart(); server.kill(); worker.kill()

Nothing here touches the PostgreSQL and Redis that the rest of the suite (and other
people's test runs) share: the cluster and the Redis are private, on free ports, in a
temporary folder, and are the only things a fault test may stop or restart.
"""

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import redis

from tests.support.websocket import connect

# The repository: platform processes start there, as `manage.py` and Daphne expect.
ROOT = Path(__file__).resolve().parent.parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, what, interval=0.02):
    """Poll `predicate` until it returns something true; its value. TimeoutError names `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def services_available():
    """Why the private services cannot or should not run here, or None.

    The tests that use them never touch the suite's own database or Redis, so their
    outcome is the same in both runs of `make test`: they run once, in the run on
    PostgreSQL and Redis (REDIS_URL set), or whenever SYMPOSIUM_FAULT_TESTS=1."""
    if not os.environ.get("REDIS_URL") and os.environ.get("SYMPOSIUM_FAULT_TESTS") != "1":
        return "runs once, in the suite's PostgreSQL and Redis run (or set SYMPOSIUM_FAULT_TESTS=1)"
    if not shutil.which("redis-server"):
        return "redis-server is not installed"
    if not (PG_BIN / "initdb").exists():
        return "PostgreSQL 15's server binaries are not installed"
    if os.geteuid() != 0:
        return "starting a private PostgreSQL as its own user needs root"
    return None


class PrivateRedis:
    """A redis-server of our own, without persistence: a restart loses everything in it,
    as a crashed Redis without a save file would."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self._ping(), 10, "the private Redis starting")
        return self

    def _ping(self):
        try:
            return self.client().ping()
        except Exception:
            return False

    def client(self):
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)

    def stop(self, kill=True):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(10)

    def restart(self, down_seconds=0.5):
        """Kill Redis and start it again on the same port, empty."""
        self.stop(kill=True)
        time.sleep(down_seconds)
        self.start()


class PrivatePostgres:
    """A PostgreSQL cluster of our own, in a temporary folder owned by the postgres user
    (initdb refuses to run as root), listening on a free loopback port."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="symposium-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        shutil.chown(self.folder, "postgres", "postgres")

    def url(self, database="symposium"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *command, check=True):
        return subprocess.run(["runuser", "-u", "postgres", "--", *command], check=check,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)

    def init(self):
        # --no-sync and fsync=off: a throwaway cluster need not survive power loss.
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                          "-E", "UTF8", "--no-sync", "--no-instructions")
        return self

    def start(self):
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")
        return self

    def stop(self, mode="fast"):
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, down_seconds=0.5):
        """Stop the server (ending every session at once) and start it again."""
        self.stop("immediate")
        time.sleep(down_seconds)
        self.start()

    def connect(self, database="symposium"):
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=5)

    def query(self, sql, params=(), database="symposium"):
        with self.connect(database) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name):
        self.query(f'CREATE DATABASE "{name}"', database="postgres")

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


class PlatformProcess:
    """A Daphne server or an RQ worker, started as a real process. With `restart`, it is
    started again whenever it exits on its own, as systemd's Restart=always or compose's
    restart policy would (a test's own kill() is not "on its own")."""

    def __init__(self, command, env, log, ready, restart=None):
        self.command = command
        self.env = env
        self.log = log
        self.ready = ready
        self.restart = restart  # the command for a restart, or None
        self.restarts = 0
        self.stopping = False
        self.process = None

    def start(self, timeout=30):
        self.log_file = open(self.log, "ab")
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT)
        if self.restart is not None:
            threading.Thread(target=self._supervise, name="supervisor", daemon=True).start()
        try:
            wait_until(lambda: self.process.poll() is not None or self.ready(self), timeout, f"{self.command[2]} starting")
        except TimeoutError:
            self.kill()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"{' '.join(self.command[:4])} exited with {self.process.returncode}:\n{self.log_tail()}")
        return self

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def _supervise(self):
        while True:
            self.process.wait()
            if self.stopping:
                return
            time.sleep(0.5)
            if self.stopping:
                return
            self.restarts += 1
            self.process = subprocess.Popen(self.restart(self.restarts), cwd=ROOT, env=self.env, stdout=self.log_file,
                                            stderr=subprocess.STDOUT)

    def kill(self, sig=signal.SIGKILL):
        self.stopping = True
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log_file.close()

    def log_tail(self, size=4000):
        try:
            return Path(self.log).read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def children(self):
        """Pids of the processes this one started, and of those they started (for a
        server: its isolates, and the spawners that fork them)."""
        parents = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(text.rsplit(")", 1)[1].split()[1])
        found, ancestors = [], {self.pid}
        while True:
            more = [pid for pid, parent in parents.items() if parent in ancestors and pid not in ancestors]
            if not more:
                return found
            found.extend(more)
            ancestors.update(more)


class Platform:
    """A private PostgreSQL and Redis, migrated, and the servers and workers started on
    them. One per test process (`shared()`), torn down when the process exits."""

    _shared = None

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="symposium-platform-"))
        self.storage_root = self.folder / "storage"
        self.storage_root.mkdir()
        self.var_dir = self.folder / "var"
        self.var_dir.mkdir()
        self.redis = PrivateRedis().start()
        self.pg = PrivatePostgres().init().start()
        self.pg.create_database("symposium")
        self.processes = []
        self.settings = {
            # Faults are noticed in a second or two instead of half a minute.
            "SYMPOSIUM_HEARTBEAT_SECONDS": "1",
            "SYMPOSIUM_HEARTBEAT_STALE_SECONDS": "3",
            "SYMPOSIUM_FINISH_RETRY_SECONDS": "30",
            # Cold starts only: warming isolates for four profiles in every server would
            # take the machine's two cores away from the tests.
            "SYMPOSIUM_WARM_ISOLATES": "0",
            "SYMPOSIUM_RQ_CAPABILITIES": "network,canvas,database,process",
        }
        result = self.manage("migrate", "-v0")
        if result.returncode:
            raise RuntimeError(f"migrate failed:\n{result.stdout[-3000:]}")

    @classmethod
    def shared(cls):
        if cls._shared is None:
            cls._shared = cls()
            atexit.register(cls._shared.destroy)
        return cls._shared

    def env(self, **overrides):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "SYMPOSIUM_", "DJANGO_"))}
        env.update({
            "DJANGO_SETTINGS_MODULE": "symposium.settings",
            "DATABASE_URL": self.pg.url(),
            "REDIS_URL": self.redis.url,
            "SYMPOSIUM_STORAGE_ROOT": str(self.storage_root),
            "SYMPOSIUM_VAR_DIR": str(self.var_dir),
            "SECRET_KEY": "symposium-fault-tests-not-secret",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.settings)
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def manage(self, *args, env=None, timeout=120):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env or self.env(), timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def django(self, code, **env):
        """Run Python with Django set up on the platform's database; its last line of
        output parsed as JSON."""
        result = self.manage("shell", "-c", code, env=self.env(**env))
        if result.returncode:
            raise RuntimeError(f"the script failed:\n{result.stdout[-3000:]}")
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None

    def start_server(self, port=None, **env):
        port = port or free_port()
        server = PlatformProcess(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "symposium.asgi:application"],
            self.env(SYMPOSIUM_BROKER_PORT=port, **env), self.folder / f"daphne-{port}.log",
            ready=lambda p: port_open(port),
        )
        server.port = port
        self.processes.append(server)
        return server.start()

    def start_worker(self, name=None, restart=False, **env):
        """An RQ worker; with `restart`, started again (under a new name) when it exits."""
        name = name or f"worker-{free_port()}"
        client = self.redis.client()

        def idle(process):
            state = client.hget(f"rq:worker:{name}", "state")
            return state == b"idle"

        def command(restarts=0):
            return [sys.executable, "manage.py", "rqworker", "capabilities", "--worker-class", "rq.SimpleWorker",
                    "--name", f"{name}-{restarts}" if restarts else name]

        worker = PlatformProcess(command(), self.env(**env), self.folder / f"{name}.log", ready=idle,
                                 restart=command if restart else None)
        worker.name = name
        self.processes.append(worker)
        return worker.start()

    def stop_all(self):
        for process in self.processes:
            if process.alive():
                process.kill()
        self.processes = []

    # -- data ---------------------------------------------------------------------------

    def prepare(self, tenants, username="alice"):
        """Create (or reset) tenants, {slug: (profile, {setting: value})}, and a session of
        `username`, an owner of all of them. Returns the session key (the sessionid
        cookie). One Django start-up for all of it."""
        code = f"""
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from tenants.models import Membership, PermissionProfile, PolicyOverride, Tenant
user, _ = get_user_model().objects.get_or_create(username={username!r})
for slug, (profile, overrides) in {dict(tenants)!r}.items():
    tenant, _ = Tenant.objects.update_or_create(slug=slug, defaults=dict(
        name=slug, profile=PermissionProfile.objects.get(name=profile)))
    tenant.overrides.all().delete()
    for setting, value in overrides.items():
        PolicyOverride.objects.create(tenant=tenant, setting=setting, value=str(value))
    tenant.storage_root().mkdir(parents=True, exist_ok=True)
    Membership.objects.update_or_create(tenant=tenant, user=user, defaults={{"role": "owner"}})
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(json.dumps(session.session_key))
"""
        return self.django(code)

    def run_record(self, run_id):
        rows = self.pg.query(
            "SELECT status, error_code, error, result, server, calls FROM tenants_blockrun WHERE id = %s", (run_id,))
        if not rows:
            return None
        status, code, error, result, server, calls = rows[0]
        return {"status": status, "error_code": code, "error": error, "result": result, "server": server, "calls": calls}

    def wait_finished(self, run_id, timeout=30):
        return wait_until(lambda: (r := self.run_record(run_id)) and r["status"] not in ("queued", "running") and r,
                          timeout, f"run {run_id} finishing", interval=0.1)

    def audit_rows(self, run_id):
        return self.pg.query(
            "SELECT operation, outcome, error_code, message FROM tenants_auditlog WHERE run_id = %s ORDER BY id", (run_id,))

    def destroy(self):
        self.stop_all()
        self.redis.stop()
        self.pg.destroy()
        shutil.rmtree(self.folder, ignore_errors=True)


class RunnerClient:
    """The runner page's websocket (`/ws/runner/`), spoken as the page does: a logged-in
    session's cookie and this site's Origin."""

    def __init__(self, port, session_key):
        self.port = port
        self.session_key = session_key
        self.backlog = []
        self.ref = 0

    async def __aenter__(self):
        self.ws = await connect(f"ws://127.0.0.1:{self.port}/ws/runner/", {
            "Origin": f"http://127.0.0.1:{self.port}", "Cookie": f"sessionid={self.session_key}"})
        ready = await self.expect(lambda m: m.get("type") in ("ready", "error"), 10)
        if ready["type"] != "ready":
            raise ConnectionError(f"the runner refused the session: {ready}")
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()

    def send(self, frame):
        self.ws.send(json.dumps(frame))

    async def expect(self, matches, timeout=30):
        """The first message (kept or new) for which `matches` is true."""
        for i, message in enumerate(self.backlog):
            if matches(message):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the runner sent no such message")
            text = await asyncio.wait_for(self.ws.receive(), remaining)
            if text is None:
                raise ConnectionError("the runner's websocket closed")
            message = json.loads(text)
            if matches(message):
                return message
            self.backlog.append(message)

    async def start(self, tenant, code, input=None, name="block.js"):
        """Start a run: its id, or the refusal ({"type": "refused", "code", "message"})."""
        self.ref += 1
        ref = self.ref
        self.send({"type": "start", "tenant": tenant, "code": code, "name": name, "ref": ref,
                   "input": json.dumps(input) if input is not None else ""})
        reply = await self.expect(lambda m: m.get("ref") == ref and m.get("type") in ("accepted", "refused"))
        return reply["run"] if reply["type"] == "accepted" else reply

    async def finished(self, run_id, timeout=60):
        return await self.expect(lambda m: m.get("type") == "finished" and m.get("run") == run_id, timeout)

    async def stop(self, run_id):
        self.send({"type": "stop", "run": run_id})
        await asyncio.sleep(0)


class CpuThrottle:
    """A cgroup (v1 cpu controller) that gives its processes 1% of one core: a worker put
    in it does everything a hundred times slower, so a test can kill it in the middle of
    a call that would otherwise take a millisecond."""

    ROOT = Path("/sys/fs/cgroup/cpu")

    def __init__(self, percent=1):
        self.path = self.ROOT / f"symposium-test-{os.getpid()}-{free_port()}"
        self.percent = percent

    @classmethod
    def available(cls):
        return (cls.ROOT / "cgroup.procs").exists() and os.access(cls.ROOT, os.W_OK)

    def __enter__(self):
        self.path.mkdir()
        period = int((self.path / "cpu.cfs_period_us").read_text())
        (self.path / "cpu.cfs_quota_us").write_text(str(max(1000, period * self.percent // 100)))
        return self

    def add(self, pid):
        (self.path / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *exc):
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                (self.ROOT / "cgroup.procs").write_text(pid)
        except OSError:
            pass
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
