"""process.execute, called as the broker calls it after decide(): real bubblewrap, real
programs, a real TCP server to (fail to) reach, real processes to count afterwards.

Probes that need more than the Advanced profile's text tools run under python3 or sh,
which only these tests' tenants have on their allow-list (a PolicyOverride)."""

import dataclasses
import os
import socket
import stat
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from capabilities import files
from capabilities.base import CapabilityError
from capabilities.process import cgroups, execute, sandbox
from capabilities.process.limits import SANDBOX_LIMITS
from tenants.models import PolicyOverride
from tests.helpers import context_for

pytestmark = pytest.mark.skipif(not sandbox.available(), reason="bubblewrap is not installed")

ADVANCED_COMMANDS = (
    "ls cat echo wc head tail sort uniq grep cut tr sed awk date pwd stat du find basename dirname "
    "md5sum sha256sum base64 true false sleep env printf seq tee"
)


@pytest.fixture(autouse=True)
def fresh_usage_cache(settings):
    """A run-state cache of this test's own: the storage usage figure is cached per tenant
    id, ids are reused between tests, and clearing a shared Redis would clear other
    tests' state too."""
    settings.CACHES = {
        **settings.CACHES,
        "runstate": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"test-{uuid.uuid4()}"},
    }


@pytest.fixture
def advanced(make_tenant):
    return make_tenant("initech", "Advanced")


@pytest.fixture
def prober(make_tenant):
    """An Advanced tenant that may also run python3 and sh, to probe the sandbox's walls."""
    tenant = make_tenant("probe-co", "Advanced")
    override(tenant, "process_commands", ADVANCED_COMMANDS + " python3 sh")
    return tenant


@pytest.fixture
def globex(make_tenant):
    tenant = make_tenant("globex", "Interactive")
    (Path(tenant.storage_root()) / "secret.txt").write_text("globex's secret")
    return tenant


def override(tenant, setting, value):
    PolicyOverride.objects.update_or_create(tenant=tenant, setting=setting, defaults={"value": str(value)})


def run(tenant, command, args=None, ctx=None, **options):
    return execute(ctx or context_for(tenant), {"command": command, "args": args or [], **options})


def refused(tenant, command, args=None, **options):
    with pytest.raises(CapabilityError) as info:
        run(tenant, command, args, **options)
    return info.value


def python(tenant, source, **options):
    return run(tenant, "python3", ["-c", textwrap.dedent(source)], **options)


