"""The files capability, called exactly as the broker calls it after decide() allowed the
call: handler(context_for(tenant), args). Real files on a real disk, real links, a real
tmpfs for the full-disk case."""

import os
import shutil
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from django.conf import settings

from capabilities import files
from capabilities.base import CapabilityError
from capabilities.files import beneath, quota
from tenants.models import PolicyOverride
from tests.helpers import call, context_for, override, refused

EXAMPLE_STORAGE = Path(settings.BASE_DIR) / "examples" / "storage"
ELF_HEADER = b"\x7fELF\x02\x01\x01" + b"\x00" * 57


@pytest.fixture(autouse=True)
def fresh_usage_cache(settings):
    """A run-state cache of this test's own: the storage usage figure is cached per tenant
    id, ids are reused between tests, and clearing a shared Redis would clear other
    tests' state too."""
    settings.CACHES = {
        **settings.CACHES,
        "runstate": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"test-{uuid.uuid4()}"},
    }


@pytest.fixture(params=["openat2", "walk"])
def both_resolvers(request, monkeypatch):
    """Runs a containment test with openat2 and again with the O_NOFOLLOW walk."""
    if request.param == "openat2" and not beneath.USE_OPENAT2:
        pytest.skip("this kernel has no openat2")
    monkeypatch.setattr(beneath, "USE_OPENAT2", request.param == "openat2")
    return request.param





def root_of(tenant):
    return Path(tenant.storage_root())


@pytest.fixture
def globex(make_tenant):
    """Another tenant, whose files acme must never reach."""
    tenant = make_tenant("globex", "Interactive")
    (root_of(tenant) / "secret.txt").write_text("globex's secret")
    return tenant


@pytest.fixture
def advanced(make_tenant):
    return make_tenant("initech", "Advanced")


# -- behaviour ------------------------------------------------------------------------


def test_it_runs_the_seed_file_system_example(acme):
    shutil.copytree(EXAMPLE_STORAGE, root_of(acme), dirs_exist_ok=True)

    result = call(files.read_file, acme, path="data/config.json")
    assert result["data"] == (EXAMPLE_STORAGE / "data" / "config.json").read_text()

    call(files.write_file, acme, path="output/result.txt", data="Hello World")
    assert (root_of(acme) / "output" / "result.txt").read_text() == "Hello World"

    listing = call(files.list_directory, acme, path="uploads")
    assert [e["name"] for e in listing["data"]] == ["people.csv"]
    entry = listing["data"][0]
    assert entry["path"] == "uploads/people.csv" and entry["type"] == "file"
    assert entry["size"] == (EXAMPLE_STORAGE / "uploads" / "people.csv").stat().st_size

    info = call(files.get_file_info, acme, path="data/large-file.zip")
    assert info["size"] == 92118 == info["data"]["size"]
    assert info["type"] == "file"

    assert call(files.file_exists, acme, path="config/settings.json")["data"] is True

    call(files.delete_file, acme, path="temp/cache.tmp")
    assert not (root_of(acme) / "temp" / "cache.tmp").exists()
    assert call(files.file_exists, acme, path="temp/cache.tmp")["data"] is False


def test_it_reads_and_writes_bytes(acme):
    payload = bytes(range(256)) * 4
    result = call(files.write_file, acme, path="bin-data/blob.dat", data=payload)
    assert result["size"] == 1024
    back = call(files.read_file, acme, path="bin-data/blob.dat", encoding="binary")
    assert back["data"] == payload and isinstance(back["data"], bytes)


def test_it_treats_a_leading_slash_as_the_tenant_root(acme):
    call(files.write_file, acme, path="/notes/today.txt", data="hi")
    assert (root_of(acme) / "notes" / "today.txt").read_text() == "hi"
    assert call(files.read_file, acme, path="notes/today.txt")["data"] == "hi"
    assert call(files.read_file, acme, path="//notes/./today.txt/")["data"] == "hi"
    names = [e["name"] for e in call(files.list_directory, acme, path="/")["data"]]
    assert names == ["notes"]


