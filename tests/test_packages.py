"""Vetted npm packages: fetched once from the registry by addpackage, imported by blocks
offline, through the real broker and a real locked-down isolate."""

import hashlib
import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request

import deno
import pytest
from django.core.management import call_command

from isolates import packages
from isolates.models import NpmPackage

pytestmark = [pytest.mark.django_db(transaction=True)]

MS = "npm:ms@2.1.3"
USES_MS = 'import ms from "npm:ms@2.1.3";\nexport default () => ms("2h");\n'


@pytest.fixture(scope="module")
def fetched_cache(tmp_path_factory):
    """One package cache for the module's tests: the first fetch of npm:ms@2.1.3 reaches
    the real registry, later ones find its files in Deno's cache there."""
    return tmp_path_factory.mktemp("package-cache")


@pytest.fixture
def cache(settings, fetched_cache):
    settings.SYMPOSIUM_PACKAGE_CACHE = fetched_cache
    return fetched_cache


def add(*args):
    out = io.StringIO()
    call_command("addpackage", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_it_vendors_a_real_package_and_a_block_imports_it_with_no_network(cache, run_block, acme):
    said = add(MS, "--all-tenants")
    package = NpmPackage.objects.get(name="ms", version="2.1.3")
    assert said.startswith("npm:ms@2.1.3: ") and "allowed for every tenant" in said
    bundle = packages.bundle_path(package.sha256)
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == package.sha256
    assert oct(bundle.stat().st_mode)[-3:] == "444"
    code = USES_MS + (
        "export async function reach() { try { await fetch('https://registry.npmjs.org/ms'); return 'open'; }"
        " catch (e) { return e.name; } }\n"
    )
    code = code.replace('export default () => ms("2h");', 'export default async () => ({ ms: ms("2h"), back: ms(90000), net: await reach() });')
    run = run_block(acme, code)
    assert run.status == "succeeded", (run.error_code, run.error)
    assert run.result["ms"] == 7_200_000 and run.result["back"] == "2m"
    assert run.result["net"] != "open"  # the isolate's network is as closed as ever
    # Asked again, it is not fetched again.
    assert "already in the cache" in add(MS)


def test_it_allows_a_package_per_tenant(cache, run_block, make_tenant):
    add(MS)
    package = NpmPackage.objects.get(name="ms")
    assert not package.all_tenants
    acme, other = make_tenant("acme"), make_tenant("other")
    add(MS, "--tenant", "acme")
    assert run_block(acme, USES_MS).result == 7_200_000
    refused = run_block(other, USES_MS)
    assert refused.status == "failed" and refused.error_code == "PACKAGE_NOT_ALLOWED"


def test_cant_import_a_package_that_is_not_allowed(cache, run_block, acme):
    code = 'import leftPad from "npm:left-pad@1.3.0";\nconsole.log("the block ran");\nexport default () => leftPad("1", 3);\n'
    run = run_block(acme, code)
    assert run.status == "failed"
    assert run.error_code == "PACKAGE_NOT_ALLOWED"
    assert "npm:left-pad@1.3.0 is not an allowed package for this tenant" in run.error
    assert "/admin/isolates/npmpackage/" in run.error
    assert run.logs == []  # refused before any of the block ran
    # A dynamic import of it is refused alike, and the block may catch that.
    caught = run_block(acme, 'export default async () => { try { await import("npm:left-pad@1.3.0"); } catch (e) { return e.code; } };')
    assert caught.result == "PACKAGE_NOT_ALLOWED"


def test_cant_import_an_allowed_package_that_was_not_fetched(cache, run_block, acme):
    NpmPackage.objects.create(name="left-pad", version="1.3.0", all_tenants=True)
    run = run_block(acme, 'import leftPad from "npm:left-pad@1.3.0";\nexport default () => leftPad("1", 3);\n')
    assert run.status == "failed" and run.error_code == "PACKAGE_NOT_FETCHED"
    assert "manage.py addpackage npm:left-pad@1.3.0" in run.error


def test_cant_import_a_package_range_or_a_tampered_bundle(cache, run_block, acme):
    run = run_block(acme, 'import ms from "npm:ms@^2";\nexport default () => ms("1s");\n')
    assert run.status == "failed" and run.error_code == "INVALID_ARGUMENT"
    assert "exact version" in run.error and "/admin/isolates/npmpackage/" in run.error
    add(MS, "--all-tenants")
    package = NpmPackage.objects.get(name="ms")
    good = packages.bundle_path(package.sha256)
    saved = good.read_bytes()
    try:
        good.chmod(0o644)
        good.write_bytes(b"export default () => 'tampered';\n")
        run = run_block(acme, USES_MS)
        assert run.status == "failed" and run.error_code == "PACKAGE_NOT_FETCHED"
    finally:
        good.write_bytes(saved)
        good.chmod(0o444)


def test_cant_write_package_cache(cache, run_block, acme):
    add(MS, "--all-tenants")
    bundle = packages.bundle_path(NpmPackage.objects.get(name="ms").sha256)
    before = bundle.read_bytes()
    target = json.dumps(str(bundle))
    url = json.dumps(bundle.as_uri())
    beside = json.dumps(str(bundle.parent / "planted.js"))
    code = f"""
export default async () => {{
  const tried = {{}};
  for (const [name, attempt] of Object.entries({{
    overwrite: () => Deno.writeTextFile({target}, "export default 1;"),
    plant: () => Deno.writeTextFile({beside}, "export default 1;"),
    remove: () => Deno.remove({target}),
    read: () => Deno.readTextFile({target}),
    importFile: () => import({url}),
  }})) {{
    try {{ await attempt(); tried[name] = "done"; }} catch (e) {{ tried[name] = e.name; }}
  }}
  return tried;
}};
"""
    run = run_block(acme, code)
    assert run.status == "succeeded", (run.error_code, run.error)
    assert "done" not in run.result.values(), run.result
    assert bundle.read_bytes() == before
    assert not (bundle.parent / "planted.js").exists()


# -- install scripts: a registry of our own, serving a package whose scripts would leave marks.


def probe_package(marker):
    """A tarball whose every lifecycle script writes `marker`; its code does nothing."""
    manifest = {
        "name": "install-script-probe", "version": "1.0.0", "main": "index.js",
        "scripts": {hook: "node mark.js" for hook in ("preinstall", "install", "postinstall", "prepare")},
    }  # fmt: skip
    files = {
        "package/package.json": json.dumps(manifest).encode(),
        "package/index.js": b"module.exports = 'probe loaded';\n",
        "package/mark.js": f"require('fs').appendFileSync({json.dumps(str(marker))}, 'an install script ran\\n');\n".encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return manifest, buffer.getvalue()


@pytest.fixture
def probe_registry(tmp_path):
    marker = tmp_path / "install-script-ran"
    manifest, tarball = probe_package(marker)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    import base64

    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    version = {**manifest, "hasInstallScript": True,
               "dist": {"tarball": base + "install-script-probe/-/install-script-probe-1.0.0.tgz",
                        "shasum": hashlib.sha1(tarball).hexdigest(), "integrity": integrity}}  # fmt: skip
    packument = json.dumps({"name": manifest["name"], "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/install-script-probe"):
                body = tarball if self.path.endswith(".tgz") else packument
            else:
                # Deno's bundler fetches its own tool (esbuild) from the same registry:
                # those requests go on to the real one.
                try:
                    with urllib.request.urlopen("https://registry.npmjs.org" + self.path, timeout=60) as answer:
                        body = answer.read()
                except urllib.error.HTTPError:
                    body = None
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/octet-stream" if self.path.endswith(".tgz") else "application/json")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base, marker
    server.shutdown()
    server.server_close()


def test_cant_run_install_scripts(settings, tmp_path, probe_registry, run_block, acme):
    registry, marker = probe_registry
    settings.SYMPOSIUM_NPM_REGISTRY = registry
    settings.SYMPOSIUM_PACKAGE_CACHE = tmp_path / "cache"
    command = packages.fetch_command("deno", "entry.js", "out.js")
    assert "--node-modules-dir=none" in command  # lifecycle scripts only ever run into a node_modules
    assert not any(arg.startswith("--allow-scripts") for arg in command)
    # The probe works: an install that allows scripts runs them, and leaves the mark.
    control = tmp_path / "control"
    control.mkdir()
    (control / "package.json").write_text(json.dumps({"dependencies": {"install-script-probe": "1.0.0"}}))
    subprocess.run([deno.find_deno_bin(), "install", "--allow-scripts", "--node-modules-dir=auto"], cwd=control, timeout=300,
                   env={"HOME": str(control), "PATH": os.defpath, "DENO_DIR": str(control / "deno"), "NPM_CONFIG_REGISTRY": registry},
                   capture_output=True)  # fmt: skip
    assert marker.read_text().startswith("an install script ran")
    marker.unlink()

    said = add("npm:install-script-probe@1.0.0", "--all-tenants")
    assert "fetched" in said
    assert not marker.exists()
    assert not list((tmp_path / "cache").rglob("node_modules"))
    run = run_block(acme, 'import probe from "npm:install-script-probe@1.0.0";\nexport default () => probe;\n')
    assert run.result == "probe loaded", (run.error_code, run.error)
    assert not marker.exists()


def test_it_reports_a_package_the_registry_does_not_have(settings, tmp_path, probe_registry):
    settings.SYMPOSIUM_NPM_REGISTRY = probe_registry[0]
    settings.SYMPOSIUM_PACKAGE_CACHE = tmp_path / "cache"
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="fetching npm:no-such-package@1.0.0 failed"):
        add("npm:no-such-package@1.0.0")
    assert NpmPackage.objects.get(name="no-such-package").sha256 == ""
    assert not list((tmp_path / "cache").glob(".fetch-*"))  # nothing half-fetched is left


def test_it_refuses_specifiers_that_are_not_one_exact_version():
    from django.core.management.base import CommandError

    for bad in ("ms@2.1.3", "npm:ms", "npm:ms@^2.1.3", "npm:ms@latest", "npm:MS@2.1.3", "npm:../x@1.0.0", "npm:ms@2.1.3/../../x"):
        with pytest.raises(CommandError, match="exact version"):
            add(bad)
    assert packages.parse_specifier("npm:@scope/name@1.0.0-beta.1") == ("@scope/name", "1.0.0-beta.1")


# -- which text is an import ---------------------------------------------------------------


def specifiers(code):
    return [s for _, _, s, _ in packages.imported_specifiers(code)]


def test_it_finds_the_imports_of_npm_packages():
    code = """
import a from "npm:a@1.0.0";
import { b } from 'npm:b@1.0.0';
import "npm:c@1.0.0";
export * from "npm:d@1.0.0";
export { e } from "npm:e@1.0.0";
const f = await import("npm:f@1.0.0");
const g = await import(`npm:g@1.0.0`);
import type { H } from "npm:h@1.0.0";
"""
    assert specifiers(code) == [f"npm:{x}@1.0.0" for x in "abcdefgh"]
    assert [dynamic for *_, dynamic in packages.imported_specifiers(code)] == [False] * 5 + [True] * 2 + [False]


def test_it_leaves_npm_text_outside_imports_alone():
    code = r"""
// import x from "npm:comment@1.0.0";
/* import y from "npm:block-comment@1.0.0"; */
const s = "import z from 'npm:in-a-string@1.0.0'";
const t = `from "npm:in-a-template@1.0.0" ${ "npm:in-an-interpolation@1.0.0" } import("npm:x@1.0.0")`;
const r = /from "npm:in-a-regex@1.0.0"/;
const half = 4 / 2; const q = "npm:plain-string@1.0.0";
const quoted = s.match(/'/) || s.split(/["']/);
obj.import("npm:a-method@1.0.0");
const computed = await import("npm:" + name);
import real from "npm:real@1.0.0";
"""
    assert specifiers(code) == ["npm:real@1.0.0"]


def test_it_links_a_block_without_npm_imports_unchanged():
    code = "export default () => 'npm: is a word here';"
    assert packages.link_block(0, code) is code


def test_it_lists_packages_on_the_admin_page_that_refusals_name(cache, client, django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", "root@example.org", "root-password-123")
    client.force_login(admin_user)
    NpmPackage.objects.create(name="left-pad", version="1.3.0")
    add(MS, "--all-tenants")
    page = client.get(packages.admin_page())
    assert page.status_code == 200
    text = page.content.decode()
    assert "npm:ms@2.1.3" in text and "every tenant" in text and "nobody yet" in text
    detail = client.get(f"{packages.admin_page()}{NpmPackage.objects.get(name='left-pad').pk}/change/")
    assert "python manage.py addpackage npm:left-pad@1.3.0" in detail.content.decode()
