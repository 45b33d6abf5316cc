"""Type checks of TypeScript blocks, when their author asks for one (`runblock --check`,
the runner's "Check types" button): `deno check` on the block's source, against the
declarations of the platform's API.

A run never waits on this: Deno strips a TypeScript block's types and runs it, as a
browser-side bundler would. A check is the compiler's opinion, asked for.

The checker is Deno's TypeScript compiler working on text the author wrote, so it runs
as an isolate does: under isolates/sandbox.py (no capability, Landlock with read access
to the check's own folder only, no network but a TCP port nothing listens on, the
seccomp filter, an empty environment), with `--no-remote --no-npm --no-config`, so that
an `import` in the block is reported, never fetched. Its folder is a fresh temporary one
holding the block and the declarations, removed afterwards.
"""

import asyncio
import os
import re
import signal
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import deno

from isolates.errors import block_file_name

ISOLATES_DIR = Path(__file__).resolve().parent
SANDBOX = ISOLATES_DIR / "sandbox.py"
MINIMAL_DECLARATIONS = ISOLATES_DIR / "runtime" / "symposium-minimal.d.ts"
# The full declarations of the API, where the platform ships them (the runner serves the
# file to authors' editors); the first that exists is used, else the minimal ones.
FULL_DECLARATIONS = (
    ISOLATES_DIR.parent / "console" / "static" / "symposium.d.ts",
    ISOLATES_DIR.parent / "console" / "static" / "runner" / "symposium.d.ts",
)

# What one check may use. The compiler is not a block but it reads a block's text, so it
# gets bounds of its own.
CHECK_LIMITS = {
    # RLIMIT_DATA of the checker: TypeScript's compiler with Deno's libraries loaded
    # reserves well over 512 MB of address space (it fails at 512), and peaks near 200 MB
    # resident on a small block.
    "memory_mb": 1024,
    # CPU seconds: a small block checks in 2-4 s of CPU; 60 s bounds a pathological type.
    "cpu_seconds": 60,
    # Wall clock, past which the checker is killed: on a busy machine a check waits for
    # CPU too.
    "wall_seconds": 90,
    # Checks at once in one server process: each holds a compiler's memory. One tenant
    # has at most one check going, so that no tenant takes every slot.
    "concurrent": 2,
    # Diagnostics reported: the first ones are the ones to fix.
    "max_diagnostics": 100,
    # The checker's output read (it repeats each faulty line of the block).
    "max_output_bytes": 1024 * 1024,
}
# The port the checker's Landlock ruleset would let it connect to: nothing listens on
# port 1, so the checker has no network at all.
NO_NETWORK_PORT = 1

# Slots of this process; threads (Django's sync views) and event loops (runblock) share
# them, so they are a plain lock and counts, and a check never waits for one.
_slots_lock = threading.Lock()
_checking = {"count": 0, "owners": set()}


class TypeCheckError(Exception):
    """A check that could not be made: BUSY (too many at once), TIMEOUT, INVALID_ARGUMENT
    (not a TypeScript block), INTERNAL (the checker failed)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def default_declarations():
    for path in FULL_DECLARATIONS:
        if path.is_file():
            return path
    return MINIMAL_DECLARATIONS


def is_typescript(name):
    return bool(re.search(r"\.m?ts$", str(name or "")))


# "TS2322 [ERROR]: Type 'string' is not assignable to type 'number'." then the code line,
# the caret and "    at file:///tmp/check-x/block.ts:1:7".
DIAGNOSTIC_HEAD = re.compile(r"^(TS\d+) \[(ERROR|WARN)\]: (.*)$")
DIAGNOSTIC_AT = re.compile(r"^\s+at file://(/\S+?):(\d+):(\d+)\s*$")


def parse_diagnostics(output, folder, names):
    """The diagnostics in `deno check`'s output, with paths in `folder` shown by their
    file names (`names`: path -> name); a diagnostic elsewhere is named only by its file."""
    diagnostics = []
    current = None
    for line in output.splitlines():
        head = DIAGNOSTIC_HEAD.match(line)
        if head:
            current = {"file": None, "line": None, "column": None, "code": head[1], "message": head[3].strip(),
                       "severity": "error" if head[2] == "ERROR" else "warning"}
            diagnostics.append(current)
            continue
        at = DIAGNOSTIC_AT.match(line)
        if at and current is not None and current["file"] is None:
            path = at[1]
            current["file"] = names.get(path) or Path(path).name
            current["line"], current["column"] = int(at[2]), int(at[3])
        elif line.startswith("error: ") and not line.startswith("error: Type checking failed"):
            # Deno's own error (an import it would not resolve, say), with the folder's
            # path replaced by nothing: it is the checker's, not the author's.
            diagnostics.append({"file": None, "line": None, "column": None, "code": "", "severity": "error",
                                "message": line[len("error: "):].replace(f"file://{folder}/", "").replace(f"{folder}/", "")})
            current = None
    return diagnostics[: CHECK_LIMITS["max_diagnostics"]]


@contextmanager
def check_slot(owner):
    """One of this process's check slots for `owner` (a tenant), or TypeCheckError BUSY."""
    with _slots_lock:
        if owner is not None and owner in _checking["owners"]:
            raise TypeCheckError("BUSY", "A type check of this tenant is already going; try again when it ends.")
        if _checking["count"] >= CHECK_LIMITS["concurrent"]:
            raise TypeCheckError("BUSY", "The server is checking other blocks' types; try again in a few seconds.")
        _checking["count"] += 1
        if owner is not None:
            _checking["owners"].add(owner)
    try:
        yield
    finally:
        with _slots_lock:
            _checking["count"] -= 1
            _checking["owners"].discard(owner)