def test_it_refuses_invalid_utf8_and_suggests_binary(acme):
    (root_of(acme) / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not text")
    error = refused(files.read_file, acme, path="photo.jpg")
    assert error.code == "INVALID_ARGUMENT"
    assert "binary" in error.message
    assert call(files.read_file, acme, path="photo.jpg", encoding="binary")["data"].startswith(b"\xff\xd8")


def test_it_refuses_an_unknown_encoding(acme):
    (root_of(acme) / "a.txt").write_text("a")
    assert refused(files.read_file, acme, path="a.txt", encoding="latin-1").code == "INVALID_ARGUMENT"
    assert call(files.read_file, acme, path="a.txt", encoding="UTF8")["data"] == "a"


def test_it_drops_a_byte_order_mark_like_textdecoder(acme):
    (root_of(acme) / "excel.json").write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert call(files.read_file, acme, path="excel.json")["data"] == '{"a": 1}'


def test_it_lists_sorted_with_the_same_modified_as_get_file_info(acme):
    for name in ["b.txt", "a.txt", "C.txt"]:
        call(files.write_file, acme, path=f"docs/{name}", data=name)
    call(files.write_file, acme, path="docs/sub/x.txt", data="x")
    listing = call(files.list_directory, acme, path="docs")
    assert [e["name"] for e in listing["data"]] == ["C.txt", "a.txt", "b.txt", "sub"]
    assert listing["data"][3] == {
        "name": "sub",
        "path": "docs/sub",
        "type": "directory",
        "size": 0,
        "modified": listing["data"][3]["modified"],
    }
    info = call(files.get_file_info, acme, path="docs/a.txt")
    entry = listing["data"][1]
    assert entry["modified"] == info["modified"] == info["data"]["modified"]
    # ISO 8601 in UTC with milliseconds, as JavaScript's toISOString() writes it.
    stamp = datetime.strptime(entry["modified"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(stamp.timestamp() - (root_of(acme) / "docs" / "a.txt").stat().st_mtime) < 0.001


def test_it_says_not_found_for_missing_things(acme):
    assert refused(files.list_directory, acme, path="nowhere").code == "NOT_FOUND"
    assert refused(files.read_file, acme, path="nowhere.txt").code == "NOT_FOUND"
    assert refused(files.get_file_info, acme, path="no/such/thing").code == "NOT_FOUND"
    assert refused(files.delete_file, acme, path="nowhere.txt").code == "NOT_FOUND"
    assert call(files.file_exists, acme, path="nowhere.txt")["data"] is False


def test_it_tells_files_and_folders_apart(acme):
    call(files.write_file, acme, path="folder/file.txt", data="x")
    assert refused(files.list_directory, acme, path="folder/file.txt").code == "INVALID_ARGUMENT"
    assert refused(files.read_file, acme, path="folder").code == "INVALID_ARGUMENT"
    assert refused(files.write_file, acme, path="folder", data="x").code == "INVALID_ARGUMENT"
    error = refused(files.write_file, acme, path="folder/file.txt/inner.txt", data="x")
    assert error.code == "INVALID_ARGUMENT" and "is a file" in error.message
    assert call(files.file_exists, acme, path="folder/file.txt/inner.txt")["data"] is False
    assert call(files.file_exists, acme, path="folder")["data"] is True
    assert call(files.get_file_info, acme, path="folder")["type"] == "directory"
    assert call(files.get_file_info, acme, path="/")["type"] == "directory"


def test_it_replaces_a_file_whole_and_leaves_no_temporary_files(acme):
    call(files.write_file, acme, path="report.txt", data="first version, rather long")
    call(files.write_file, acme, path="report.txt", data="second")
    assert (root_of(acme) / "report.txt").read_text() == "second"
    assert sorted(os.listdir(root_of(acme))) == ["report.txt"]


def test_it_never_shows_a_half_written_file_to_readers(acme):
    big_a, big_b = b"a" * 3_000_000, b"b" * 3_000_000
    call(files.write_file, acme, path="big.dat", data=big_a)
    seen, stop = set(), threading.Event()
    ctx = context_for(acme)  # built here: a thread has no access to the test's database

    def reader():
        while not stop.is_set():
            seen.add(files.read_file(ctx, {"path": "big.dat", "encoding": "binary"})["data"][::100000])

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(6):
        call(files.write_file, acme, path="big.dat", data=big_b if i % 2 == 0 else big_a)
    stop.set()
    thread.join()
    assert seen and seen <= {big_a[::100000], big_b[::100000]}


def test_it_refuses_to_read_a_file_larger_than_the_profile_allows_without_loading_it(make_tenant):
    basic = make_tenant("basic-co", "Basic")
    # A sparse 20 GB file: loading it would take minutes and all the memory there is.
    with open(root_of(basic) / "huge.dat", "wb") as f:
        f.truncate(20 * 1024**3)
    started = time.monotonic()
    error = refused(files.read_file, basic, path="huge.dat", encoding="binary")
    assert error.code == "QUOTA_EXCEEDED"
    assert "1048576 bytes" in error.message
    assert time.monotonic() - started < 0.5


def test_it_enforces_the_largest_file_on_write(acme):
    override(acme, "max_file_size", 1000)
    error = refused(files.write_file, acme, path="big.txt", data="x" * 1001)
    assert error.code == "QUOTA_EXCEEDED" and "1000 bytes" in error.message
    assert not (root_of(acme) / "big.txt").exists()
    call(files.write_file, acme, path="ok.txt", data="x" * 1000)


def test_it_enforces_the_storage_quota_counting_the_replaced_file(acme):
    override(acme, "storage_quota", 1000)
    (root_of(acme) / "already-there.dat").write_bytes(b"x" * 300)  # on disk before any call
    call(files.write_file, acme, path="a.dat", data=b"x" * 600)
    error = refused(files.write_file, acme, path="b.dat", data=b"x" * 101)
    assert error.code == "QUOTA_EXCEEDED"
    assert "the quota is 1000 bytes (900 in use)" in error.message
    # Replacing a.bin frees its 600 bytes first: 300 + 700 fits.
    call(files.write_file, acme, path="a.dat", data=b"y" * 700)
    call(files.delete_file, acme, path="a.dat")
    call(files.write_file, acme, path="b.dat", data=b"x" * 700)
    assert refused(files.write_file, acme, path="c.dat", data=b"x").code == "QUOTA_EXCEEDED"


def test_it_lets_a_tenant_over_its_quota_shrink_files(acme):
    override(acme, "storage_quota", 1000)
    (root_of(acme) / "huge.log").write_bytes(b"x" * 5000)  # written by a process, say
    assert refused(files.write_file, acme, path="new.txt", data="x").code == "QUOTA_EXCEEDED"
    call(files.write_file, acme, path="huge.log", data="trimmed")
    call(files.write_file, acme, path="new.txt", data="x")


def test_it_counts_the_platform_folder_in_the_quota(acme):
    override(acme, "storage_quota", 1000)
    (root_of(acme) / ".symposium").mkdir()
    (root_of(acme) / ".symposium" / "tenant.sqlite3").write_bytes(b"d" * 900)
    assert refused(files.write_file, acme, path="a.dat", data=b"x" * 200).code == "QUOTA_EXCEEDED"


def test_it_keeps_parallel_writes_within_the_quota(acme):
    override(acme, "storage_quota", 10_000)
    outcomes = []
    ctx = context_for(acme)

    def write(i):
        try:
            files.write_file(ctx, {"path": f"parallel/{i}.dat", "data": b"x" * 1000})
            outcomes.append("ok")
        except CapabilityError as e:
            outcomes.append(e.code)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 10
    assert outcomes.count("QUOTA_EXCEEDED") == 15
    assert quota.measure_usage(os.open(root_of(acme), os.O_RDONLY)) == 10_000


def test_it_refuses_blocked_extensions_unless_access_is_all(acme, advanced):
    for name in ["setup.exe", "SETUP.EXE", "run.sh", "trick.exe.", "trick.exe ", "libs/x.so"]:
        error = refused(files.write_file, acme, path=name, data="harmless text")
        assert error.code == "PERMISSION_DENIED", name
        assert "Interactive profile does not allow writing" in error.message
    assert not any(root_of(acme).iterdir())
    call(files.write_file, advanced, path="setup.exe", data="harmless text")


@pytest.mark.parametrize(
    "content, kind",
    [
        (ELF_HEADER, "ELF"),
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + b"\x00" * 50 + b"\x40\x00\x00\x00PE\x00\x00", "PE/MZ"),
        (b"\xcf\xfa\xed\xfe\x07\x00\x00\x01", "Mach-O"),
        (b"#!/bin/sh\nrm -rf /\n", "#!"),
        (b"\xef\xbb\xbf#!/usr/bin/env python\n", "#!"),
    ],
)
def test_it_refuses_executable_content_whatever_the_name(acme, advanced, content, kind):
    error = refused(files.write_file, acme, path="innocent.txt", data=content)
    assert error.code == "PERMISSION_DENIED"
    assert kind in error.message and "executable content" in error.message
    assert not (root_of(acme) / "innocent.txt").exists()
    # 'all' file access stores anything.
    call(files.write_file, advanced, path="innocent.txt", data=content)


def test_it_does_not_mistake_text_for_programs(acme):
    csv = "MZ,Mozambique,Maputo\nMW,Malawi,Lilongwe\n" * 3
    call(files.write_file, acme, path="countries.csv", data=csv)
    call(files.write_file, acme, path="notes.md", data="# heading\n#!not at the start\n")


def test_it_deletes_files_and_empty_folders(acme):
    call(files.write_file, acme, path="tree/leaf.txt", data="x")
    call(files.delete_file, acme, path="tree/leaf.txt")
    assert call(files.delete_file, acme, path="tree")["data"]["type"] == "directory"
    assert not (root_of(acme) / "tree").exists()


def test_it_deletes_folders_with_contents_only_with_all_access(acme, advanced):
    for tenant in (acme, advanced):
        call(files.write_file, tenant, path="tree/sub/leaf.txt", data="x")
    error = refused(files.delete_file, acme, path="tree")
    assert error.code == "PERMISSION_DENIED" and "not empty" in error.message
    assert (root_of(acme) / "tree" / "sub" / "leaf.txt").exists()
    call(files.delete_file, advanced, path="tree")
    assert not (root_of(advanced) / "tree").exists()


def test_it_gives_quota_exceeded_and_no_partial_file_when_the_disk_is_full(acme, tmp_path):
    # A real full disk: the tenant's storage on a 1 MB tmpfs, with a generous quota.
    mount_point = root_of(acme)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        call(files.write_file, acme, path="keep.txt", data="the old content")
        error = refused(files.write_file, acme, path="big.dat", data=b"x" * 3 * 1024 * 1024)
        assert error.code == "QUOTA_EXCEEDED" and "storage is full" in error.message
        error = refused(files.write_file, acme, path="keep.txt", data=b"y" * 3 * 1024 * 1024)
        assert error.code == "QUOTA_EXCEEDED"
        assert sorted(os.listdir(mount_point)) == ["keep.txt"]
        assert call(files.read_file, acme, path="keep.txt")["data"] == "the old content"
        assert str(tmp_path) not in error.message
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_it_lets_read_only_profiles_read_but_not_write(make_tenant):
    basic = make_tenant("basic-co", "Basic")
    (root_of(basic) / "hello.txt").write_text("hello")
    assert call(files.read_file, basic, path="hello.txt")["data"] == "hello"
    for handler, args in [(files.write_file, {"path": "x.txt", "data": "x"}), (files.delete_file, {"path": "hello.txt"})]:
        error = refused(handler, basic, **args)
        assert error.code == "PERMISSION_DENIED" and "read-only" in error.message
    assert (root_of(basic) / "hello.txt").exists()


def test_it_caps_long_listings(acme, monkeypatch):
    from capabilities.files import handlers

    monkeypatch.setattr(handlers, "LIST_MAX_ENTRIES", 5)
    for i in range(8):
        (root_of(acme) / f"f{i}.txt").write_text("x")
    listing = call(files.list_directory, acme, path="")
    assert [e["name"] for e in listing["data"]] == [f"f{i}.txt" for i in range(5)]
    assert listing["truncated"] is True and listing["total"] == 8


# -- containment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["..", "../x", "a/../../x", "/../etc/passwd", "../../etc/passwd", "a/..", "./../x", "ok/../ok", "..//..//etc"],
)
def test_cant_traverse_with_dot_dot(acme, path):
    for handler, extra in [
        (files.read_file, {}),
        (files.write_file, {"data": "x"}),
        (files.list_directory, {}),
        (files.get_file_info, {}),
        (files.file_exists, {}),
        (files.delete_file, {}),
    ]:
        error = refused(handler, acme, path=path, **extra)
        assert error.code == "INVALID_ARGUMENT", (handler, path)
        assert "'..'" in error.message


def test_cant_traverse_with_encoded_dots_because_nothing_is_decoded(acme):
    # '%2e%2e' is a name like any other: reading it finds nothing outside the storage...
    assert refused(files.read_file, acme, path="%2e%2e/%2e%2e/etc/passwd").code == "NOT_FOUND"
    assert refused(files.read_file, acme, path="..%2f..%2fetc%2fpasswd").code == "NOT_FOUND"
    # ...and writing it makes a folder literally called '%2e%2e' inside the storage.
    call(files.write_file, acme, path="%2e%2e/x.txt", data="x")
    assert (root_of(acme) / "%2e%2e" / "x.txt").read_text() == "x"
    call(files.write_file, acme, path="\uff0e\uff0e/y.txt", data="y")  # fullwidth dots
    assert (root_of(acme) / "\uff0e\uff0e" / "y.txt").exists()


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("a\\..\\..\\etc\\passwd", "backslash"),
        ("notes.txt\x00.jpg", "NUL"),
        ("line\nbreak.txt", "control character"),
        ("bell\x07.txt", "control character"),
        ("c1\x85.txt", "control character"),
        ("x" * 256, "longer than 255 bytes"),
        ("/".join(["abcdefghi"] * 103), "longer than 1024 bytes"),
        ("\ud800.txt", "not valid Unicode"),
    ],
)
def test_cant_use_malformed_paths(acme, path, fragment):
    error = refused(files.write_file, acme, path=path, data="x")
    assert error.code == "INVALID_ARGUMENT"
    assert fragment in error.message
    assert not any(root_of(acme).iterdir())


