"""symposium.d.ts against the API it declares: every operation of the registry, every
convenience and local helper of the runtime, with the runtime's parameters; valid
TypeScript that Deno's checker holds a block to; served for authors' editors."""

import re
import subprocess

import deno
import pytest

from capabilities.registry import OPERATIONS
from isolates import api_types
from isolates.pool import WORKER_JS

WORKER = WORKER_JS.read_text()


def block_of(name):
    """The text of `const NAME = {` ... `};` in worker.js."""
    start = WORKER.index(f"const {name} = ")
    return WORKER[start : WORKER.index("\n};", start)]


def parameters(text):
    names = []
    for part in text.split(","):
        part = part.strip()
        if part:
            names.append((part.split("=")[0].strip(), "=" in part))
    return names


def runtime_signatures():
    """{method: [(parameter, has_default)]} of SIGNATURES, CONVENIENCES and utils."""
    found = {}
    for name, params in re.findall(r'^  "?([\w.]+)"?: \(([^)]*)\) =>', block_of("SIGNATURES"), re.M):
        found[name] = parameters(params)
    for name, params in re.findall(r'^  "([\w.]+)": \["[\w.]+", \(([^)]*)\) =>', block_of("CONVENIENCES"), re.M):
        found[name] = parameters(params)
    utils = WORKER[WORKER.index("const utils = Object.freeze({") : WORKER.index("});", WORKER.index("const utils"))]
    for name, params in re.findall(r"^  (\w+): \(([^)]*)\) =>", utils, re.M):
        found[f"utils.{name}"] = parameters(params)
    return found


def declared():
    return {entry["name"]: entry for entry in api_types.declarations()}


def test_it_declares_every_operation_and_convenience():
    names = declared()
    signatures = runtime_signatures()
    assert "canvas.drawImage" in signatures and "utils.generateId" in signatures  # the reading works
    missing = (set(OPERATIONS) | set(signatures)) - set(names)
    assert not missing, f"symposium.d.ts lacks {sorted(missing)}"
    stale = set(names) - set(OPERATIONS) - set(signatures)
    assert not stale, f"symposium.d.ts declares what the API does not have: {sorted(stale)}"


def test_it_declares_the_runtimes_parameters():
    names = declared()
    for method, params in runtime_signatures().items():
        entry = names[method]
        assert [p["name"] for p in entry["params"]] == [p for p, _ in params], method
        for (param, has_default), typed in zip(params, entry["params"]):
            if has_default:
                assert typed["optional"], f"{method}'s {param} has a default, so it is optional"
    # An operation without a signature takes its arguments as one object.
    for name in set(OPERATIONS) - set(runtime_signatures()):
        assert len(names[name]["params"]) == 1, name


def test_every_declaration_has_its_documentation_and_a_promise():
    for entry in api_types.declarations():
        assert len(entry["doc"]) > 10, entry["name"]
        # Calls resolve to envelopes (the checker holds a block to their fields, below);
        # the local helpers return at once.
        assert entry["returns"].startswith("Promise<") != entry["name"].startswith("utils."), entry["name"]


def check(tmp_path, code):
    (tmp_path / "symposium.d.ts").write_text(api_types.source())
    (tmp_path / "block.ts").write_text('/// <reference path="./symposium.d.ts" />\n' + code)
    return subprocess.run([deno.find_deno_bin(), "check", "--no-config", "--no-lock", "--quiet", "block.ts"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"NO_COLOR": "1", "DENO_DIR": str(tmp_path / "deno"), "HOME": str(tmp_path)})


def test_it_is_typescript_that_checks_a_block(tmp_path):
    good = check(tmp_path, """
const canvas = await symposium.canvas.createCanvas(200, 100);
const id: string = canvas.data.canvasId;
await symposium.canvas.draw(id, [{ type: "fillRect", x: 0, y: 0, width: 10, height: 10 }]);
const image = await symposium.canvas.exportImage(id, "png");
const bytes: Uint8Array = image.data;
const file = await symposium.readFile("data/config.json");
await symposium.kv.delete("key");
const rows = (await symposium.database.query("SELECT 1 AS one")).data.rows;
const ok: true = (await symposium.fileExists("a")).success;
console.log(ok, bytes.length, file.size, rows, process.env.TOKEN, symposium.utils.generateId());
export default () => id;
""")
    assert good.returncode == 0, good.stdout + good.stderr
    bad = check(tmp_path, 'await symposium.canvas.createCanvas("wide", 100);\nexport {};\n')
    assert bad.returncode != 0 and "not assignable to parameter of type 'number'" in bad.stdout + bad.stderr


@pytest.mark.django_db
def test_it_serves_the_declarations_for_authors_editors(client):
    response = client.get("/runner/symposium.d.ts")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/typescript")
    assert b"declare namespace symposium" in response.content
    assert response.content.decode() == api_types.source()
