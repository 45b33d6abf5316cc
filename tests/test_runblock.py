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


def test_json_mode_logs_every_line_of_a_burst_with_when_it_was_printed(platform):
    # 3,000 lines at once come faster than the live events go out; the record, and so
    # --json's logs, keep every one, each with its time (ms from the run's start).
    result = platform("runblock", "-", "--tenant", "acme", "--json",
                      stdin="for (let i = 0; i < 3000; i++) console.log(String(i)); export default () => 1;")
    report = json.loads(result.stdout)
    assert report["status"] == "succeeded", report["error"]
    assert [entry["text"] for entry in report["logs"]] == [str(i) for i in range(3000)]
    assert all(entry["level"] == "log" and isinstance(entry["ms"], int) and entry["ms"] >= 0 for entry in report["logs"])


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


# -- errors where they happened, TypeScript and type checks ------------------------------


def test_a_failing_block_prints_the_line_it_failed_on(platform):
    result = platform("runblock", "-", "--tenant", "acme", stdin="const a = 1;\nfunction check(n) {\n  throw new TypeError(`bad ${n}`);\n}\ncheck(a);\n")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "[TypeError]: bad 1" in lines[0]
    assert lines[1] == "stdin.js:3:9"
    assert lines[2:5] == ["  2 | function check(n) {", "> 3 |   throw new TypeError(`bad ${n}`);", "    |         ^"]
    assert lines[5:] == ["    at check (stdin.js:3:9)", "    at stdin.js:5:1"]


def test_a_syntax_error_prints_its_code_frame(platform):
    result = platform("runblock", "-", "--tenant", "acme", stdin="let x = 1;\nx = = 2;\n")
    assert result.returncode == 1
    assert "[SYNTAX_ERROR]: Expression expected" in result.stderr
    assert "stdin.js:2:5\n  1 | let x = 1;\n> 2 | x = = 2;\n    |     ^" in result.stderr


def test_json_mode_carries_the_whole_error(platform):
    result = platform("runblock", "-", "--tenant", "acme", "--json", stdin="\nnull.x;\n")
    error = json.loads(result.stdout)["error"]
    assert set(error) == {"name", "message", "code", "stack", "frames", "codeFrame"}
    assert error["name"] == "TypeError" and error["code"] == "TypeError"
    assert error["frames"] == [{"file": "stdin.js", "line": 2, "column": 6, "function": ""}]
    assert error["stack"].endswith("at stdin.js:2:6")


def test_it_runs_a_typescript_file(platform, tmp_path):
    block = tmp_path / "greet.ts"
    block.write_text("interface Input { name: string }\nexport default ({ name }: Input): string => `Hello ${name as string}`;\n")
    result = platform("runblock", str(block), "--tenant", "acme", "--input", '{"name": "Ada"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello Ada"


def test_check_reports_type_errors_with_their_locations(platform, tmp_path):
    block = tmp_path / "typo.ts"
    block.write_text('const n: number = "hello";\nfunction f(a: string): number {\n  return a.length;\n}\nf(3);\nexport default () => n;\n')
    result = platform("runblock", "--check", str(block), "--tenant", "acme")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert "typo.ts:1:7: error: Type 'string' is not assignable to type 'number'. (TS2322)" in lines
    assert "typo.ts:5:3: error: Argument of type 'number' is not assignable to parameter of type 'string'. (TS2345)" in lines
    assert "> 5 | f(3);" in lines and lines[-1] == "typo.ts: 2 type errors."
    assert str(tmp_path) not in result.stderr and "/tmp/" not in result.stderr  # no server paths


def test_check_passes_a_typed_block_that_uses_the_api(platform, tmp_path):
    block = tmp_path / "ok.ts"
    block.write_text("export default async (): Promise<number> => {\n"
                     "  const file = await symposium.readFile('data/config.json');\n"
                     "  try { return JSON.parse(file.data).n as number; }\n"
                     "  catch (e) { if (e instanceof SymposiumError) console.log(e.code); return 0; }\n};\n")
    result = platform("runblock", "--check", str(block), "--tenant", "acme", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True, "diagnostics": []}


def test_cant_fetch_an_import_while_checking_types(platform, tmp_path):
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"export const x: number = 1;")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        block = tmp_path / "remote.ts"
        block.write_text(f"import {{ x }} from 'http://127.0.0.1:{server.server_port}/mod.ts';\nexport default () => x;\n")
        result = platform("runblock", "--check", str(block), "--tenant", "acme", "--json")
    finally:
        server.shutdown()
    report = json.loads(result.stdout)
    assert result.returncode == 1 and not report["ok"]
    assert seen == []
    assert "/tmp/" not in result.stdout


def test_check_is_for_typescript_blocks(platform):
    result = platform("runblock", "--check", "-", "--tenant", "acme", stdin="export default () => 1")
    assert result.returncode == 2 and "checks TypeScript blocks" in result.stderr