@pytest.mark.parametrize("path", [123, 1.5, True, ["a"], {"p": "a"}, b"a.txt"])
def test_cant_use_a_non_string_path(acme, path):
    for handler in (files.read_file, files.list_directory, files.file_exists):
        error = refused(handler, acme, path=path)
        assert error.code == "INVALID_ARGUMENT" and "must be a string" in error.message


def test_cant_see_or_touch_the_platform_folder(acme):
    platform = root_of(acme) / ".symposium"
    platform.mkdir()
    (platform / "tenant.sqlite3").write_bytes(b"SQLite format 3\x00")
    (root_of(acme) / "visible.txt").write_text("x")

    assert [e["name"] for e in call(files.list_directory, acme, path="/")["data"]] == ["visible.txt"]
    for path in [".symposium", "/.symposium/tenant.sqlite3", ".SYMPOSIUM/tenant.sqlite3", "./.symposium"]:
        assert refused(files.read_file, acme, path=path).code == "NOT_FOUND"
        assert refused(files.list_directory, acme, path=path).code == "NOT_FOUND"
        assert refused(files.get_file_info, acme, path=path).code == "NOT_FOUND"
        assert call(files.file_exists, acme, path=path)["data"] is False
        assert refused(files.write_file, acme, path=path, data="x").code == "PERMISSION_DENIED"
        assert refused(files.delete_file, acme, path=path).code == "PERMISSION_DENIED"
    assert (platform / "tenant.sqlite3").read_bytes() == b"SQLite format 3\x00"