def host_processes_with(marker):
    """Processes on the server whose command line contains `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


# -- behaviour ------------------------------------------------------------------------


def test_it_runs_the_seeds_ls_example(advanced):
    result = run(advanced, "ls", ["-la", "/tmp"], cwd="/home/user", timeout=10000)
    assert result["exitCode"] == 0 == result["data"]["exitCode"]
    assert result["stdout"].startswith("total ")
    assert result["stderr"] == ""
    assert result["timedOut"] is False and result["truncated"] is False
    assert result["stdout"] == result["data"]["stdout"]
    # cwd '/home/user' is a folder of the tenant's storage, made on first use.
    assert (Path(advanced.storage_root()) / "home" / "user").is_dir()
    assert run(advanced, "pwd", cwd="/home/user")["stdout"] == "/home/user\n"


@pytest.mark.parametrize("spawner", [True, False], ids=["spawner", "server"])
def test_cant_outrank_the_server_for_the_cpu_with_a_command(advanced, settings, spawner):
    """A command runs 10 nice levels below the server, forked by the spawner or by the
    server itself: `nice` without arguments prints its own niceness."""
    from capabilities.process.limits import SANDBOX_LIMITS

    settings.SYMPOSIUM_PROCESS_SPAWNER = spawner
    override(advanced, "process_commands", ADVANCED_COMMANDS + " nice")
    result = run(advanced, "nice")
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + SANDBOX_LIMITS["nice"])
    assert (result["exitCode"], result["stdout"]) == (0, f"{expected}\n"), result


def test_it_runs_the_seeds_echo_example_without_a_shell(advanced):
    result = run(advanced, "echo", ["$HOME"], env={"CUSTOM_VAR": "value"})
    assert result["exitCode"] == 0
    assert result["stdout"] == "$HOME\n"


def test_it_gives_the_command_only_the_blocks_environment_and_a_safe_base(advanced):
    result = run(advanced, "env", env={"CUSTOM_VAR": "value", "HOME": "/work-here", "LC_ALL": "C"})
    assert sorted(result["stdout"].splitlines()) == [
        "CUSTOM_VAR=value",
        "HOME=/work-here",
        "LANG=C.UTF-8",
        "LC_ALL=C",
        "PATH=/usr/bin:/bin",
        "PWD=/",  # set by bubblewrap to the cwd, as a shell would
    ]


def test_it_sees_tenant_files_at_the_same_paths_as_the_file_api(advanced):
    ctx = context_for(advanced)
    files.write_file(ctx, {"path": "data/config.json", "data": '{"mode": "demo"}'})
    assert run(advanced, "cat", ["/data/config.json"], ctx=ctx)["stdout"] == '{"mode": "demo"}'
    assert run(advanced, "cat", ["config.json"], ctx=ctx, cwd="/data")["stdout"] == '{"mode": "demo"}'
    # ...and what a command writes, the file API reads.
    run(advanced, "tee", ["result.txt"], ctx=ctx, cwd="/out", input="from a process\n")
    assert files.read_file(ctx, {"path": "out/result.txt"})["data"] == "from a process\n"
    listing = run(advanced, "ls", ["/"], ctx=ctx)["stdout"].split()
    assert {"data", "out"} <= set(listing)


def test_it_feeds_input_of_any_size(advanced):
    assert run(advanced, "sort", input="pear\napple\nfig\n")["stdout"] == "apple\nfig\npear\n"
    # Bigger than any pipe buffer, while the command also writes: no deadlock.
    big = "x" * 999 + "\n"
    result = run(advanced, "cat", input=big * 5000)
    assert len(result["stdout"]) == 5_000_000 and result["exitCode"] == 0


def test_it_reports_failure_with_the_commands_own_words(advanced):
    result = run(advanced, "ls", ["/no-such-folder"])
    assert result["exitCode"] == 2
    assert result["stderr"].startswith("ls: cannot access '/no-such-folder'")
    assert run(advanced, "false")["exitCode"] == 1


def test_it_stops_at_the_timeout_and_returns_what_came_before(advanced):
    started = time.monotonic()
    result = run(advanced, "sed", ["-u", "s/^/got /", "/dev/stdin", "/dev/zero"], input="early line\n", timeout=300)
    elapsed = time.monotonic() - started
    assert result["timedOut"] is True and result["data"]["timedOut"] is True
    assert result["exitCode"] is None and result["data"]["signal"] == "SIGKILL"
    assert result["stdout"] == "got early line\n"
    assert elapsed < 2


def test_it_caps_the_timeout_at_the_profiles_limit(advanced):
    override(advanced, "process_timeout_seconds", 1)
    started = time.monotonic()
    result = run(advanced, "sleep", ["30"], timeout=60000)
    assert result["timedOut"] is True
    assert result["data"]["timeoutMs"] == 1000
    assert 0.9 < time.monotonic() - started < 2.5


def test_it_stops_before_the_call_deadline(advanced):
    ctx = context_for(advanced)
    ctx.deadline = time.time() + 1.0
    result = run(advanced, "sleep", ["30"], ctx=ctx, timeout=60000)
    assert result["timedOut"] is True
    assert time.time() < ctx.deadline


def test_it_checks_cwd(advanced):
    root = Path(advanced.storage_root())
    (root / "afile").write_text("x")
    os.symlink("/etc", root / "etc-link")
    assert refused(advanced, "ls", cwd="afile").code == "INVALID_ARGUMENT"
    assert refused(advanced, "ls", cwd="etc-link").code == "PERMISSION_DENIED"
    assert refused(advanced, "ls", cwd="../..").code == "INVALID_ARGUMENT"
    assert refused(advanced, "ls", cwd="/.symposium").code == "PERMISSION_DENIED"
    assert refused(advanced, "ls", cwd=42).code == "INVALID_ARGUMENT"
    assert run(advanced, "pwd", cwd="/tmp")["stdout"] == "/tmp\n"
    assert run(advanced, "pwd", cwd="/tmp/work/area")["stdout"] == "/tmp/work/area\n"
    assert run(advanced, "pwd", cwd="/usr/share")["stdout"] == "/usr/share\n"
    assert refused(advanced, "pwd", cwd="/usr/no-such-folder").code == "NOT_FOUND"
    assert refused(advanced, "pwd", cwd="/etc/ssl").code == "NOT_FOUND"
    assert run(advanced, "pwd")["stdout"] == "/\n"


def test_it_binds_storage_read_only_for_read_only_file_access(advanced):
    override(advanced, "files_access", "read")
    (Path(advanced.storage_root()) / "notes.txt").write_text("readable")
    assert run(advanced, "cat", ["/notes.txt"])["stdout"] == "readable"
    result = run(advanced, "tee", ["/new.txt"], input="x")
    assert result["exitCode"] == 1 and "Read-only file system" in result["stderr"]
    assert not (Path(advanced.storage_root()) / "new.txt").exists()
    assert refused(advanced, "ls", cwd="/missing").code == "NOT_FOUND"


def test_it_shows_no_storage_without_file_access(advanced):
    override(advanced, "files_access", "none")
    (Path(advanced.storage_root()) / "notes.txt").write_text("private")
    result = run(advanced, "cat", ["/notes.txt"])
    assert result["exitCode"] == 1 and "No such file" in result["stderr"]
    assert run(advanced, "pwd", cwd="/work")["stdout"] == "/work\n"
    assert run(advanced, "pwd", cwd="/usr/share")["stdout"] == "/usr/share\n"


def test_it_counts_what_a_process_wrote_in_the_quota(advanced):
    override(advanced, "storage_quota", 10_000)
    ctx = context_for(advanced)
    files.write_file(ctx, {"path": "a.txt", "data": "x" * 1000})  # the usage figure is now cached
    run(advanced, "tee", ["/big.txt"], ctx=ctx, input="y" * 8500)
    error = pytest.raises(CapabilityError, files.write_file, ctx, {"path": "b.txt", "data": "z" * 600}).value
    assert error.code == "QUOTA_EXCEEDED" and "9500 in use" in error.message



def test_it_keeps_what_a_process_changed_removed_renamed_and_linked(prober):
    override(prober, "process_commands", ADVANCED_COMMANDS + " sh rm mkdir mv ln")
    root = Path(prober.storage_root())
    (root / "keep.txt").write_text("old")
    (root / "gone.txt").write_text("remove me")
    (root / "folder").mkdir()
    (root / "folder" / "inner.txt").write_text("inner")
    (root / "replaced").mkdir()
    (root / "replaced" / "old.txt").write_text("old folder")
    script = (
        "echo new >> keep.txt && rm gone.txt && mkdir -p made/deep && echo deep > made/deep/f.txt "
        "&& mv folder/inner.txt folder/moved.txt && rm -r replaced && mkdir replaced && echo fresh > replaced/new.txt "
        "&& ln -s keep.txt link && : > empty"
    )
    result = run(prober, "sh", ["-c", script])
    assert result["exitCode"] == 0, result["stderr"]
    assert (root / "keep.txt").read_text() == "oldnew\n"
    assert not (root / "gone.txt").exists()
    assert (root / "made" / "deep" / "f.txt").read_text() == "deep\n"
    assert sorted(os.listdir(root / "folder")) == ["moved.txt"]
    assert sorted(os.listdir(root / "replaced")) == ["new.txt"]
    assert os.readlink(root / "link") == "keep.txt"
    assert (root / "empty").stat().st_size == 0
    assert not [name for name in os.listdir(root) if name.startswith(".symposium-write")]
    # And the next command sees it all.
    assert run(prober, "cat", ["/replaced/new.txt", "/folder/moved.txt"])["stdout"] == "fresh\ninner"


def test_cant_write_more_than_the_quota_through_a_process(prober):
    # 30 files of 2 MB each (each well under the largest file) into a 20 MB quota.
    override(prober, "storage_quota", 20 * 1024 * 1024)
    result = run(prober, "sh", ["-c", "for i in $(seq 30); do head -c 2097152 /dev/zero > f$i || exit 7; done"], timeout=20000)
    assert result["exitCode"] == 7 and "No space left on device" in result["stderr"]
    assert files.quota.measure_usage(os.open(prober.storage_root(), os.O_RDONLY)) <= 20 * 1024 * 1024


def test_cant_pass_the_quota_through_a_process_on_top_of_what_is_stored(prober):
    override(prober, "storage_quota", 20 * 1024 * 1024)
    ctx = context_for(prober)
    files.write_file(ctx, {"path": "stored.bin", "data": "s" * (15 * 1024 * 1024)})
    (Path(prober.storage_root()) / "note.txt").write_text("before")
    with pytest.raises(CapabilityError) as info:
        run(prober, "sh", ["-c", "echo after > note.txt; head -c 10485760 /dev/zero > more.bin"], ctx=ctx, timeout=20000)
    assert info.value.code == "QUOTA_EXCEEDED" and "None of its changes were kept" in info.value.message
    root = Path(prober.storage_root())
    assert not (root / "more.bin").exists()
    assert (root / "note.txt").read_text() == "before"  # all or nothing
    # Within the quota, the same command's changes are kept.
    result = run(prober, "sh", ["-c", "echo after > note.txt; head -c 1048576 /dev/zero > more.bin"], ctx=ctx)
    assert result["exitCode"] == 0 and (root / "more.bin").stat().st_size == 1048576


def memory_cgroup_available():
    from capabilities.process.cgroups import CommandCgroups

    cgroups = CommandCgroups.create(4, 64 * 1024 * 1024)
    try:
        return cgroups.memory_bounded
    finally:
        cgroups.remove()


CHILDREN_HOLDING_MEMORY = """
    import os, sys, time
    children = []
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            block = bytearray(120 * 1024 * 1024)  # each well under RLIMIT_AS
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(1)
            os._exit(0)
        children.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in children]
    print("all held" if all(code == 0 for code in codes) else "killed")
