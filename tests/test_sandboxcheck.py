"""`manage.py sandboxcheck` and the server's check at start, on this machine's real
kernel: the probes run the isolate launcher, one sandboxed command and the cgroups as
the platform does (isolates/containment.py). Nothing of the probes is replaced; a
missing layer is made by asking for one this kernel cannot have (Landlock ABI 99) or by
settings that take one away (a cgroup folder that does not exist)."""

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from capabilities.process import sandbox as process_sandbox
from isolates import sandbox as isolate_sandbox
from isolates.containment import LAYERS

ROOT = Path(__file__).resolve().parent.parent


def sandboxcheck(*args):
    out = io.StringIO()
    call_command("sandboxcheck", *args, stdout=out, no_color=True)
    return out.getvalue()


def line_of(output, title):
    [line] = [line for line in output.splitlines() if f" {title}: " in line]
    return line


def test_it_reports_every_layer_and_what_it_stops(db):
    output = sandboxcheck()
    for title, stops in LAYERS.values():
        line = line_of(output, title)
        assert line.startswith(("active ", "MISSING "))
        for attack in stops:
            assert f"stop: {attack}" in output or f"stops: {attack}" in output
    assert output.rstrip().splitlines()[-1].endswith(" layers active.")


def test_it_finds_this_machines_landlock_and_sandbox(db):
    """What this machine has, found independently of the probes: the kernel's Landlock
    ABI and whether bubblewrap is installed."""
    output = sandboxcheck()
    abi = isolate_sandbox.landlock_abi()
    landlock = line_of(output, "Landlock (isolates)")
    if abi > 0:
        assert landlock.startswith("active ") and f"ABI {abi};" in landlock
    else:
        assert landlock.startswith("MISSING")
    assert line_of(output, "seccomp (isolates and commands)").startswith("active ")
    if process_sandbox.available():
        assert line_of(output, "user namespaces / bubblewrap (commands)").startswith("active ")
        assert line_of(output, "nosuid, nodev, noexec storage (commands)").startswith("active ")


def test_it_fails_when_a_required_layer_is_missing(db):
    with pytest.raises(CommandError) as caught:
        sandboxcheck("--require", "landlock:99")
    assert "ABI 99 is required" in str(caught.value)
    with pytest.raises(CommandError) as caught:
        sandboxcheck("--require", "tpm")
    assert "the layers are landlock, seccomp" in str(caught.value)


def test_it_fails_when_settings_take_a_layer_away(db, settings, tmp_path):
    settings.SYMPOSIUM_PROCESS_CGROUP = str(tmp_path / "no-such-cgroup" / "below")
    with pytest.raises(CommandError) as caught:
        sandboxcheck("--require", "cgroup-pids")
    assert "cgroup delegation: pids (commands) is missing" in str(caught.value)


def server_environment(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DEBUG="false", SECRET_KEY="sandboxcheck-test-key", SYMPOSIUM_VAR_DIR=str(tmp_path), **extra)
    return env


def start_server(env):
    return subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "0", "symposium.asgi:application"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("required,reason", [
    ("landlock:99", "ABI 99 is required"),
    ("seccomp,tpm", "SYMPOSIUM_REQUIRED_LAYERS names 'tpm'"),
])
def test_cant_start_the_server_in_production_without_a_required_layer(tmp_path, required, reason):
    server = start_server(server_environment(tmp_path, SYMPOSIUM_REQUIRED_LAYERS=required))
    try:
        _, stderr = server.communicate(timeout=120)
    finally:
        server.kill()
    assert server.returncode != 0
    assert reason in stderr
    if required == "landlock:99":
        assert "Symposium will not start" in stderr and "Traceback" not in stderr


def test_cant_start_the_server_when_settings_take_a_required_layer_away(tmp_path):
    env = server_environment(tmp_path, SYMPOSIUM_REQUIRED_LAYERS="cgroup-pids",
                             SYMPOSIUM_PROCESS_CGROUP=str(tmp_path / "no-such-cgroup" / "below"))
    server = start_server(env)
    try:
        _, stderr = server.communicate(timeout=120)
    finally:
        server.kill()
    assert server.returncode != 0
    assert "cgroup delegation: pids (commands) is missing: no pids cgroup can be made" in stderr


def test_it_logs_one_line_per_layer_and_starts_when_the_required_layers_are_there(tmp_path):
    required = "seccomp,landlock" if isolate_sandbox.landlock_abi() > 0 else "seccomp"
    server = start_server(server_environment(tmp_path, SYMPOSIUM_REQUIRED_LAYERS=required))
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            if sum(line.startswith("sandbox layer ") for line in list(lines)) == len(LAYERS):
                break
            time.sleep(0.2)
        time.sleep(1)  # past the check: still up
        assert server.poll() is None, "".join(lines)
    finally:
        server.kill()
        server.wait(10)
        reader.join(10)
    layer_lines = [line for line in lines if line.startswith("sandbox layer ")]
    assert len(layer_lines) == len(LAYERS), "".join(lines)
    assert sum(line.startswith("sandbox layer Landlock (isolates): ") for line in layer_lines) == 1