def test_cant_use_the_process_sandbox_system_folders_or_temporary_names(acme):
    # A process sees the system's /usr and a private /tmp at these names; the tenant's own
    # files there would be hidden from every process, so the names are refused.
    for path in ["tmp/x.txt", "usr/bin/ls", "etc/passwd", "proc", "DEV/x", "a/.symposium-tmp-0123/x"]:
        error = refused(files.write_file, acme, path=path, data="x")
        assert error.code == "PERMISSION_DENIED", path
    # Folders left there by the process sandbox's mount points are not listed.
    (root_of(acme) / "usr").mkdir()
    (root_of(acme) / "temp").mkdir()  # not reserved: the seed's temp paths live here
    assert [e["name"] for e in call(files.list_directory, acme, path="")["data"]] == ["temp"]


def test_cant_see_a_write_in_progress(acme):
    (root_of(acme) / "docs").mkdir()
    (root_of(acme) / "docs" / ".symposium-tmp-deadbeef").write_text("half")
    assert call(files.list_directory, acme, path="docs")["data"] == []
    assert refused(files.read_file, acme, path="docs/.symposium-tmp-deadbeef").code == "NOT_FOUND"


def test_cant_follow_a_link_to_etc(acme, both_resolvers):
    root = root_of(acme)
    os.symlink("/etc", root / "etc-link")
    os.symlink("/etc/passwd", root / "passwd")
    (root / "real").mkdir()
    os.symlink("/etc", root / "real" / "nested")

    for path in ["etc-link/passwd", "passwd", "real/nested/passwd", "real/nested/hostname"]:
        error = refused(files.read_file, acme, path=path)
        assert error.code == "PERMISSION_DENIED", path
        assert "link" in error.message
        assert "/etc" not in error.message.replace("'etc-link", "")
    assert refused(files.list_directory, acme, path="etc-link").code == "PERMISSION_DENIED"
    assert refused(files.get_file_info, acme, path="passwd").code == "PERMISSION_DENIED"
    assert call(files.file_exists, acme, path="etc-link/passwd")["data"] is False
    assert call(files.file_exists, acme, path="passwd")["data"] is False
    assert refused(files.write_file, acme, path="etc-link/symposium-was-here", data="x").code == "PERMISSION_DENIED"
    assert not Path("/etc/symposium-was-here").exists()
    # Links are not offered in listings either.
    assert [e["name"] for e in call(files.list_directory, acme, path="")["data"]] == ["real"]


