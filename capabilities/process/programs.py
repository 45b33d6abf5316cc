"""Which files of the server a sandboxed command sees: its tenant's allowed programs, the
shared libraries they load, and the read-only data they need, and nothing else.

SECURITY: an allow-listed command may run another program: `env X`, `nice`, `timeout`,
`xargs`, `find -exec`, awk's system() and `@load`, `tar --to-command`, sed's `e`. Refusing
such commands from allow-lists would never be complete (every interpreter and many text
tools exec), so the sandbox makes them harmless instead: the only programs that exist
in it are the allow-listed ones (in /usr/bin and /bin), the only executable files besides
them are the shared libraries those programs load (as `ldd` lists them) and the dynamic
loader, and everything a command can write is mounted noexec (capabilities.process.mounts).
A command can therefore start only commands of the same allow-list, whatever it execs
through. /usr/share is there (read-only, noexec), for the data programs read at run time
(awk's library folder, terminfo, zoneinfo); native extensions (gawk's @load modules under
/usr/lib) are not, and loading one from storage or /tmp fails on noexec.

Some programs need a tree of their own at run time: an interpreter's standard library,
whose native modules are loaded like libraries (RUNTIME_TREES). Such a tree is bound
read-only, with the libraries its native modules load.
"""

import os
import re
import subprocess
from functools import lru_cache

LDD = "/usr/bin/ldd"
# `ldd` prints `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and, for the
# loader, `/lib64/ld-linux-x86-64.so.2 (0x...)`.
LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")
# Trees some programs load code from at run time, by the program's real name:
# pythonX.Y loads its standard library (and the native modules in lib-dynload).
RUNTIME_TREES = [(re.compile(r"^python(\d+\.\d+)$"), "/usr/lib/python{0}")]


def sandbox_path(path):
    """Where the file `path` names appears in the sandbox: at that very path (the loader
    opens the name ld.so.cache or PT_INTERP gives, often through links on the server),
    with the real file's contents bound there."""
    return os.path.normpath(path)


@lru_cache(maxsize=1024)
def _libraries(path, _mtime_ns):
    """(sandbox path, real path) of every library `path` loads, the loader included."""
    try:
        listed = subprocess.run(
            [LDD, path], capture_output=True, text=True, timeout=10, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    found = []
    for match in LDD_PATH.finditer(listed):
        library = match.group(1)
        if os.path.isfile(library):
            found.append((sandbox_path(library), os.path.realpath(library)))
    return tuple(found)


def libraries(path):
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return ()
    return _libraries(path, mtime)


def interpreter(path):
    """The interpreter a script names on its #! line, or None for a binary."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else None


@lru_cache(maxsize=64)
def _tree_libraries(tree, _mtime_ns):
    found = []
    for folder, _, names in os.walk(tree):
        for name in names:
            if ".so" in name:
                found.extend(libraries(os.path.join(folder, name)))
    return tuple(dict.fromkeys(found))


def runtime_trees(program):
    name = os.path.basename(program)
    trees = []
    for pattern, template in RUNTIME_TREES:
        match = pattern.match(name)
        if match:
            tree = template.format(*match.groups())
            if os.path.isdir(tree) and not os.path.islink(tree):
                trees.append(tree)
    return trees


def visible_files(programs):
    """For {name: real path} of the allowed programs (and the sandbox's own helpers):
    (files, trees), where files maps a sandbox path to the server file bound there
    read-only, and trees lists the read-only trees programs need at run time."""
    files, trees = {}, []
    pending = list(programs)
    seen = set()
    while pending:
        program = pending.pop()
        if program in seen:
            continue
        seen.add(program)
        script_interpreter = interpreter(program)
        if script_interpreter is not None and os.path.isfile(script_interpreter):
            # A command that is a script brings the interpreter it names (only at that
            # path: it is not on the PATH unless it is allow-listed itself).
            files[sandbox_path(script_interpreter)] = os.path.realpath(script_interpreter)
            pending.append(os.path.realpath(script_interpreter))
            continue
        for target, real in libraries(program):
            files.setdefault(target, real)
        for tree in runtime_trees(program):
            if tree not in trees:
                trees.append(tree)
                for target, real in _tree_libraries(tree, os.stat(tree).st_mtime_ns):
                    files.setdefault(target, real)
    return files, trees


def modification_times(paths):
    """The files' modification times (None for one that is gone): what a cached view of
    the programs is checked against, so that an upgraded program is seen at once."""
    times = []
    for path in paths:
        try:
            times.append(os.stat(path).st_mtime_ns)
        except OSError:
            times.append(None)
    return tuple(times)
