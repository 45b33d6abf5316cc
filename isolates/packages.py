"""Vetted npm packages: fetched once by an administrator, linked into blocks offline.

    python manage.py addpackage npm:ms@2.1.3 --all-tenants     # fetch once, allow for all
    import ms from "npm:ms@2.1.3";                              # in a block, offline

An administrator allows a package at one exact version, for every tenant or for some
(`NpmPackage`, on the admin page "Isolates > npm packages"), and `addpackage` fetches it
into the package cache (settings.SYMPOSIUM_PACKAGE_CACHE): Deno's bundler resolves the
package and its dependencies from the registry and writes them as one ES module, named
by its SHA-256, read-only. Nothing of the package runs while it is fetched: Deno runs
npm lifecycle scripts (preinstall, install, postinstall) only for packages named with
--allow-scripts, and only into a node_modules folder; the fetch passes neither (it
resolves into Deno's own cache, --node-modules-dir=none).

A block never reaches the registry, nor the cache itself. When a run starts, the broker
links the block (`link_block`): each `npm:NAME@VERSION` it imports, written as a string
literal, becomes a `data:` URL holding the package's bundle, if the tenant may use the
package; any other `npm:` import becomes a module that throws, naming the admin page. The
isolate then loads the package from its own start frame, with no file or network
permission. The isolate is given no read access to the cache on purpose: a Worker with no
permissions can still import a file its bootstrap may read (Deno checks a dynamic import
against the bootstrap's permissions once a blob: module has loaded), so a readable cache
would hand every tenant every cached package, allowed for it or not.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings
from django.db.models import Q
from django.urls import reverse

# npm's rules for a name (lowercase, URL-safe, an optional @scope/), and one exact
# version: a vetted package is a fixed text, never a range that moves under the vetting.
SPECIFIER = re.compile(
    r"^npm:(?P<name>(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]*)"
    r"@(?P<version>(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)$"
)
MAX_NAME = 214  # npm's own limit

LIMITS = {
    # One package's bundle, dependencies included. A run's start frame carries it, so it
    # also bounds what one import costs every run; the largest common libraries
    # (lodash, date-fns, zod) bundle to well under this.
    "bundle_max_bytes": 8 * 1024 * 1024,
    # All the packages one run links, in base64: Deno's websocket client drops messages
    # over 64 MiB, and the start frame is one message.
    "linked_max_bytes": 40 * 1024 * 1024,
    # How long one fetch (registry downloads and bundling) may take.
    "fetch_timeout_seconds": 300,
}

# The variables of the administrator's environment a fetch keeps: the way out to the
# registry (a proxy), nothing else of the server's.
PASSED_ENVIRONMENT = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PackageError(Exception):
    """A package cannot be fetched or used; the message says why, for its reader."""


def parse_specifier(specifier):
    """(name, version) of "npm:NAME@VERSION", or PackageError saying what is wrong."""
    match = SPECIFIER.match(specifier or "")
    if match is None or len(match["name"]) > MAX_NAME:
        raise PackageError(
            f"{specifier!r} is not a package specifier: write npm:NAME@VERSION with an exact version, such as npm:ms@2.1.3"
        )
    return match["name"], match["version"]


def cache_root():
    return Path(settings.SYMPOSIUM_PACKAGE_CACHE)


def bundle_path(sha256):
    return cache_root() / "npm" / f"{sha256}.js"


def admin_page():
    return reverse("admin:isolates_npmpackage_changelist")


# -- fetching (the administrator's side) ---------------------------------------------------


def fetch_command(deno_path, entry, output):
    """The one command a fetch runs. No --allow-scripts and no node_modules folder: Deno
    runs no lifecycle script of any package."""
    return [
        str(deno_path), "bundle", "--quiet", "--no-config", "--no-lock", "--no-remote",
        "--node-modules-dir=none",
        "--platform=deno", "--format=esm", "--packages=bundle",
        "--output", str(output), str(entry),
    ]  # fmt: skip


def fetch_environment(home):
    env = {key: os.environ[key] for key in PASSED_ENVIRONMENT if key in os.environ}
    env.update({
        "HOME": str(home),
        "PATH": os.defpath,
        "NO_COLOR": "1",
        "DENO_NO_UPDATE_CHECK": "1",
        # Deno's npm cache and its bundler's own tools; the isolates never see it.
        "DENO_DIR": str(cache_root() / "deno"),
        # The machine's certificate authorities (a proxy's among them), then Mozilla's.
        "DENO_TLS_CA_STORE": "system,mozilla",
        "NPM_CONFIG_REGISTRY": settings.SYMPOSIUM_NPM_REGISTRY,
    })  # fmt: skip
    return env


def fetch(name, version, deno_path=None):
    """Fetch npm:NAME@VERSION with its dependencies into the cache as one read-only ES
    module. Returns (sha256, size). Runs nothing of the package."""
    import deno

    specifier = f"npm:{name}@{version}"
    parse_specifier(specifier)
    root = cache_root()
    (root / "npm").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        entry = work / "entry.js"
        # The package's named exports, and its default: a CommonJS package's
        # module.exports, an ES module's default export (undefined when it has none).
        quoted = json.dumps(specifier)
        entry.write_text(f"import * as pkg from {quoted};\nexport * from {quoted};\nexport default pkg.default;\n")
        output = work / "bundle.js"
        try:
            result = subprocess.run(
                fetch_command(deno_path or deno.find_deno_bin(), entry, output),
                cwd=work, env=fetch_environment(work), capture_output=True, text=True,
                timeout=LIMITS["fetch_timeout_seconds"], stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise PackageError(f"fetching {specifier} took longer than {LIMITS['fetch_timeout_seconds']} s") from None
        if result.returncode != 0 or not output.exists():
            said = ANSI.sub("", result.stderr).strip().splitlines()
            detail = " ".join(line.strip() for line in said[-6:]).replace(str(work), ".")
            raise PackageError(f"fetching {specifier} failed: {detail or f'deno bundle exited with {result.returncode}'}")
        data = output.read_bytes()
        if len(data) > LIMITS["bundle_max_bytes"]:
            raise PackageError(
                f"{specifier} bundles to {len(data)} bytes with its dependencies; a package may be at most {LIMITS['bundle_max_bytes']}"
            )
        sha256 = hashlib.sha256(data).hexdigest()
        target = bundle_path(sha256)
        if not target.exists():
            output.chmod(0o444)
            os.replace(output, target)
        return sha256, len(data)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cached_bundle(sha256):
    """The bundle's bytes if the cache holds it intact, else None."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
        return None
    try:
        data = bundle_path(sha256).read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