def test_cant_follow_a_link_into_another_tenant(acme, globex, both_resolvers):
    root = root_of(acme)
    os.symlink(root_of(globex), root / "peer")
    os.symlink(root_of(globex) / "secret.txt", root / "secret.txt")
    os.symlink("../globex", root / "relative-peer")

    for path in ["peer/secret.txt", "secret.txt", "relative-peer/secret.txt"]:
        assert refused(files.read_file, acme, path=path).code == "PERMISSION_DENIED"
    # Writing over the link replaces nothing in globex's storage.
    assert refused(files.write_file, acme, path="secret.txt", data="pwned").code == "PERMISSION_DENIED"
    assert refused(files.write_file, acme, path="peer/secret.txt", data="pwned").code == "PERMISSION_DENIED"
    assert refused(files.delete_file, acme, path="peer/secret.txt").code == "PERMISSION_DENIED"
    # Deleting the link removes the link, never its target.
    call(files.delete_file, acme, path="secret.txt")
    assert not os.path.lexists(root / "secret.txt")
    assert (root_of(globex) / "secret.txt").read_text() == "globex's secret"
    # Recursive delete of a folder holding a link to globex leaves globex alone.
    (root / "box").mkdir()
    os.symlink(root_of(globex), root / "box" / "peer")
    PolicyOverride.objects.create(tenant=acme, setting="files_access", value="all")
    call(files.delete_file, acme, path="box")
    assert (root_of(globex) / "secret.txt").read_text() == "globex's secret"


