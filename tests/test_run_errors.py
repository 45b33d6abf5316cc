"""A failed run's error, as the author needs it: {name, message, code, stack} with frames
in the block's own file, line and column (the platform's frames left out), a code frame
for the line, and refusals of the sandbox worded in the platform's terms. Real isolates
(Deno, locked down) against the real broker, as tests/test_runs.py runs them."""

import json

import pytest

from isolates.errors import MAX_FRAMES, MAX_STACK_CHARS, run_error

pytestmark = [pytest.mark.django_db(transaction=True)]

PLATFORM_MARKS = ("ext:", "node:", "blob:", "file:", "worker.js", "main.js", "<runtime>")


def assert_blocks_own_stack(error):
    for mark in PLATFORM_MARKS:
        assert mark not in error["stack"], (mark, error["stack"])


def test_it_reports_a_thrown_errors_name_message_code_and_frames(run_block, acme):
    code = "const x = 7;\nfunction big(n) {\n  if (n > 5) throw new TypeError('x is too big: ' + n);\n}\nbig(x);\n"
    run = run_block(acme, code)
    error = run_error(run)
    assert (error["name"], error["message"], error["code"]) == ("TypeError", "x is too big: 7", "TypeError")
    assert error["frames"] == [
        {"file": "test.js", "line": 3, "column": 20, "function": "big"},
        {"file": "test.js", "line": 5, "column": 1, "function": ""},
    ]
    assert error["stack"].startswith("TypeError: x is too big: 7\n    at big (test.js:3:20)")
    assert error["codeFrame"] == (
        "  2 | function big(n) {\n"
        "> 3 |   if (n > 5) throw new TypeError('x is too big: ' + n);\n"
        "    |                    ^"
    )
    assert_blocks_own_stack(error)
    # The live "done" event carries the same shape.
    done = next(e for e in run.events if e.get("event") == "done")
    assert done["error"]["frames"] == error["frames"] and done["error"]["name"] == "TypeError"


def test_it_leaves_the_platforms_frames_out_of_an_error_from_inside_deno(run_block, acme):
    code = "async function load() {\n  return await fetch('https://example.com/');\n}\nexport default async () => {\n  await load();\n};\n"
    error = run_error(run_block(acme, code))
    assert [f["line"] for f in error["frames"]] == [2, 5]
    assert error["frames"][0]["function"] == "load"
    assert_blocks_own_stack(error)
    assert "new Promise" not in error["stack"]


def test_a_refused_capability_call_names_the_line_that_made_it(run_block, make_tenant):
    tenant = make_tenant("basic-co", "Basic")
    code = "async function save() {\n  // the Basic profile reads only\n  await symposium.writeFile('out.txt', 'x');\n}\nexport default async () => save();\n"
    run = run_block(tenant, code)
    error = run_error(run)
    assert error["code"] == "PERMISSION_DENIED" and error["name"] == "SymposiumError"
    assert error["frames"][0] == {"file": "test.js", "line": 3, "column": 19, "function": "save"}
    assert "> 3 |   await symposium.writeFile" in error["codeFrame"]
    assert_blocks_own_stack(error)


def test_a_syntax_error_has_its_own_code_and_a_code_frame(run_block, acme):
    run = run_block(acme, "const a = 1;\nconst b = ;\n")
    error = run_error(run)
    assert run.error_code == "SYNTAX_ERROR" and error["name"] == "SyntaxError"
    assert error["message"] == "Expression expected"  # the code frame is drawn apart
    assert error["frames"] == [{"file": "test.js", "line": 2, "column": 11, "function": ""}]
    assert error["codeFrame"] == "  1 | const a = 1;\n> 2 | const b = ;\n    |           ^"
    assert error["stack"] == "SyntaxError: Expression expected\n    at test.js:2:11"


def test_a_typescript_block_reports_the_authors_lines(run_block, acme):
    code = ("interface Point {\n  x: number;\n  y: number;\n}\ntype Id = string;\n"
            "const p: Point = { x: 1, y: 2 };\nfunction f(a: number): never {\n"
            "  throw new RangeError(`bad ${a as number}`);\n}\nexport default () => f(p.x);\n")
    run = run_block(acme, code, name="points.ts")
    error = run_error(run)
    assert (error["name"], error["message"]) == ("RangeError", "bad 1")
    assert error["frames"][0] == {"file": "points.ts", "line": 8, "column": 9, "function": "f"}