"""


def test_cant_take_more_memory_than_the_profile_with_child_processes(prober):
    if not memory_cgroup_available():
        pytest.skip("no memory cgroup on this machine (the fallback is tested below)")
    # 6 children of 120 MB each: 720 MB on a profile of 256 MB.
    override(prober, "memory_mb", 256)
    result = python(prober, CHILDREN_HOLDING_MEMORY, timeout=20000)
    assert result["stdout"] == "killed\n"
    assert result["data"]["memoryExceeded"] is True


def test_it_bounds_each_process_without_a_memory_cgroup(prober, monkeypatch):
    # The stated fallback: without a memory cgroup, RLIMIT_AS still bounds each process.
    from capabilities.process import cgroups

    real = cgroups.parent_folders
    monkeypatch.setattr(cgroups, "parent_folders", lambda: ({k: v for k, v in real()[0].items() if k != "memory"}, False))
    override(prober, "memory_mb", 256)
    result = python(prober, "block = bytearray(400 * 1024 * 1024)")
    assert result["exitCode"] == 1 and "MemoryError" in result["stderr"]
    assert result["data"]["memoryExceeded"] is False
    assert python(prober, CHILDREN_HOLDING_MEMORY, timeout=20000)["stdout"] == "all held\n"


# -- containment ----------------------------------------------------------------------


def test_cant_run_without_the_process_capability(acme):
    error = refused(acme, "ls")
    assert error.code == "PERMISSION_DENIED" and "Interactive profile does not allow process execution" in error.message


@pytest.mark.parametrize("command", ["rm", "python3", "bash", "sh", "LS", "ls ", "curl"])
def test_cant_run_a_command_off_the_list(advanced, command):
    error = refused(advanced, command, ["-c", "id"])
    assert error.code == "PERMISSION_DENIED" and "allow-list" in error.message


@pytest.mark.parametrize("command", ["/bin/sh", "/usr/bin/ls", "./ls", "../bin/ls", "bin/ls", "ls;id", "ls -la"])
def test_cant_run_a_path_or_a_command_line(advanced, command):
    assert refused(advanced, command).code == "PERMISSION_DENIED"


def test_cant_run_a_listed_name_that_is_a_path_even_if_an_admin_lists_it(advanced):
    # The admin form refuses such entries; a handler must not rely on that.
    ctx = context_for(advanced)
    ctx.policy = dataclasses.replace(ctx.policy, process_commands=("ls", "../../bin/sh", "/bin/sh"))
    for command in ["../../bin/sh", "/bin/sh"]:
        with pytest.raises(CapabilityError) as info:
            execute(ctx, {"command": command, "args": []})
        assert info.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "args",
    [
        [";", "id"],
        ["&&", "id"],
        ["$(id)"],
        ["`id`"],
        ["$HOME", "${PATH}", "~"],
        ["|", "cat", "/etc/passwd"],
        [">", "/pwned.txt"],
        ["*"],
        ["a\nb", "'quoted'", '"double"'],
    ],
)
def test_cant_inject_shell_syntax(advanced, args):
    result = run(advanced, "echo", args)
    assert result["stdout"] == " ".join(args) + "\n"
    assert not (Path(advanced.storage_root()) / "pwned.txt").exists()


def test_cant_reach_programs_off_the_list_through_an_allowed_one(advanced):
    # `env` and `find -exec` run other programs; only the allow-listed ones exist here.
    result = run(advanced, "env", ["sh", "-c", "id"])
    assert result["exitCode"] == 127 and "No such file" in result["stderr"]
    result = run(advanced, "find", ["/", "-maxdepth", "0", "-exec", "python3", "-c", "1", ";"])
    assert "'python3': No such file" in result["stderr"].replace("‘", "'").replace("’", "'")
    listed = run(advanced, "ls", ["/usr/bin", "/bin", "/usr/sbin", "/usr/local", "/usr/libexec"])["stdout"]
    assert "python3" not in listed and "bash" not in listed and "bwrap" not in listed
    assert "sed" in listed and "awk" in listed


@pytest.fixture
def wrapper_user(make_tenant):
    """An Advanced tenant whose admin also allowed more commands that exec others."""
    tenant = make_tenant("wrap-co", "Advanced")
    override(tenant, "process_commands", ADVANCED_COMMANDS + " xargs nice timeout tar")
    return tenant


def test_cant_run_a_program_off_the_list_through_a_command_that_execs(wrapper_user):
    # Programs of the server that are not on the list, by name, by path, under /usr/lib
    # (where `env /usr/lib/jvm/.../java` was found) and through the dynamic loader.
    hidden = ["perl", "/usr/bin/perl", "/usr/bin/python3", "/bin/sh", "/usr/sbin/nologin"]
    hidden += [str(p) for p in sorted(Path("/usr/lib").glob("*/*")) if p.is_file() and os.access(p, os.X_OK)][:3]
    loader = next(str(p) for p in Path("/lib64").glob("ld-linux*"))
    wrappers = {
        "env": lambda program: ["env", [program, "-v"]],
        "nice": lambda program: ["nice", [program, "-v"]],
        "timeout": lambda program: ["timeout", ["5", program, "-v"]],
        "xargs": lambda program: ["xargs", [program, "-v"]],
        "find -exec": lambda program: ["find", ["/", "-maxdepth", "0", "-exec", program, "-v", ";"]],
        "loader": lambda program: ["env", [loader, program]],
        "tar --to-command": lambda program: ["tar", ["-cf", "/dev/null", f"--use-compress-program={program}", "/dev/null"]],
    }
    for program in hidden:
        for how, make in wrappers.items():
            command, args = make(program)
            result = run(wrapper_user, command, args, input="x\n")
            # Nothing ran (its -v would print), and the wrapper says it found nothing.
            assert result["stdout"] == "", (how, program, result)
            stderr = result["stderr"].lower()
            assert "no such file" in stderr or "cannot" in stderr, (how, program, result["stderr"])
    # awk's system() and sed's `e` need a shell, and there is none.
    result = run(wrapper_user, "awk", ["BEGIN { exit system(\"id\") }"])
    assert result["exitCode"] != 0 and "uid=" not in result["stdout"]
    result = run(wrapper_user, "sed", ["e id"], input="x\n")
    assert "uid=" not in result["stdout"]
    # Only the list's programs (and the loader, libraries and prlimit) are executables.
    listed = run(
        wrapper_user, "find", ["/usr", "/bin", "/lib", "/lib64", "-path", "/usr/share", "-prune", "-o", "-type", "f", "-perm", "-u+x", "-print"]
    )["stdout"].split()
    assert all("/lib" in path or path.startswith(("/usr/bin/", "/bin/", "/usr/libexec/")) for path in listed), listed
    assert "/usr/bin/perl" not in listed and not any("chromium" in path or "udev" in path for path in listed)
    # /usr/share (data) and every writable place are noexec.
    mounts = {line.split()[4]: line.split()[5] for line in run(wrapper_user, "cat", ["/proc/self/mountinfo"])["stdout"].splitlines()}
    for place in ("/", "/tmp", "/usr/share"):
        assert "noexec" in mounts[place].split(","), (place, mounts[place])


def test_cant_load_native_code_into_awk(wrapper_user):
    # A real gawk extension, stored by the tenant: @load, AWKLIBPATH, and the system's own
    # extension folder all fail (storage and /tmp are noexec; the system's are not there).
    extensions = sorted(Path("/usr/lib").glob("*/gawk/filefuncs.so"))
    if not extensions:
        pytest.skip("gawk's extensions are not installed")
    files.write_file(context_for(wrapper_user), {"path": "ext/filefuncs.so", "data": extensions[0].read_bytes()})
    for args, env in [
        (["@load \"/ext/filefuncs\"; BEGIN { print \"loaded\" }"], None),
        (["@load \"filefuncs\"; BEGIN { print \"loaded\" }"], {"AWKLIBPATH": "/ext"}),
        (["@load \"filefuncs\"; BEGIN { print \"loaded\" }"], None),
        (["-l", "filefuncs", "BEGIN { print \"loaded\" }"], {"AWKLIBPATH": "/ext"}),
    ]:
        result = run(wrapper_user, "awk", args, env=env)
        assert "loaded" not in result["stdout"] and result["exitCode"] != 0, (args, env, result)
    result = run(wrapper_user, "tee", ["/tmp/x.so"], input=extensions[0].read_bytes().decode("latin-1"))
    result = run(wrapper_user, "awk", ["@load \"/tmp/x\"; BEGIN { print \"loaded\" }"])
    assert "loaded" not in result["stdout"]


def test_cant_bomb_the_server_with_forks(prober):
    marker = f"bomb-{time.time_ns()}"
    started = time.monotonic()
    result = run(prober, "sh", ["-c", f"b() {{ b | b; }}; b # {marker}"], timeout=2000)
    assert time.monotonic() - started < 4
    assert "Cannot fork" in result["stderr"] or "Resource temporarily unavailable" in result["stderr"]
    time.sleep(0.1)
    assert host_processes_with(marker) == []


def test_cant_have_more_processes_than_the_limit(prober):
    limit = SANDBOX_LIMITS["processes"]
    result = python(
        prober,
        """
        import os, time
        children = 0
        try:
            while children < 500:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as e:
            print(children, e.errno)
        """,
        timeout=5000,
    )
    children, error = map(int, result["stdout"].split())
    assert 0 < children < limit
    assert error == 11  # EAGAIN
    assert result["exitCode"] == 0 and not result["timedOut"]


def test_cant_outlive_the_timeout(advanced):
    marker = "1000.0424242"
    started = time.monotonic()
    result = run(advanced, "sleep", [marker], timeout=500)
    assert result["timedOut"] is True
    assert time.monotonic() - started < 1.5
    time.sleep(0.1)
    assert host_processes_with(marker) == []


def test_cant_leave_background_children_behind(prober):
    marker = f"orphan-{time.time_ns()}"
    result = run(prober, "sh", ["-c", f"(sleep 1000 # {marker}\n) & echo started"], timeout=5000)
    assert result["stdout"] == "started\n" and result["timedOut"] is False
    time.sleep(0.1)
    assert host_processes_with(marker) == []


def test_cant_flood_the_server_with_output(advanced):
    override(advanced, "process_max_output", 1024 * 1024)
    started = time.monotonic()
    result = run(advanced, "cat", ["/dev/zero"], timeout=30000)  # endless
    assert time.monotonic() - started < 3
    assert len(result["stdout"]) == 1024 * 1024
    assert result["truncated"] is True and result["data"]["stdoutTruncated"] is True
    assert result["data"]["signal"] == "SIGPIPE"
    # About a gigabyte of digits: cut at the cap, and over long before seq could finish.
    started = time.monotonic()
    result = run(advanced, "seq", ["1", "120000000"], timeout=30000)
    assert time.monotonic() - started < 3
    assert result["truncated"] is True and len(result["stdout"]) == 1024 * 1024
    assert result["stdout"].startswith("1\n2\n3\n")


def test_cant_flood_stderr_either(advanced):
    override(advanced, "process_max_output", 4096)
    result = run(advanced, "ls", ["/nope"] * 200)
    assert len(result["stderr"]) == 4096 and result["data"]["stderrTruncated"] is True


def test_cant_write_outside_the_tenants_storage(advanced):
    for target in ["/usr/bin/evil", "/usr/evil", "/etc/evil", "/lib/evil", "/bin/evil", "/dev/shm/evil", "/proc/evil"]:
        result = run(advanced, "tee", [target], input="pwned")
        assert result["exitCode"] == 1, target
        assert "Read-only file system" in result["stderr"] or "No such file" in result["stderr"], target
    for host_path in ["/usr/evil", "/etc/evil", "/usr/lib/evil", "/dev/shm/evil"]:
        assert not os.path.exists(host_path)


def test_cant_keep_files_in_tmp_between_commands(advanced):
    assert run(advanced, "tee", ["/tmp/left-behind"], input="x")["exitCode"] == 0
    assert run(advanced, "ls", ["-A", "/tmp"])["stdout"] == ""
    assert not (Path(advanced.storage_root()) / "tmp" / "left-behind").exists()


def test_cant_fill_the_servers_memory_through_tmp(prober):
    result = python(
        prober,
        """
        written = 0
        try:
            with open('/tmp/fill', 'wb') as f:
                while written < 200 * 1024 * 1024:
                    f.write(b'x' * 1048576)
                    written += 1048576
                f.flush()
        except OSError as e:
            print(e.errno, written // 1048576)
        """,
    )
    errno_, megabytes = map(int, result["stdout"].split())
    assert errno_ == 28  # ENOSPC
    assert megabytes <= SANDBOX_LIMITS["tmp_bytes"] // (1024 * 1024)


def test_cant_read_the_servers_secrets(advanced, globex):
    storage_of_globex = Path(globex.storage_root())
    for path in [
        "/etc/shadow",
        "/etc/hosts",
        str(Path(settings.BASE_DIR) / "symposium" / "settings.py"),
        str(Path(settings.VAR_DIR) / "secret_key"),
        str(settings.BASE_DIR),
        "/work",
        "/root",
        str(storage_of_globex / "secret.txt"),
    ]:
        result = run(advanced, "cat", [path])
        assert result["exitCode"] != 0, path
        assert "globex's secret" not in result["stdout"]
    assert run(advanced, "cat", ["/proc/1/environ"])["stdout"] == ""
    etc = run(advanced, "ls", ["/etc"])["stdout"].split()
    assert etc == ["group", "ld.so.cache", "nsswitch.conf", "passwd"]
    # Nothing of globex anywhere in acme's view of the world.
    found = run(advanced, "grep", ["-rl", "globex's secret", "/", *(f"--exclude-dir={d}" for d in ("proc", "usr", "lib", "lib64", "dev", "bin"))])
    assert found["stdout"] == ""


def test_cant_see_the_platform_folder(advanced):
    platform = Path(advanced.storage_root()) / ".symposium"
    platform.mkdir()
    (platform / "tenant.sqlite3").write_bytes(b"SQLite format 3\x00")
    assert run(advanced, "ls", ["-A", "/.symposium"])["stdout"] == ""
    result = run(advanced, "tee", ["/.symposium/tenant.sqlite3"], input="overwritten")
    assert result["exitCode"] == 1
    assert (platform / "tenant.sqlite3").read_bytes() == b"SQLite format 3\x00"


def test_cant_open_a_network_socket(prober):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(listener)))
    thread.start()
    try:
        result = python(
            prober,
            f"""
            import socket
            for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET):
                try:
                    socket.socket(family, socket.SOCK_DGRAM if family == socket.AF_NETLINK else socket.SOCK_STREAM)
                    print('opened', family)
                except OSError as e:
                    print('refused', e.errno)
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=1)
                print('connected')
            except OSError as e:
                print('no connection', e.errno)
            """,
        )
    finally:
        thread.join()
        listener.close()
    lines = result["stdout"].splitlines()
    assert lines[:4] == ["refused 97"] * 4  # EAFNOSUPPORT from the seccomp filter
    assert lines[4].startswith("no connection")
    assert accepted == [None]


def _accept(listener):
    try:
        connection, _ = listener.accept()
        connection.close()
        return "accepted"
    except OSError:
        return None


def test_cant_gain_privileges_or_leave_the_namespaces(prober):
    result = python(
        prober,
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        status = dict(line.split(':', 1) for line in open('/proc/self/status') if ':' in line)
        print(os.getuid(), *(status[k].strip() for k in ('CapEff', 'CapBnd', 'NoNewPrivs', 'Seccomp')))
        try:
            os.setuid(0)
            print('setuid allowed')
        except OSError:
            print('setuid refused')
        for name, outcome in [
            ('unshare', libc.unshare(0x10000000)),  # CLONE_NEWUSER
            ('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)),
            ('ptrace', libc.ptrace(16, 1, 0, 0)),  # PTRACE_ATTACH to pid 1
        ]:
            print(name, 'allowed' if outcome == 0 else f'refused {ctypes.get_errno()}')
        """,
    )
    lines = result["stdout"].splitlines()
    # uid 1000, no capabilities at all, no_new_privs, a seccomp filter (mode 2).
    assert lines[0] == "1000 0000000000000000 0000000000000000 1 2"
    assert lines[1:] == ["setuid refused", "unshare refused 1", "mount refused 1", "ptrace refused 1"]


