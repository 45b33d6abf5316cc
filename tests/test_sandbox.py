"""Blocks run end to end: a real, locked-down isolate from the pool, against the stub
broker on 127.0.0.1. What a block author sees (results, console, errors) and what a
hostile block must not get."""

import asyncio
import base64
import json
import os
import time

import pytest

from isolates import sandbox
from isolates.pool import IsolatePool
from isolates.protocol import decode_value, encode_frame
from tests.support.stub_broker import StubBroker, run_block


@pytest.fixture
async def broker():
    async with StubBroker() as broker:
        yield broker


@pytest.fixture
async def pool(broker):
    pool = IsolatePool(broker.port, warm_size=0)
    yield pool
    await pool.shutdown()


async def run(pool, broker, code, **options):
    return await run_block(pool, broker, code, **options)


def gone(pid):
    """True when no process of the group `pid` is left (killed and reaped)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return not os.path.exists(f"/proc/{pid}")
    return False


# -- running blocks -----------------------------------------------------------------------


async def test_it_runs_a_block_and_returns_its_default_export(pool, broker):
    code = "export default function (input) { return { sum: input.a + input.b, greeting: `hi ${input.name}` }; }"
    _, done, exit = await run(pool, broker, code, input={"a": 2, "b": 40, "name": "Alice"})
    assert done == {"type": "done", "ok": True, "result": {"sum": 42, "greeting": "hi Alice"}}
    assert exit.returncode == 0 and exit.reason == "finished"


async def test_it_awaits_an_async_default_export(pool, broker):
    code = "export default async (n) => { await new Promise((r) => setTimeout(r, 20)); return n * 2; }"
    _, done, _ = await run(pool, broker, code, input=21)
    assert done["result"] == 42


async def test_it_returns_null_without_a_default_function(pool, broker):
    _, done, _ = await run(pool, broker, "console.log('side effects only'); export const answer = 42;")
    assert done == {"type": "done", "ok": True, "result": None}
    _, done, _ = await run(pool, broker, "export default 42;")
    assert done["result"] is None


async def test_it_supports_top_level_await(pool, broker):
    code = """
    const config = await symposium.readFile('config.json');
    const later = await new Promise((resolve) => setTimeout(() => resolve('later'), 10));
    export default () => ({ path: config.data.path, later });
    """
    run_, done, _ = await run(pool, broker, code)
    assert done["result"] == {"path": "config.json", "later": "later"}
    assert [call["op"] for call in run_.calls] == ["readFile"]


async def test_it_sends_started_before_the_first_statement(pool, broker):
    code = "console.log('first statement'); export default () => 1;"
    run_, done, _ = await run(pool, broker, code)
    types = [frame["type"] for frame in run_.frames]
    assert types == ["started", "log", "done"]


async def test_it_runs_the_seed_examples_with_the_envelope_fields_they_read(pool, broker):
    # The seed's own snippets, verbatim, against canned replies shaped like the handlers'.
    code = """
    const result = await symposium.readFile('data/config.json');
    console.log(result.data);
    await symposium.writeFile('output/result.txt', 'Hello World');
    const info = await symposium.getFileInfo('data/large-file.zip');
    console.log(`${info.size} bytes`);
    const exists = await symposium.fileExists('config/settings.json');
    if (exists.data) { console.log('exists'); }
    const canvas = await symposium.canvas.createCanvas(800, 600);
    console.log(`Created canvas: ${canvas.canvasId}`);
    const imageData = await symposium.canvas.exportImage(canvas.canvasId, 'png');
    console.log(`Exported ${imageData.data.length} bytes of PNG data`);
    const users = await symposium.database.query('SELECT * FROM users WHERE active = ?', [true]);
    console.log(`Found ${users.data.rows.length} active users`);
    const proc = await symposium.process.execute('ls', ['-la', '/tmp'], { cwd: '/home/user', timeout: 10000 });
    console.log('Exit code:', proc.exitCode);
    const tempPath = symposium.utils.generateTempPath('.json');
    console.log(tempPath);
    """

    def answer(op, args):
        return {
            "readFile": {"ok": True, "data": '{"theme": "dark"}'},
            "writeFile": {"ok": True, "data": {"path": args.get("path"), "size": 11}},
            "getFileInfo": {"ok": True, "data": {"size": 2048, "type": "file"}, "size": 2048},
            "fileExists": {"ok": True, "data": True},
            "canvas.createCanvas": {"ok": True, "data": {"canvasId": "c1"}, "canvasId": "c1"},
            "canvas.exportImage": {"ok": True, "data": b"\x89PNG\r\n\x1a\n1234"},
            "database.query": {"ok": True, "data": {"rows": [{"id": 1}, {"id": 2}], "rowCount": 2, "columns": ["id"]}},
            "process.execute": {"ok": True, "data": {"exitCode": 0}, "exitCode": 0, "stdout": "total 0\n", "stderr": ""},
        }[op]

    run_, done, _ = await run(pool, broker, code, answer=answer)
    assert done["ok"], done
    lines = [frame["text"] for frame in run_.logs]
    assert lines[:7] == [
        '{"theme": "dark"}',
        "2048 bytes",
        "exists",
        "Created canvas: c1",
        "Exported 12 bytes of PNG data",
        "Found 2 active users",
        "Exit code: 0",
    ]
    assert lines[7].startswith("temp/tmp_") and lines[7].endswith(".json")
    assert run_.calls[1]["args"] == {"path": "output/result.txt", "data": "Hello World"}
    assert run_.calls[-1]["args"] == {"command": "ls", "args": ["-la", "/tmp"], "cwd": "/home/user", "timeout": 10000}


async def test_it_reads_envelope_fields_nested_under_envelope(pool, broker):
    # A field named like a frame key ("type" of getFileInfo) travels under "envelope".
    code = """
    const info = await symposium.getFileInfo('report.pdf');
    export default () => ({ size: info.size, type: info.type, success: info.success, data: info.data });
    """

    def answer(op, args):
        return {"ok": True, "envelope": {"data": {"size": 10, "type": "file"}, "size": 10, "type": "file"}}

    _, done, _ = await run(pool, broker, code, answer=answer)
    assert done["result"] == {"size": 10, "type": "file", "success": True, "data": {"size": 10, "type": "file"}}


async def test_it_builds_the_documented_arguments_for_every_operation(pool, broker):
    code = """
    await symposium.readFile('a.bin', { encoding: 'binary' });
    await symposium.listDirectory('uploads');
    await symposium.deleteFile('temp/cache.tmp');
    await symposium.network.fetch('https://api.example.com/data', { method: 'POST', headers: { A: 'b' }, body: 'x', timeout: 5000 });
    await symposium.network.sendWebhook('https://hooks.example.com/x', { event: 'e' }, { retries: 2 });
    await symposium.canvas.draw('c1', [{ type: 'fillRect', x: 1, y: 2, width: 3, height: 4 }]);
    await symposium.database.transaction([{ query: 'SELECT 1', params: [] }]);
    """
    run_, done, _ = await run(pool, broker, code)
    assert done["ok"], done
    assert [(c["op"], c["args"]) for c in run_.calls] == [
        ("readFile", {"path": "a.bin", "encoding": "binary"}),
        ("listDirectory", {"path": "uploads"}),
        ("deleteFile", {"path": "temp/cache.tmp"}),
        ("network.fetch", {"url": "https://api.example.com/data", "method": "POST", "headers": {"A": "b"}, "body": "x", "timeout": 5000}),
        ("network.sendWebhook", {"url": "https://hooks.example.com/x", "payload": {"event": "e"}, "retries": 2}),
        ("canvas.draw", {"canvasId": "c1", "ops": [{"type": "fillRect", "x": 1, "y": 2, "width": 3, "height": 4}]}),
        ("database.transaction", {"steps": [{"query": "SELECT 1", "params": []}]}),
    ]


async def test_it_builds_the_api_from_the_operations_the_broker_names(pool, broker):
    # The runtime knows no operation of its own: a broker that serves two gets a block
    # with two methods (and the utils), each naming the capability the broker gave it; an
    # operation the runtime has no signature for takes its arguments as one object.
    operations = {"readFile": "files", "weather.forecast": "weather"}
    code = """
    export default async () => {
      const shape = Object.fromEntries(Object.entries(symposium).map(([k, v]) => [k, typeof v === 'function' ? 'function' : Object.keys(v)]));
      let refused;
      try { await symposium.weather.forecast({ city: 'Oslo' }); } catch (e) { refused = [e.code, e.capability]; }
      return { shape, refused, fetch: typeof symposium.network };
    };
    """
    answer = lambda op, args: {"ok": False, "error": {"code": "PERMISSION_DENIED", "message": "no"}}  # noqa: E731
    run_, done, _ = await run(pool, broker, code, operations=operations, answer=answer)
    assert done["ok"], done
    assert done["result"]["shape"] == {"readFile": "function", "weather": ["forecast"],
                                       "utils": ["generateTempPath", "getTimestamp", "generateId"]}
    assert done["result"]["refused"] == ["PERMISSION_DENIED", "weather"]
    assert done["result"]["fetch"] == "undefined"
    assert [(c["op"], c["args"]) for c in run_.calls] == [("weather.forecast", {"city": "Oslo"})]


@pytest.mark.parametrize("operations", [None, ["readFile"], {"__proto__": "files"}, {"a.b.c": "files"}, {"readFile": 1}])
async def test_it_refuses_a_start_frame_without_a_sound_operation_table(pool, broker, operations):
    _, done, exit = await run(pool, broker, "export default () => 1", operations=operations)
    assert done is None
    assert exit.returncode == 11 and exit.reason == "the assignment or start frame was malformed"


async def test_it_offers_the_local_utils_synchronously(pool, broker):
    code = """
    export default () => {
      const u = symposium.utils;
      return { temp: u.generateTempPath('.json'), noDot: u.generateTempPath('csv'), ts: u.getTimestamp(), id: u.generateId(), id2: u.generateId() };
    };
    """
    before = int(time.time() * 1000)
    _, done, _ = await run(pool, broker, code)
    result = done["result"]
    assert result["temp"].startswith("temp/tmp_") and result["temp"].endswith(".json")
    assert result["noDot"].endswith(".csv")
    assert before <= result["ts"] <= int(time.time() * 1000)
    assert len(result["id"]) == 12 and result["id"].isalnum() and result["id"] != result["id2"]


# -- console ------------------------------------------------------------------------------


async def test_it_captures_the_console_formatted_like_deno(pool, broker):
    code = """
    console.log('hello %s, you are %d', 'Alice', 42, { nested: { list: [1, 2] } });
    console.info('info'); console.warn('warn'); console.error('error'); console.debug('debug');
    console.log(new Map([['a', 1]]), [1, 'two'], null, undefined);
    console.group('group'); console.log('inside'); console.groupEnd(); console.log('outside');
    console.count(); console.count();
    console.assert(1 === 2, 'maths');
    """
    run_, done, _ = await run(pool, broker, code)
    assert done["ok"]
    assert [(f["level"], f["text"]) for f in run_.logs] == [
        ("log", "hello Alice, you are 42 { nested: { list: [ 1, 2 ] } }"),
        ("info", "info"),
        ("warn", "warn"),
        ("error", "error"),
        ("debug", "debug"),
        ("log", 'Map(1) { "a" => 1 } [ 1, "two" ] null undefined'),
        ("log", "group"),
        ("log", "  inside"),
        ("log", "outside"),
        ("info", "default: 1"),
        ("info", "default: 2"),
        ("error", "Assertion failed: maths"),
    ]
    assert all(abs(f["t"] - time.time() * 1000) < 60_000 for f in run_.logs)


async def test_cant_flood_the_console_past_its_cap(pool, broker):
    # 100 MB of console output: the broker gets the cap's worth, one line saying the rest
    # is gone, and nothing more; the block itself finishes normally and quickly.
    code = """
    const line = 'x'.repeat(1023);
    for (let i = 0; i < 100 * 1024; i++) console.log(line);
    console.log('y'.repeat(10 * 1024 * 1024));
    export default () => 'survived';
    """
    started = time.monotonic()
    run_, done, _ = await run(pool, broker, code, console_cap=64 * 1024, wall_seconds=60)
    assert done["result"] == "survived"
    assert time.monotonic() - started < 30
    *kept, notice = run_.logs
    # Each line counts its framing too (32 bytes), besides its text.
    assert sum(len(f["text"].encode()) + 32 for f in kept) == 64 * 1024
    assert notice["text"] == "[console output truncated: the limit of 65536 bytes was reached; later output is discarded]"
    assert notice["level"] == "warn"


async def test_cant_bypass_the_console_cap_by_posting_log_frames(pool, broker):
    # The worker's postMessage reaches the trusted bootstrap directly; it caps again.
    code = """
    for (let i = 0; i < 1000; i++) self.postMessage({ type: 'log', level: 'log', text: 'z'.repeat(1000), t: 0 });
    """
    run_, done, _ = await run(pool, broker, code, console_cap=10_000)
    assert done["ok"]
    *kept, notice = run_.logs
    assert sum(len(f["text"]) + 32 for f in kept) == 10_000
    assert notice["text"].startswith("[console output truncated")


# -- errors -------------------------------------------------------------------------------


async def test_it_reports_an_uncaught_error_with_the_blocks_name_in_the_stack(pool, broker):
    code = "function inner() {\n  throw new TypeError('bad input');\n}\nexport default () => inner();\n"
    _, done, exit = await run(pool, broker, code, name="report.js")
    error = done["error"]
    assert done["ok"] is False and error["name"] == "TypeError" and error["message"] == "bad input"
    assert "at inner (report.js:2:9)" in error["stack"]
    assert "/work" not in error["stack"] and "file:" not in error["stack"] and "blob:" not in error["stack"]
    assert exit.returncode == 0


async def test_it_reports_a_syntax_error_by_the_blocks_name(pool, broker):
    _, done, _ = await run(pool, broker, "export default () => {\n  return 1 +;\n}\n", name="broken.js")
    error = done["error"]
    assert error["name"] == "SyntaxError" and error["code"] == "SYNTAX_ERROR"
    # The sentence is the message; the location is the stack's one frame.
    assert error["message"] == "Expression expected"
    assert error["stack"] == "SyntaxError: Expression expected\n    at broken.js:2:13" and "blob:" not in error["stack"] + error["message"]


async def test_it_keeps_only_the_file_name_of_the_block(pool, broker):
    _, done, _ = await run(pool, broker, "throw new Error('x')", name="/srv/tenants/acme/../secret/blocks/chart.js")
    assert "chart.js:1" in done["error"]["stack"] and "/srv" not in done["error"]["stack"]


async def test_it_ends_the_run_on_an_unhandled_rejection(pool, broker):
    code = "Promise.reject(new RangeError('nobody caught me')); await new Promise((r) => setTimeout(r, 1000));"
    _, done, _ = await run(pool, broker, code)
    assert done["ok"] is False
    assert (done["error"]["name"], done["error"]["message"]) == ("RangeError", "nobody caught me")


async def test_it_ends_the_run_on_an_error_thrown_in_a_timer(pool, broker):
    code = "setTimeout(() => { throw new Error('in a timer'); }, 5); export default () => new Promise(() => {});"
    _, done, _ = await run(pool, broker, code)
    assert done["ok"] is False and done["error"]["message"] == "in a timer"


async def test_it_ends_the_run_at_once_when_the_block_closes_its_worker(pool, broker):
    started = time.monotonic()
    _, done, _ = await run(pool, broker, "self.close(); await new Promise(() => {});", wall_seconds=10)
    assert done["error"]["message"] == "The block called close(): the run ended without a result"
    assert time.monotonic() - started < 5


async def test_it_reports_a_thrown_non_error(pool, broker):
    _, done, _ = await run(pool, broker, "export default () => { throw { reason: 'plain object' }; }")
    assert done["error"] == {"name": "Error", "message": "Uncaught { reason: \"plain object\" }"}


async def test_it_refuses_a_result_that_is_not_json(pool, broker):
    _, done, _ = await run(pool, broker, "export default () => { const a = {}; a.self = a; return a; }")
    assert done["ok"] is False and done["error"]["name"] == "TypeError"
    assert "The block's result.self refers back to itself" in done["error"]["message"]


# -- the proxy API's errors -----------------------------------------------------------------


async def test_it_rejects_with_a_symposium_error_carrying_the_brokers_fields(pool, broker):
    code = """
    export default async () => {
      try {
        await symposium.network.fetch('https://example.com/');
      } catch (e) {
        return { name: e.name, code: e.code, message: e.message, capability: e.capability, retryAfter: e.retryAfter,
                 isError: e instanceof Error, isSymposiumError: e instanceof SymposiumError, stack: e.stack };
      }
    };
    """

    def answer(op, args):
        return {"ok": False, "error": {"code": "RATE_LIMITED", "message": "Network calls are limited to 10 per minute.", "retryAfter": 12}}

    _, done, _ = await run(pool, broker, code, answer=answer, name="fetcher.js")
    result = done["result"]
    assert {k: result[k] for k in ("name", "code", "message", "capability", "retryAfter", "isError", "isSymposiumError")} == {
        "name": "SymposiumError",
        "code": "RATE_LIMITED",
        "message": "Network calls are limited to 10 per minute.",
        "capability": "network",
        "retryAfter": 12,
        "isError": True,
        "isSymposiumError": True,
    }
    assert "fetcher.js" in result["stack"]


async def test_it_fails_the_run_with_the_symposium_error_of_a_top_level_call(pool, broker):
    # A refused call awaited at the module's top level ends the run with that very error
    # (Deno would swap an error without stack frames for a generic one here).
    code = "console.log('before');\nawait symposium.writeFile('output/result.txt', 'Hello World');\n"

    def answer(op, args):
        return {"ok": False, "error": {"code": "PERMISSION_DENIED", "message": "This tenant's profile does not allow writing files."}}

    _, done, _ = await run(pool, broker, code, answer=answer, name="seed.js")
    assert done["error"] == {
        "name": "SymposiumError",
        "message": "This tenant's profile does not allow writing files.",
        "code": "PERMISSION_DENIED",
        "stack": "SymposiumError: This tenant's profile does not allow writing files.\n    at seed.js:2:17",
    }


async def test_it_times_out_a_call_that_gets_no_reply(pool, broker):
    code = """
    export default async () => {
      const start = Date.now();
      try { await symposium.readFile('never.txt'); } catch (e) { return { code: e.code, message: e.message, waited: Date.now() - start }; }
    };
    """
    _, done, _ = await run(pool, broker, code, answer=lambda op, args: None, call_timeout_ms=300)
    result = done["result"]
    assert result["code"] == "TIMEOUT"
    assert result["message"] == "symposium.readFile got no reply within 300 ms"
    assert 290 <= result["waited"] < 3000


async def test_it_contains_100k_calls_made_without_awaiting(pool, broker):
    # The block fires 100,000 calls at once. No more than maxInFlight reach the broker at
    # a time; the rest fail at once with RATE_LIMITED and a message that says why.
    code = """
    export default async () => {
      let message;
      const outcomes = await Promise.all(
        Array.from({ length: 100000 }, (_, i) => symposium.fileExists(`f${i}`).then(() => 'ok', (e) => { message = e.message; return e.code; })),
      );
      const counts = { message };
      for (const o of outcomes) counts[o] = (counts[o] ?? 0) + 1;
      return counts;
    };
    """

    async def slow_answer(op, args):
        await asyncio.sleep(0.05)
        return {"ok": True, "data": True}

    started = time.monotonic()
    # 100,000 promises and their rejections need about 100 MB of heap in any JS engine:
    # the Interactive profile's 128 MB, not Basic's 64.
    run_, done, _ = await run(pool, broker, code, answer=slow_answer, max_in_flight=8, memory_mb=128, wall_seconds=60)
    counts = done["result"]
    assert counts == {
        "ok": 8,
        "RATE_LIMITED": 99992,
        "message": "symposium.fileExists refused: 8 capability calls are already in flight; await some before making more",
    }
    assert len(run_.calls) == 8 and run_.max_in_flight_seen <= 8
    assert time.monotonic() - started < 30


async def test_cant_exceed_max_in_flight_by_posting_call_frames(pool, broker):
    # Bypassing the proxy API (posting call frames straight to the bootstrap) does not
    # get more calls to the broker either.
    code = """
    for (let i = 1; i <= 50; i++) self.postMessage({ type: 'call', id: 1e6 + i, op: 'readFile', args: { path: 'x' } });
    await new Promise((r) => setTimeout(r, 300));
    """
    run_, done, _ = await run(pool, broker, code, answer=lambda op, args: None, max_in_flight=4)
    assert done["ok"]
    assert len(run_.calls) == 4


async def test_it_refuses_arguments_larger_than_the_brokers_frame_limit(pool, broker):
    # The broker may announce its frame limit in the start frame (maxFrameBytes); the
    # isolate then refuses a larger call itself instead of having the connection dropped.
    code = """
    export default async () => {
      try { await symposium.writeFile('big.txt', 'x'.repeat(200000)); }
      catch (e) { return `${e.code}: ${e.message}`; }
    };
    """
    run_, done, _ = await run(pool, broker, code, maxFrameBytes=100_000)
    assert done["result"].startswith("INVALID_ARGUMENT: symposium.writeFile: the arguments are too large (")
    assert done["result"].endswith("bytes encoded; the limit is 100000)")
    assert run_.calls == []


async def test_it_rejects_arguments_that_cannot_be_sent(pool, broker):
    code = """
    const codeOf = (p) => p.then(() => 'sent', (e) => `${e.code}: ${e.message}`);
    const cyclic = {}; cyclic.me = cyclic;
    export default async () => [
      await codeOf(symposium.writeFile('a.txt', () => 1)),
      await codeOf(symposium.database.query('SELECT ?', [Symbol('s')])),
      await codeOf(symposium.database.query('SELECT ?', [10n])),
      await codeOf(symposium.network.sendWebhook('https://h.example/', cyclic)),
    ];
    """
    run_, done, _ = await run(pool, broker, code)
    assert done["result"] == [
        "INVALID_ARGUMENT: symposium.writeFile: arguments.data is a function; only JSON values and Uint8Array can be sent",
        "INVALID_ARGUMENT: symposium.database.query: arguments.params[0] is a symbol; only JSON values and Uint8Array can be sent",
        "INVALID_ARGUMENT: symposium.database.query: arguments.params[0] is a BigInt; convert it to a number or string first",
        "INVALID_ARGUMENT: symposium.network.sendWebhook: arguments.payload.me refers back to itself (a cycle); it cannot be sent as JSON",
    ]
    assert run_.calls == []


async def test_it_round_trips_binary_data(pool, broker):
    code = """
    export default async () => {
      const all = new Uint8Array(256).map((_, i) => i);
      await symposium.writeFile('all.bin', all);
      const back = await symposium.readFile('image.png', { encoding: 'binary' });
      return { isUint8Array: back.data instanceof Uint8Array, length: back.data.length, first: back.data[0], copy: back.data, buffer: all.buffer };
    };
    """
    png = bytes(range(255, -1, -1)) * 4

    def answer(op, args):
        return {"ok": True, "data": args.get("data", png) if op == "writeFile" else png}

    run_, done, _ = await run(pool, broker, code, answer=answer)
    assert run_.calls[0]["args"]["data"] == bytes(range(256))
    assert done["result"] == {"isUint8Array": True, "length": 1024, "first": 255, "copy": png, "buffer": bytes(range(256))}


async def test_it_passes_binary_input_as_a_uint8array(pool, broker):
    code = "export default (input) => ({ isBytes: input.blob instanceof Uint8Array, sum: input.blob.reduce((a, b) => a + b, 0) });"
    _, done, _ = await run(pool, broker, code, input={"blob": b"\x01\x02\x03"})
    assert done["result"] == {"isBytes": True, "sum": 6}


# -- process.env ----------------------------------------------------------------------------


async def test_it_gives_process_env_the_tenants_secrets_only(pool, broker):
    code = """
    export default () => {
      let assigned = 'no error';
      try { process.env.API_KEY = 'changed'; } catch (e) { assigned = e.name; }
      return { env: { ...process.env }, keys: Object.keys(process), frozen: Object.isFrozen(process.env), assigned, after: process.env.API_KEY };
    };
    """
    secrets = {"API_KEY": "k-123", "WEBHOOK_URL": "https://hooks.example.com/x"}
    _, done, _ = await run(pool, broker, code, env=secrets)
    assert done["result"] == {"env": secrets, "keys": ["env"], "frozen": True, "assigned": "TypeError", "after": "k-123"}


async def test_it_gives_an_empty_process_env_without_secrets(pool, broker):
    _, done, _ = await run(pool, broker, "export default () => ({ ...process.env })")
    assert done["result"] == {}


# -- containment through Deno ---------------------------------------------------------------


def capture(expression):
    """A block that returns what `expression` threw (or returned)."""
    return f"""
    export default async () => {{
      try {{ return {{ returned: await ({expression}) }}; }}
      catch (e) {{ return {{ name: e.name, message: e.message }}; }}
    }};
    """


async def test_cant_read_etc_passwd(pool, broker):
    _, done, _ = await run(pool, broker, capture("Deno.readTextFile('/etc/passwd')"))
    assert done["result"]["name"] == "NotCapable"
    assert done["result"]["message"].startswith('A block cannot read the server\'s files ("/etc/passwd").')


async def test_cant_read_proc_self_environ(pool, broker):
    _, done, _ = await run(pool, broker, capture("Deno.readTextFile('/proc/self/environ')"))
    assert done["result"]["name"] == "NotCapable"
    assert done["result"]["message"].startswith('A block cannot read the server\'s files ("/proc/self/environ").')


async def test_cant_read_env(pool, broker):
    _, done, _ = await run(pool, broker, capture("Deno.env.toObject()"))
    assert done["result"] == {"name": "NotCapable", "message": "A block cannot read the server's environment. The tenant's secrets are in process.env."}
    _, done, _ = await run(pool, broker, capture("Deno.env.get('HOME')"))
    assert done["result"]["name"] == "NotCapable"


async def test_cant_run_commands(pool, broker):
    _, done, _ = await run(pool, broker, capture("new Deno.Command('/bin/sh', { args: ['-c', 'id'] }).output()"))
    assert done["result"]["name"] == "NotCapable"
    assert done["result"]["message"].startswith('A block cannot start programs itself ("/bin/sh").')


async def test_cant_fetch_loopback(pool, broker):
    # A real server on 127.0.0.1, and the broker's own port: neither is reachable with
    # Deno's fetch, and the server never sees a connection.
    connections = []

    async def handle(reader, writer):
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, done, _ = await run(pool, broker, capture(f"fetch('http://127.0.0.1:{port}/')"))
        assert done["result"]["name"] == "NotCapable"
        assert done["result"]["message"].startswith(f'A block cannot open network connections itself ("127.0.0.1:{port}").')
        _, done, _ = await run(pool, broker, capture(f"fetch('http://127.0.0.1:{broker.port}/')"))
        assert done["result"]["name"] == "NotCapable"
        _, done, _ = await run(pool, broker, capture(f"new Promise((ok, fail) => {{ const ws = new WebSocket('ws://127.0.0.1:{broker.port}/'); ws.onopen = ok; ws.onerror = fail; }})"))
        assert done["result"]["name"] == "NotCapable"
    finally:
        server.close()
        await server.wait_closed()
    assert connections == []


async def test_cant_import_remote_or_local_modules(pool, broker):
    _, done, _ = await run(pool, broker, capture("import('https://esm.sh/lodash')"))
    assert done["result"]["name"] in ("NotCapable", "TypeError")
    _, done, _ = await run(pool, broker, capture("import('file:///etc/passwd')"))
    assert done["result"]["name"] in ("NotCapable", "TypeError")


async def test_cant_learn_server_paths(pool, broker):
    code = """
    import nodeProcess from 'node:process';
    export default () => {
      const attempt = (f) => { try { return f(); } catch (e) { return e.name; } };
      return { execPath: attempt(() => Deno.execPath()), nodeExecPath: nodeProcess.execPath, cwd: attempt(() => Deno.cwd()),
               location: String(location.href).slice(0, 10), meta: import.meta.url.slice(0, 10),
               mainModule: attempt(() => Deno.mainModule) ?? null, stdout: attempt(() => Deno.stdout) };
    };
    """
    _, done, _ = await run(pool, broker, code)
    assert done["result"] == {
        "execPath": "/usr/local/bin/deno",
        "nodeExecPath": "/usr/local/bin/deno",
        "cwd": "/",
        "location": "blob:null/",
        "meta": "blob:null/",
        "mainModule": None,
        "stdout": "NotCapable",
    }


async def test_it_keeps_node_builtins_usable_and_powerless(pool, broker):
    code = """
    import { Buffer } from 'node:buffer';
    import path from 'node:path';
    import fs from 'node:fs';
    import process from 'node:process';
    export default () => {
      const attempt = (f) => { try { return f(); } catch (e) { return e.code ?? e.name; } };
      return { base64: Buffer.from('hi').toString('base64'), joined: path.join('a', 'b'),
               read: attempt(() => fs.readFileSync('/etc/passwd', 'utf8')), env: attempt(() => Object.keys(process.env)) };
    };
    """
    _, done, _ = await run(pool, broker, code)
    assert done["ok"], done
    assert done["result"]["base64"] == "aGk=" and done["result"]["joined"] == "a/b"
    assert done["result"]["read"] == "NotCapable"
    assert done["result"]["env"] == "NotCapable"  # node:process is Deno's; the global `process` is ours


async def test_cant_start_nested_workers(pool, broker):
    _, done, _ = await run(pool, broker, capture("new Worker('data:text/javascript,1', { type: 'module' })"))
    assert done["result"] == {"name": "NotCapable", "message": "new Worker() is not available to content blocks"}
    # node:worker_threads reaches Deno's Worker by another way: the second V8 isolate
    # cannot reserve its code range under RLIMIT_DATA, and the run ends, saying why.
    code = "import { Worker } from 'node:worker_threads'; new Worker('1', { eval: true }); await new Promise((r) => setTimeout(r, 1000));"
    _, done, exit = await run(pool, broker, code)
    assert done is None and exit.memory_limit_hit
    assert exit.reason == "the block tried to start a nested worker, which its memory limit does not allow"


async def test_cant_reach_the_run_token(pool, broker):
    # The token that binds the connection to this run stays in the trusted bootstrap, a
    # separate V8 isolate; nothing the block's worker can read holds it.
    code = """
    export default async () => {
      const seen = [];
      const attempt = (f) => { try { seen.push(String(f())); } catch (e) { seen.push(e.name); } };
      attempt(() => JSON.stringify(Deno.args));
      attempt(() => self.name);
      attempt(() => location.href);
      attempt(() => Deno.stdin.readable);
      attempt(() => JSON.stringify(Object.getOwnPropertyNames(globalThis).map((k) => typeof globalThis[k] === 'string' ? globalThis[k] : k)));
      return seen;
    };
    """
    run_, done, _ = await run(pool, broker, code)
    assert done["ok"]
    assert not any(run_.token in value for value in done["result"])
    assert "NotCapable" in done["result"]


# -- limits -------------------------------------------------------------------------------


async def test_cant_loop_forever_past_the_wall_clock(pool, broker):
    started = time.monotonic()
    run_, done, exit = await run(pool, broker, "while (true) {}", wall_seconds=1)
    assert done is None
    assert exit.killed and exit.signal_name == "SIGKILL" and exit.reason == "killed by the platform"
    assert 1 <= time.monotonic() - started < 5
    assert gone(run_.isolate.pid)


async def test_cant_exceed_the_heap_limit(pool, broker):
    code = "const keep = []; while (true) keep.push({ n: Math.random(), s: 'v' + Math.random() });"
    _, done, exit = await run(pool, broker, code, memory_mb=64, wall_seconds=30)
    assert done is None
    assert exit.heap_limit_hit and exit.out_of_memory
    assert exit.reason == "the block ran out of memory: the JavaScript heap limit of 64 MB was reached"
    # Heap, young generation and the runtime itself, but nowhere near unbounded.
    assert exit.peak_rss_bytes < 200 * 1024 * 1024


async def test_cant_exceed_memory_with_array_buffers_outside_the_heap(pool, broker):
    # ArrayBuffers live outside V8's heap limit; RLIMIT_DATA stops them. The block sees
    # an ordinary RangeError (or, when not even its answer fits any more, the isolate ends
    # out of memory), and it never held more than the heap's budget and the runtime's
    # headroom outside the heap.
    code = """
    const keep = [];
    export default () => {
      try { while (true) { const b = new Uint8Array(16 << 20); b.fill(1); keep.push(b); } }
      catch (e) { return { name: e.name, message: e.message, heldMB: keep.length * 16 }; }
    };
    """
    _, done, exit = await run(pool, broker, code, memory_mb=64, wall_seconds=30)
    if done is None:
        assert exit.out_of_memory, exit.reason
    else:
        result = done["result"]
        assert result["name"] == "RangeError" and result["message"] == "Array buffer allocation failed"
        assert 48 <= result["heldMB"] <= sandbox.heap_budget_mb(64) + sandbox.RUNTIME_DATA_MB
    assert exit.peak_rss_bytes < 240 * 1024 * 1024


async def test_cant_keep_the_cpu_past_its_limit(pool, broker):
    _, done, exit = await run(pool, broker, "while (true) {}", cpu_seconds=1, wall_seconds=20)
    assert done is None
    assert exit.cpu_limit_hit and exit.signal_name == "SIGXCPU"
    assert exit.reason == "the block used up its CPU time limit of 1 s"


async def test_it_exits_at_once_on_stop(pool, broker):
    run_ = broker.add_run("await new Promise(() => {});")
    isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
    await isolate.assign(broker.url, run_.token)
    while run_.started_at is None:
        await asyncio.sleep(0.01)
    run_.stop("Stopped by the user.")
    exit = await asyncio.wait_for(isolate.wait(), 5)
    assert exit.returncode == 13 and exit.reason == "stopped by the broker"


async def test_it_exits_when_the_broker_goes_away(pool, broker):
    run_ = broker.add_run("await new Promise(() => {});")
    isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
    await isolate.assign(broker.url, run_.token)
    while run_.started_at is None:
        await asyncio.sleep(0.01)
    run_.protocol.abort()
    exit = await asyncio.wait_for(isolate.wait(), 5)
    assert exit.returncode == 12


async def test_cant_join_a_run_with_an_unknown_token(pool, broker):
    isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
    await isolate.assign(broker.url, "not-a-token")
    exit = await asyncio.wait_for(isolate.wait(), 5)
    assert exit.returncode == 12 and broker.refused == 1


def test_the_stub_broker_encodes_binary_as_documented():
    # The stub broker reads and writes frames with isolates.protocol, as the broker does.
    encoded = json.loads(encode_frame({"a": [b"\x00\xff"]}))
    assert encoded == {"a": [{"$bytes": base64.b64encode(b"\x00\xff").decode()}]}
    assert decode_value(encoded) == {"a": [b"\x00\xff"]}


async def test_cant_resolve_names_from_a_block(pool, broker):
    """Deno.resolveDns and node:dns (named imports, the module object, require, the
    promises API, a Resolver pointed at a server of the test's own) all refuse, plainly,
    and no query reaches the test's DNS server."""
    queries = []

    class Listener(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            queries.append(data)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Listener, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    code = f"""
    import {{ lookup, Resolver, promises }} from 'node:dns';
    import dnsPromises from 'node:dns/promises';
    import {{ createRequire }} from 'node:module';
    const attempt = async (f) => {{
      try {{ await f(); return 'allowed'; }} catch (e) {{ return `${{e.name}}: ${{e.message}}`; }}
    }};
    export default async () => {{
      const dns = await import('node:dns');
      const required = createRequire('file:///')('dns');
      return {{
        resolveDns: await attempt(() => Deno.resolveDns('example.com', 'A', {{ nameServer: {{ ipAddr: '127.0.0.1', port: {port} }} }})),
        lookup: await attempt(() => new Promise((ok, fail) => lookup('example.com', (e, a) => e ? fail(e) : ok(a)))),
        resolver: await attempt(() => {{ const r = new Resolver(); r.setServers(['127.0.0.1:{port}']); return new Promise((ok, fail) => r.resolve4('example.com', (e, a) => e ? fail(e) : ok(a))); }}),
        promises: await attempt(() => promises.resolve4('example.com')),
        dnsPromises: await attempt(() => dnsPromises.lookup('example.com')),
        dynamic: await attempt(() => dns.default.lookup('example.com', () => {{}})),
        required: await attempt(() => new Promise((ok, fail) => required.lookup('example.com', (e, a) => e ? fail(e) : ok(a)))),
        requiredResolver: await attempt(() => {{ const r = new required.Resolver(); r.setServers(['127.0.0.1:{port}']); return new Promise((ok, fail) => r.resolve4('example.com', (e, a) => e ? fail(e) : ok(a))); }}),
      }};
    }};
    """
    try:
        _, done, _ = await run(pool, broker, code)
        await asyncio.sleep(0.2)
    finally:
        transport.close()
    assert done["ok"], done
    for attempt, outcome in done["result"].items():
        if attempt.startswith("required"):
            # Through require() the Worker's missing net permission refuses (the runtime
            # does not load node's module system in every isolate to reword it: that
            # costs each isolate memory a 64 MB run needs).
            assert outcome != "allowed" and ("EPERM" in outcome or "NotCapable" in outcome), (attempt, outcome)
        else:
            assert outcome.startswith("NotCapable: ") and "a block resolves no names" in outcome, (attempt, outcome)
        assert "10." not in outcome and ":53" not in outcome  # the server's resolver is not named
    assert queries == []