def test_cant_escape_by_swapping_a_folder_for_a_link_mid_call(acme, globex, both_resolvers):
    # An attacker process flips 'swap' between a real folder and a link to globex as fast
    # as it can, while the block reads through it: no read may ever land in globex.
    root = root_of(acme)
    real = root / "swap-real"
    real.mkdir()
    (real / "secret.txt").write_text("acme's own")
    os.symlink(root_of(globex), root / "swap-link")
    stop = threading.Event()

    def flipper():
        while not stop.is_set():
            os.rename(root / "swap-real", root / "swap")
            os.rename(root / "swap", root / "swap-real")
            os.rename(root / "swap-link", root / "swap")
            os.rename(root / "swap", root / "swap-link")

    thread = threading.Thread(target=flipper)
    thread.start()
    answers = set()
    ctx = context_for(acme)
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                answers.add(files.read_file(ctx, {"path": "swap/secret.txt"})["data"])
            except CapabilityError as e:
                answers.add(e.code)
    finally:
        stop.set()
        thread.join()
    assert "globex's secret" not in answers
    assert answers <= {"acme's own", "NOT_FOUND", "PERMISSION_DENIED"}
    assert "PERMISSION_DENIED" in answers  # the link was met, and refused


def test_cant_hang_a_call_on_a_fifo(acme):
    os.mkfifo(root_of(acme) / "pipe")
    started = time.monotonic()
    assert refused(files.read_file, acme, path="pipe").code == "PERMISSION_DENIED"
    assert time.monotonic() - started < 1
    assert call(files.file_exists, acme, path="pipe")["data"] is False