SET_ID = stat.S_ISUID | stat.S_ISGID


@pytest.fixture
def chmodder(make_tenant):
    """An Advanced tenant whose admin also allowed chmod (and python3, to probe with)."""
    tenant = make_tenant("chmod-co", "Advanced")
    override(tenant, "process_commands", ADVANCED_COMMANDS + " chmod python3")
    return tenant


def store_program(tenant, name):
    """A real program (a copy of /usr/bin/true), stored through the file API."""
    files.write_file(context_for(tenant), {"path": name, "data": Path("/usr/bin/true").read_bytes()})
    return Path(tenant.storage_root()) / name


def test_cant_make_a_set_uid_program_on_the_server(chmodder):
    program = store_program(chmodder, "bin-escape")
    result = run(chmodder, "chmod", ["4755", "/bin-escape"])
    assert result["exitCode"] != 0 and "Operation not permitted" in result["stderr"]
    for mode in ("u+s", "g+s", "6755", "2755"):
        assert run(chmodder, "chmod", [mode, "/bin-escape"])["exitCode"] != 0, mode
    # Every call that could set the bits, not only chmod's: fchmod, fchmodat, a file made
    # set-id at creation, a set-gid folder.
    result = python(
        chmodder,
        """
        import os
        attempts = {
            'chmod': lambda: os.chmod('/bin-escape', 0o4755),
            'fchmod': lambda: os.fchmod(os.open('/bin-escape', os.O_RDONLY), 0o2755),
            'fchmodat': lambda: os.chmod('bin-escape', 0o6755, dir_fd=os.open('/', os.O_RDONLY)),
            'create': lambda: os.open('/made-set-id', os.O_CREAT | os.O_WRONLY, 0o4755),
            'mkdir': lambda: os.chmod(os.mkdir('/set-gid-folder') or '/set-gid-folder', 0o2775),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
                print(name, 'allowed')
            except PermissionError:
                print(name, 'refused')
        os.chmod('/bin-escape', 0o755)
        print('plain chmod works')
        """,
    )
    assert result["stdout"].split("\n")[:-1] == [
        "chmod refused", "fchmod refused", "fchmodat refused", "create refused", "mkdir refused", "plain chmod works",
    ], result["stderr"]
    storage = Path(chmodder.storage_root())
    for path in [program, storage / "set-gid-folder"]:
        assert not path.stat().st_mode & SET_ID, path
    assert not (storage / "made-set-id").exists()


