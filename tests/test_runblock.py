"""`manage.py runblock` as a user runs it: a separate process with its own database,
no server running, output on stdout and stderr, and its exit status."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A fresh platform of its own (SQLite, no Redis) with two demo tenants."""
    var = tmp_path_factory.mktemp("var")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env["SYMPOSIUM_VAR_DIR"] = str(var)

    def manage(*args, stdin=None, timeout=120):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, input=stdin,
                              capture_output=True, text=True, timeout=timeout)

    assert manage("migrate", "-v0").returncode == 0
    assert manage("createtenant", "acme", "--profile", "Interactive").returncode == 0
    assert manage("createtenant", "viewer", "--profile", "Basic").returncode == 0
    for slug in ("acme", "viewer"):
        shutil.copytree(EXAMPLES / "storage", var / "storage" / slug, dirs_exist_ok=True)
    manage.var = var
    return manage


def test_it_runs_the_seed_file_example_and_prints_what_the_seed_says(platform):
    result = platform("runblock", str(EXAMPLES / "seed/file-system.js"), "--tenant", "acme")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert json.loads(lines[0])["site"] == "Symposium demo"  # console.log(result.data)
    assert any("people.csv" in line for line in lines)  # console.log(files.data)
    size = (EXAMPLES / "storage/data/large-file.zip").stat().st_size
    assert f"{size} bytes" in lines  # console.log(`${info.size} bytes`)
    assert result.stdout == ""  # the block returns nothing
    assert (platform.var / "storage/acme/output/result.txt").read_text() == "Hello World"


def test_it_fails_the_write_of_a_basic_tenant(platform):
    result = platform("runblock", str(EXAMPLES / "seed/file-system.js"), "--tenant", "viewer", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["status"] == "failed"
    assert report["error"]["code"] == "PERMISSION_DENIED"
    assert "read-only" in report["error"]["message"]
    assert report["stats"]["calls"] == 2  # readFile, then the refused writeFile


def test_it_reads_the_block_from_stdin_and_prints_the_result(platform):
    result = platform("runblock", "-", "--tenant", "acme", "--input", '{"name": "Ada"}',
                      stdin="console.info('working');\nexport default ({ name }) => ({ greeting: `Hello ${name}` });")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"greeting": "Hello Ada"}
    assert result.stderr.strip() == "working"


def test_json_mode_prints_one_object(platform):
    result = platform("runblock", "-", "--tenant", "acme", "--json", stdin="console.log('a'); export default () => 42;")
    report = json.loads(result.stdout)
    assert set(report) == {"status", "result", "error", "logs", "stats"}
    assert report["status"] == "succeeded" and report["result"] == 42 and report["error"] is None
    assert [entry["text"] for entry in report["logs"]] == ["a"]
    assert report["stats"]["durationMs"] > 0 and report["stats"]["peakMemoryBytes"] > 0


def test_a_failing_block_exits_1_with_its_error(platform):
    result = platform("runblock", "-", "--tenant", "acme", stdin="throw new TypeError('bad input');")
    assert result.returncode == 1
    assert "TypeError" in result.stderr and "bad input" in result.stderr
    assert str(ROOT) not in result.stderr


@pytest.mark.parametrize("args,message", [
    (["runblock", "/no/such/block.js", "--tenant", "acme"], "No such file: /no/such/block.js"),
    (["runblock", "-", "--tenant", "nobody"], "No tenant 'nobody'"),
    (["runblock", "-", "--tenant", "acme", "--input", "{oops"], "--input is not valid JSON"),
    (["runblock", "-"], "the following arguments are required: --tenant"),
])
def test_usage_errors_exit_2(platform, args, message):
    result = platform(*args, stdin="export default () => 1")
    assert result.returncode == 2
    assert message in result.stderr
