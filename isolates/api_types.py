"""The `symposium` API's TypeScript declarations (runtime/symposium.d.ts), read once.

The file is what authors' editors load; the runner's editor gets the same declarations
as a list (`declarations()`): one entry per method, with its parameters, its return type
and its documentation, for completion and hover. The file is written in one regular
shape, which this reads: a method is one line, `name(params): Returns;` (a `function`
directly in the namespace), preceded by its `/** ... */` comment, and each capability
is a `const name: { ... };` block of the namespace.
"""

import functools
import re

from isolates.pool import RUNTIME_DIR

DECLARATIONS_FILE = RUNTIME_DIR / "symposium.d.ts"

NAMESPACE_START = re.compile(r"^\s*const (\w+): \{$")
METHOD = re.compile(r"^\s*(?:function )?(\w+)\((.*)\): (.+);$")


def split_parameters(text):
    """The parameters' texts, split at the commas that are not inside a type."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "<({[":
            depth += 1
        elif char in ">)}]" and not (char == ">" and current.endswith("=")):
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def doc_text(lines):
    text = " ".join(line.strip().removeprefix("/**").removesuffix("*/").strip().removeprefix("*").strip() for line in lines)
    return re.sub(r"\s+", " ", text).strip()


@functools.cache
def source():
    return DECLARATIONS_FILE.read_text()


@functools.cache
def declarations():
    """[{name: "canvas.createCanvas", params: [{name, type, optional}], returns, signature,
    doc}] for every method of the namespace, in the file's order."""
    found = []
    namespace = None
    in_symposium = False
    comment, pending = None, []
    for line in source().splitlines():
        stripped = line.strip()
        if stripped.startswith("declare namespace symposium"):
            in_symposium = True
            continue
        if not in_symposium:
            continue
        if comment is not None:
            comment.append(stripped)
            if stripped.endswith("*/"):
                pending, comment = comment, None
            continue
        if stripped.startswith("/**"):
            comment = [stripped]
            if stripped.endswith("*/"):
                pending, comment = comment, None
            continue
        start = NAMESPACE_START.match(line)
        if start:
            namespace, pending = start.group(1), []
            continue
        if stripped == "};":
            namespace = None
            continue
        if stripped == "}" and namespace is None:
            break
        method = METHOD.match(line)
        if method:
            name, params, returns = method.groups()
            parameters = []
            for param in split_parameters(params):
                head, _, kind = param.partition(":")
                parameters.append({"name": head.strip().rstrip("?"), "type": kind.strip(), "optional": head.strip().endswith("?")})
            found.append({
                "name": f"{namespace}.{name}" if namespace else name,
                "params": parameters,
                "returns": returns.strip(),
                "signature": f"({params}): {returns.strip()}",
                "doc": doc_text(pending),
            })  # fmt: skip
            pending = []
    return found