# -- linking (the broker's side) ------------------------------------------------------------

# What the scanner tells apart, in one regular expression (a loop over characters or
# tokens in Python would take seconds over a 1 MB block): comments and template literals
# to skip; an import's specifier; any other string, to skip. The regular expression engine
# steps over everything else.
IMPORT_SCAN = re.compile(
    # (where none of them can start, one look at the character moves on)
    r"""(?=[/`"'if=(,:;!&|?{}\[+\-*%<>~^])"""
    r"""(?:(?P<skip>//[^\n]*|/\*[\s\S]*?(?:\*/|\Z)|`(?:\\[\s\S]|[^`\\])*`?"""
    # a regular expression literal: a slash where an expression starts (after = ( , : ...)
    r"""|(?:[=(,:;!&|?{}\[+\-*%<>~^]|^)[ \t]*/(?![/*])(?:\\.|\[(?:\\.|[^\]\\\n])*\]|[^/\\\n\[])+/)"""
    r"""|(?P<keyword>(?<![\w$.])(?:import|from)\s*(?P<call>\(\s*)?)(?P<quote>["'`])(?P<specifier>npm:(?:\\.|(?!(?P=quote))[^\\\n])*)(?P=quote)"""
    r"""|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?)""",
    re.M,
)


def imported_specifiers(code):
    """Where the code imports a module named by a literal string starting with "npm:":
    [(start, end, specifier, dynamic)], `start:end` spanning the literal with its quotes,
    `dynamic` true for an import() expression.

    Comments, strings and template literals are skipped, so an "npm:" in any of them is
    left alone. It counts `import "x"`, `import ... from "x"`, `export ... from "x"` and
    `import("x")`; a specifier computed at run time (`import("npm:" + name)`) is not
    seen (nor linked). A regular expression literal is told from a division by the
    character before it; one after a keyword (`return /re/`) is taken for a division,
    which can hide an import on the rest of its line, never more (strings end at the
    line's end)."""
    found = []
    for match in IMPORT_SCAN.finditer(code):
        if match["specifier"] is None:
            continue
        dynamic = match["call"] is not None
        end = match.end()
        if dynamic and code[end : end + 200].lstrip()[:1] not in (")", ","):
            continue  # `import("npm:" + name)`: computed, not linked
        found.append((match.start("quote"), end, match["specifier"], dynamic))
    return found