def test_it_runs_typescript(run_block, acme):
    run = run_block(acme, "const n: number = 2;\nexport default (input: { a: number }): number => input.a * n;\n", input={"a": 21}, name="double.ts")
    assert run.status == "succeeded" and run.result == 42


def test_a_platform_ended_run_has_the_shape_without_frames(run_block, acme):
    from tenants.models import PolicyOverride

    PolicyOverride.objects.create(tenant=acme, setting="time_limit_seconds", value="1")
    error = run_error(run_block(acme, "while (true) {}"))
    assert error["code"] == "TIMEOUT" and error["name"] == "SymposiumError"
    assert error["frames"] == [] and error["codeFrame"] is None and error["stack"] == ""


def test_cant_flood_the_runs_record_with_a_stack(run_block, acme):
    code = ("export default () => {\n  const e = new Error('deep');\n"
            "  Object.defineProperty(e, 'stack', { value: 'Error: deep\\n' + '    at test.js:1:1\\n'.repeat(200000) });\n"
            "  throw e;\n};\n")
    run = run_block(acme, code)
    assert run.error == "deep"
    assert len(run.error_detail["stack"]) <= MAX_STACK_CHARS
    assert len(run.error_detail["frames"]) == MAX_FRAMES


# -- what the sandbox refuses, in the platform's words ---------------------------------

REFUSED = {
    "fetch": ("fetch('https://example.com/')", "symposium.network.fetch"),
    "websocket": ("new WebSocket('wss://example.com/')", "symposium.network.fetch"),
    "deno_connect": ("Deno.connect({ hostname: 'example.com', port: 80 })", "symposium.network.fetch"),
    "deno_read_file": ("Deno.readFile('/etc/passwd')", "symposium.readFile"),
    "deno_write_file": ("Deno.writeTextFile('/tmp/x', 'x')", "symposium.writeFile"),
    "deno_env": ("Deno.env.get('HOME')", "process.env"),
    "deno_command": ("new Deno.Command('/bin/sh', { args: ['-c', 'id'] }).output()", "symposium.process.execute"),
    "import_https": ("import('https://esm.sh/lodash')", "npm:NAME@VERSION"),
    "import_http": ("import('http://example.com/x.js')", "symposium.network.fetch"),
}


@pytest.mark.parametrize("attempt", list(REFUSED))
def test_cant_use_what_the_sandbox_refuses_and_is_told_what_to_use(run_block, acme, attempt):
    expression, advice = REFUSED[attempt]
    code = f"""
    export default async () => {{
      try {{ await ({expression}); return null; }}
      catch (e) {{ return {{ name: e.name, message: e.message, code: e.code ?? null }}; }}
    }};
    """
    run = run_block(acme, code)
    assert run.status == "succeeded" and run.result is not None, (run.error_code, run.error)
    seen = run.result  # the error as the block itself sees it
    assert advice in seen["message"], seen
    assert "--allow" not in json.dumps(seen) and "--no-" not in json.dumps(seen) and "flag" not in seen["message"]


def test_cant_import_a_url_statically_and_is_told_what_to_use(run_block, acme):
    run = run_block(acme, "import _ from 'https://esm.sh/lodash';\nexport default () => _;\n")
    error = run_error(run)
    assert run.status == "failed" and error["code"] == "PERMISSION_DENIED"
    assert "npm:NAME@VERSION" in error["message"] and "--allow" not in error["message"]
    assert error["frames"][0]["line"] == 1


def test_an_uncaught_refusal_is_reported_in_the_same_words(run_block, acme):
    run = run_block(acme, "\nawait fetch('https://example.com/');\n")
    assert run.error_code == "NotCapable"
    assert "symposium.network.fetch" in run.error and "--allow" not in run.error
    assert run_error(run)["frames"][0]["line"] == 2


def test_a_blocks_own_error_codes_are_its_own(run_block, acme):
    code = """
    export default () => {
      const e = new TypeError('mine');
      e.code = 'ERR_MODULE_NOT_FOUND';
      const f = new TypeError('other');
      f.code = 'E_OTHER';
      return { e: [e.code, e.message], f: [f.code, Object.keys(f)], plain: 'code' in Object.assign({}, new TypeError('x')) };
    };
    """
    run = run_block(acme, code)
    assert run.result == {"e": ["ERR_MODULE_NOT_FOUND", "mine"], "f": ["E_OTHER", ["code"]], "plain": False}