def test_cant_delete_the_storage_root(acme):
    call(files.write_file, acme, path="a.txt", data="x")
    PolicyOverride.objects.create(tenant=acme, setting="files_access", value="all")
    for path in ["", "/", ".", "//"]:
        assert refused(files.delete_file, acme, path=path).code == "PERMISSION_DENIED"
    assert (root_of(acme) / "a.txt").exists()


def test_cant_learn_server_paths_from_errors(acme, globex, tmp_path):
    root = root_of(acme)
    os.symlink("/etc", root / "etc-link")
    call(files.write_file, acme, path="f.txt", data="x")
    override(acme, "storage_quota", 10)
    messages = []
    for handler, args in [
        (files.read_file, {"path": "missing/file.txt"}),
        (files.read_file, {"path": "etc-link/passwd"}),
        (files.list_directory, {"path": "f.txt"}),
        (files.write_file, {"path": "big.txt", "data": "x" * 100}),
        (files.write_file, {"path": "f.txt/child", "data": "x"}),
        (files.delete_file, {"path": "missing"}),
        (files.get_file_info, {"path": "etc-link"}),
    ]:
        messages.append(refused(handler, acme, **args).message)
    for message in messages:
        assert str(tmp_path) not in message
        assert "storage/acme" not in message and "globex" not in message
        assert "Traceback" not in message and "Errno" not in message