def allowed_packages(tenant_id, specifiers):
    """{specifier: NpmPackage} of these that the tenant may use."""
    from isolates.models import NpmPackage

    wanted = {}
    for specifier in specifiers:
        try:
            wanted[parse_specifier(specifier)] = specifier
        except PackageError:
            pass
    if not wanted:
        return {}
    rows = NpmPackage.objects.filter(Q(all_tenants=True) | Q(tenants=tenant_id), name__in={n for n, _ in wanted}).distinct()
    return {wanted[(row.name, row.version)]: row for row in rows if (row.name, row.version) in wanted}


def data_url(source):
    return "data:text/javascript;base64," + base64.b64encode(source).decode()


def throwing_source(code, message):
    source = f"const error = new Error({json.dumps(message)});\nerror.code = {json.dumps(code)};\nthrow error;\n"
    return source


def throwing_module(code, message):
    """A module whose evaluation fails an import() of it (the block may catch that)."""
    return data_url(throwing_source(code, message).encode())


def refusal(specifier, row):
    if row is None:
        try:
            parse_specifier(specifier)
        except PackageError as exc:
            return "INVALID_ARGUMENT", f"{exc}. Allowed packages are listed on the admin page {admin_page()}"
        return "PACKAGE_NOT_ALLOWED", (
            f"{specifier} is not an allowed package for this tenant: an administrator allows npm packages "
            f"on the admin page {admin_page()} (Isolates > npm packages)"
        )
    return "PACKAGE_NOT_FETCHED", (
        f"{specifier} is allowed but not in the package cache: an administrator fetches it with "
        f"`manage.py addpackage {specifier}` (see the admin page {admin_page()})"
    )


def link_block(tenant_id, code):
    """The block's code with each npm: import replaced by its package. A static import of
    a package the block may not have fails the whole block before any of it runs (as any
    static import that cannot link does); an import() of one rejects, with the reason."""
    if "npm:" not in code:
        return code
    found = imported_specifiers(code)
    if not found:
        return code
    rows = allowed_packages(tenant_id, {specifier for _, _, specifier, _ in found})
    urls, linked = {}, 0
    for specifier in dict.fromkeys(s for _, _, s, _ in found):
        row = rows.get(specifier)
        data = cached_bundle(row.sha256) if row is not None else None
        if data is None:
            urls[specifier] = refusal(specifier, row)
            continue
        urls[specifier] = data_url(data)
        linked += len(urls[specifier])
        if linked > LIMITS["linked_max_bytes"]:
            urls[specifier] = ("QUOTA_EXCEEDED", f"the packages this block imports are more than {LIMITS['linked_max_bytes']} bytes together; import fewer")
    for _, _, specifier, dynamic in found:
        if isinstance(urls[specifier], tuple) and not dynamic:
            return throwing_source(*urls[specifier])
    parts, last = [], 0
    for start, end, specifier, _ in found:
        url = urls[specifier]
        parts += [code[last:start], json.dumps(throwing_module(*url) if isinstance(url, tuple) else url)]
        last = end
    parts.append(code[last:])
    return "".join(parts)


async def link_block_async(tenant_id, code):
    """link_block off the event loop (it reads the database and the cache); a block
    without "npm:" in it costs nothing."""
    if "npm:" not in code:
        return code
    from isolates.session import on_pool_thread

    return await on_pool_thread(link_block)(tenant_id, code)