async def check_types(code, name, declarations=None, owner=None):
    """Check a TypeScript block against `declarations` (a .d.ts file; the platform's by
    default). Returns {"ok", "diagnostics": [{file, line, column, code, message,
    severity}]}; raises TypeCheckError when no check could be made."""
    if not is_typescript(name):
        raise TypeCheckError("INVALID_ARGUMENT", "Type checks are for TypeScript blocks: name the block with .ts.")
    with check_slot(owner):
        return await _check(code, block_file_name(name), Path(declarations or default_declarations()))


async def _check(code, file_name, declarations):
    folder = Path(tempfile.mkdtemp(prefix="symposium-check-"))
    try:
        block = folder / file_name
        block.write_text(code)
        # In a folder of their own, so that no block name can stand for them.
        (folder / "types").mkdir()
        types = folder / "types" / "symposium.d.ts"
        shutil.copyfile(declarations, types)
        # The sandbox runs the checker as a user of its own (when the server runs as
        # root): it may read these, and write nothing.
        for path, mode in ((folder, 0o755), (folder / "types", 0o755), (block, 0o644), (types, 0o644)):
            path.chmod(mode)
        names = {str(block): file_name, str(types): "symposium.d.ts"}
        command = [
            sys.executable, "-I", str(SANDBOX),
            "--memory-mb", str(CHECK_LIMITS["memory_mb"]),
            "--cpu-seconds", str(CHECK_LIMITS["cpu_seconds"]),
            "--broker-port", str(NO_NETWORK_PORT),
            "--read", str(folder),
            "--",
            deno.find_deno_bin(),
            "check", "--no-config", "--no-lock", "--no-remote", "--no-npm",
            str(block), str(types),
        ]
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, env={}, close_fds=True)
        try:
            output = await asyncio.wait_for(read_bounded(process), CHECK_LIMITS["wall_seconds"])
        except asyncio.TimeoutError:
            # The checker leads a process group of its own (start_new_session).
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()
            raise TypeCheckError("TIMEOUT", f"The type check took longer than {CHECK_LIMITS['wall_seconds']} s and was stopped.") from None
        text = output.decode(errors="replace")
        diagnostics = parse_diagnostics(text, str(folder), names)
        if process.returncode != 0 and not diagnostics:
            raise TypeCheckError("INTERNAL", "The type checker failed without a diagnostic (it may have run out of memory).")
        return {"ok": not any(d["severity"] == "error" for d in diagnostics), "diagnostics": diagnostics}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def read_bounded(process):
    """The checker's output up to max_output_bytes (the rest is read and dropped, so that
    it never blocks on a full pipe), once it has exited."""
    kept = bytearray()
    while chunk := await process.stdout.read(64 * 1024):
        kept += chunk[: max(0, CHECK_LIMITS["max_output_bytes"] - len(kept))]
    await process.wait()
    return bytes(kept)


def format_diagnostic(diagnostic):
    """file:line:col: message (TS code), as compilers print it."""
    where = f"{diagnostic['file']}:{diagnostic['line']}:{diagnostic['column']}: " if diagnostic["file"] else ""
    code = f" ({diagnostic['code']})" if diagnostic["code"] else ""
    return f"{where}{diagnostic['severity']}: {diagnostic['message']}{code}"