def test_cant_own_anything_of_the_servers_user(chmodder):
    # The command is uid 1000 inside; on the server it is never root (and, when the
    # server is root, not the server's user either).
    result = python(chmodder, "open('/made-by-a-command', 'w').write('x'); import os; print(os.getuid())")
    assert result["stdout"] == "1000\n"
    owner = (Path(chmodder.storage_root()) / "made-by-a-command").stat()
    assert owner.st_uid != 0 and owner.st_gid != 0
    if os.geteuid() == 0:
        assert owner.st_uid == settings.SYMPOSIUM_PROCESS_SANDBOX_UID
    else:
        assert owner.st_uid == os.geteuid()
    # Files the file API wrote stay writable by commands, and commands' files by the API.
    store_program(chmodder, "from-the-api")
    assert run(chmodder, "tee", ["-a", "/from-the-api"], input="more")["exitCode"] == 0
    files.write_file(context_for(chmodder), {"path": "made-by-a-command", "data": "replaced"})


def test_cant_run_a_program_it_stored_or_wrote_to_tmp(chmodder):
    store_program(chmodder, "stored-true")
    assert run(chmodder, "chmod", ["755", "/stored-true"])["exitCode"] == 0
    # Through a command that execs its arguments, and through the dynamic loader.
    result = run(chmodder, "env", ["/stored-true"])
    assert result["exitCode"] == 126 and "Permission denied" in result["stderr"]
    result = run(chmodder, "find", ["/stored-true", "-exec", "{}", ";"])
    assert "Permission denied" in result["stderr"]
    result = python(
        chmodder,
        """
        import os, shutil, subprocess, glob
        shutil.copy('/stored-true', '/tmp/x')
        os.chmod('/tmp/x', 0o755)
        for argv in (['/tmp/x'], ['/stored-true']):
            try:
                print(subprocess.run(argv).returncode)
            except PermissionError:
                print('refused')
        loader = glob.glob('/lib64/ld-linux*')[0]
        print(subprocess.run([loader, '/stored-true'], capture_output=True).returncode)
        print(subprocess.run([loader, '/tmp/x'], capture_output=True).returncode)
        mounts = {line.split()[4]: line.split()[5] for line in open('/proc/self/mountinfo')}
        print(mounts['/'], mounts['/tmp'])
        """,
    )
    lines = result["stdout"].splitlines()
    assert lines[:2] == ["refused", "refused"], result
    assert lines[2] != "0" and lines[3] != "0"  # "failed to map segment from shared object"
    for flags in lines[4].split():
        assert {"nosuid", "nodev", "noexec"} <= set(flags.split(",")), lines[4]


