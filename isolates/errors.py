"""The shape of a failed run's error: `{name, message, code, stack, frames, codeFrame}`.

The isolate's runtime (runtime/worker.js) reports a block's error as `{name, message,
code, stack}`, with the stack already in the block's own terms: its frames name the
block by its file name, with the author's line and column, and the platform's frames
(the runtime, Deno's internals) are left out. That report comes from the sandbox, so it
is read here as untrusted text: bounded, and parsed for the frames that point into the
block. The platform adds what it can from the run's own record: the code frame (the line
the error points at, with a caret under the column), drawn from the code that ran.

Runs that the platform ended (time or memory limit, stopped, crashed) have a code and a
message and no frames: nothing in the block's code is to blame for a particular line.
"""

import re

# Bounds on what the sandbox may hand over: a stack is text the block can make as long as
# it likes (a deep recursion, a giant message); what is kept is enough to find the bug.
MAX_STACK_CHARS = 16 * 1024
MAX_FRAMES = 50
MAX_NAME_CHARS = 200
MAX_FUNCTION_CHARS = 200
MAX_CODE_FRAME_LINE_CHARS = 240
# The name of an error the platform reports (a run it ended, a frame it refused).
PLATFORM_ERROR_NAME = "SymposiumError"

# V8's frame lines, as the runtime formats them: "    at fn (file:1:2)", "    at file:1:2",
# "    at async fn (file:1:2)", "    at new Thing (file:1:2)".
FRAME_LINE = re.compile(r"^\s*at (?:(?P<function>.+?) \()?(?P<file>[^\s()]+?):(?P<line>\d+):(?P<column>\d+)\)?\s*$")


def block_file_name(name):
    """The file name the runtime shows the block under (runtime/main.js's blockName)."""
    base = re.sub(r"[\x00-\x1f\x7f]", "", str(name or "").replace("\\", "/").split("/")[-1])[:100]
    return base or "block.js"


def parse_frames(stack, file_name):
    """The frames of `stack` that point into the block (`file_name`), outermost last."""
    frames = []
    for text in (stack or "").split("\n")[1:]:
        match = FRAME_LINE.match(text)
        if not match or match["file"] != file_name:
            continue
        function = (match["function"] or "").removeprefix("async ").strip()
        frames.append({
            "file": file_name,
            "line": int(match["line"]),
            "column": int(match["column"]),
            "function": function[:MAX_FUNCTION_CHARS],
        })
        if len(frames) >= MAX_FRAMES:
            break
    return frames


def code_frame(code, line, column):
    """The line `line` of `code` with the one before it and a caret under `column`, as
    compilers print it:

          1 | const a = 1;
        > 2 | const b = ;
            |           ^
    """
    lines = (code or "").split("\n")
    if not 1 <= line <= len(lines):
        return None
    width = len(str(line))
    out = []
    for number in range(max(1, line - 1), line + 1):
        text = lines[number - 1].rstrip("\r")[:MAX_CODE_FRAME_LINE_CHARS].replace("\t", " ")
        out.append(f"{'>' if number == line else ' '} {number:>{width}} | {text}")
    caret_at = min(max(column, 1), MAX_CODE_FRAME_LINE_CHARS + 1)
    out.append(f"  {' ' * width} | {' ' * (caret_at - 1)}^")
    return "\n".join(out)


def error_detail(reported, code, name):
    """What is kept of the error the runtime reported (`reported`, its "done" frame's
    error) besides its code and message: {name, stack, frames, codeFrame}. `code` and
    `name` are the run's code and file name."""
    reported = reported if isinstance(reported, dict) else {}
    file_name = block_file_name(name)
    stack = reported.get("stack")
    stack = stack[:MAX_STACK_CHARS] if isinstance(stack, str) else ""
    frames = parse_frames(stack, file_name)
    top = frames[0] if frames else None
    return {
        "name": str(reported.get("name") or "Error")[:MAX_NAME_CHARS],
        "stack": stack,
        "frames": frames,
        "codeFrame": code_frame(code, top["line"], top["column"]) if top else None,
    }


def run_error(run):
    """The error of a finished, unsuccessful run as every client gets it (the runner page,
    `runblock`, the API): {name, message, code, stack, frames, codeFrame}; None for a run
    that succeeded or has not ended."""
    if run.status == "succeeded" or run.status not in run.FINISHED:
        return None
    detail = run.error_detail if isinstance(run.error_detail, dict) else {}
    return {
        "name": detail.get("name") or PLATFORM_ERROR_NAME,
        "message": run.error,
        "code": run.error_code,
        "stack": detail.get("stack") or "",
        "frames": detail.get("frames") or [],
        "codeFrame": detail.get("codeFrame"),
    }


def format_error(error):
    """The error as `runblock` prints it: the message, the code frame and the stack's
    frames in the block (file:line:col)."""
    lines = []
    location = error["frames"][0] if error["frames"] else None
    if location:
        lines.append(f"{location['file']}:{location['line']}:{location['column']}")
    if error["codeFrame"]:
        lines.append(error["codeFrame"])
    for frame in error["frames"]:
        where = f"{frame['file']}:{frame['line']}:{frame['column']}"
        lines.append(f"    at {frame['function']} ({where})" if frame["function"] else f"    at {where}")
    return "\n".join(lines)