def test_cant_override_path_or_the_loader_through_env(advanced):
    for name in ["PATH", "LD_PRELOAD", "ld_library_path", "LD_AUDIT", "BASH_ENV", "GCONV_PATH", "BASH_FUNC_ls%%", "GLIBC_TUNABLES"]:
        error = refused(advanced, "ls", env={name: "/tmp/evil"})
        assert error.code == "INVALID_ARGUMENT", name
    for env in [{"A=B": "x"}, {"1X": "x"}, {"": "x"}, {"X": 1}, {"X": None}, {"X": "a\x00b"}, ["X=1"], "X=1"]:
        assert refused(advanced, "ls", env=env).code == "INVALID_ARGUMENT", env


def test_cant_pass_arguments_that_are_not_strings(advanced):
    for args in [[1, 2], ["ok", None], ["a\x00b"], "ls -la", {"0": "a"}]:
        assert refused(advanced, "echo", args).code == "INVALID_ARGUMENT", args
    assert refused(advanced, "echo", ["x" * 300_000]).code == "INVALID_ARGUMENT"
    for timeout in [0, -5, "10", True, float("nan")]:
        assert refused(advanced, "echo", timeout=timeout).code == "INVALID_ARGUMENT", timeout


def test_it_runs_commands_of_several_calls_at_once(advanced):
    ctx = context_for(advanced)  # threads have no access to the test's database
    results = {}

    def work(i):
        results[i] = execute(ctx, {"command": "printf", "args": [f"call {i}"], "timeout": 5000})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r["stdout"] for i, r in results.items()} == {i: f"call {i}" for i in range(6)}


def test_it_reports_a_broken_sandbox_without_its_details(advanced, monkeypatch, caplog):
    real = sandbox.build_arguments

    def broken(*args):
        return real(*args) + ["--ro-bind", "/nonexistent-symposium-source", "/x"]

    monkeypatch.setattr(sandbox, "build_arguments", broken)
    error = refused(advanced, "ls")
    assert error.code == "INTERNAL"
    assert error.message == "The sandbox could not start the command."
    assert "nonexistent-symposium-source" in caplog.text  # for the administrator, in the log


def test_cant_run_anything_as_root_without_a_process_limit(advanced, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("RLIMIT_NPROC binds when the server is not root")
    monkeypatch.setattr(sandbox.CommandCgroups, "create", classmethod(lambda cls, max_pids, memory: cgroups.CommandCgroups({})))
    error = refused(advanced, "ls")
    assert error.code == "INTERNAL" and "cannot limit the number of processes" in error.message


def test_cant_run_the_platform_as_root_as_shipped():
    # A command maps to the server's user when the server is not root; the shipped
    # units and image must therefore never run it as root.
    repository = Path(settings.BASE_DIR)
    units = sorted((repository / "deploy").glob("*.service"))
    assert units
    for unit in units:
        users = [line.split("=", 1)[1].strip() for line in unit.read_text().splitlines() if line.startswith("User=")]
        assert users and "root" not in users and "0" not in users, unit.name
        assert "RestrictSUIDSGID=yes" in unit.read_text(), unit.name
    users = [line.split()[1] for line in (repository / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
