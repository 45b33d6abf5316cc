"""process.execute: one allow-listed command, in the sandbox, with the tenant's storage
as its '/' (capabilities.process.sandbox; docs/process.md)."""

import errno
import os
import stat

from capabilities.base import CapabilityError
from capabilities.files.beneath import (
    O_DIR,
    first_non_folder,
    make_dirs_beneath,
    open_beneath,
    open_storage_root,
    opened,
)
from capabilities.files.paths import PLATFORM_FOLDER, SANDBOX_SYSTEM_FOLDERS, parse_tenant_path
from capabilities.process import mounts, sandbox, writes
from capabilities.process.arguments import (
    ProcessRequest,
    check_args,
    check_command,
    check_env,
    check_stdin,
    check_timeout,
    resolve_command,
    stop_by,
)


def execute(ctx, args):
    policy = ctx.policy
    program = check_command(policy, args.get("command"))
    command = args["command"]
    options = args.get("options") if isinstance(args.get("options"), dict) else {}

    def option(name):
        # The proxy API sends options at the top level; accept them nested too.
        return args.get(name, options.get(name))

    request = ProcessRequest(
        command=command,
        program=program,
        args=check_args(args.get("args")),
        env=check_env(option("env")),
        cwd=_check_cwd(option("cwd")),
        stdin=check_stdin(option("input"), policy),
        timeout=check_timeout(option("timeout"), ctx),
        stop_by=stop_by(ctx),
        allowed_programs=_allowed_programs(policy, command, program),
    )

    access = policy.files_access
    writable = access in ("write", "all")
    if access == "none":
        outcome = sandbox.run(request, policy, storage=None)
    else:
        with opened(open_storage_root(ctx)) as root_fd:
            _prepare_storage(root_fd, request.cwd, writable)
            if writable:
                # As root, commands run as a user of their own, which must own the
                # tenant's files to change them (capabilities.process.mounts).
                mounts.hand_storage_to(root_fd, *mounts.sandbox_host_ids())
            outcome = sandbox.run(request, policy, storage=(root_fd, writable))
            if outcome.writes_fd is not None:
                # What the command wrote is kept only if it fits the quota, all of it
                # or none (capabilities.process.writes).
                try:
                    writes.keep(ctx, root_fd, outcome.writes_fd, owner=mounts.sandbox_host_ids() if os.geteuid() == 0 else None)
                finally:
                    os.close(outcome.writes_fd)
    return _reply(outcome, request)


def _check_cwd(value):
    cwd = parse_tenant_path(value if value is not None else "/", what="cwd")
    if not cwd.reserved:
        return cwd
    first = cwd.parts[0]
    if first not in SANDBOX_SYSTEM_FOLDERS:
        raise CapabilityError("PERMISSION_DENIED", f"cwd cannot be '{cwd.display}': {cwd.reserved}.")
    # A folder of the sandbox itself. Under /tmp (private, empty) it is made; under
    # /usr/share, the server's own (read-only) folders; /usr/bin and the top-level
    # folders themselves. The rest of the server's /usr is not in the sandbox
    # (capabilities.process.programs).
    if first == "tmp":
        return cwd
    if cwd.parts[:2] == ("usr", "share"):
        host = "/" + "/".join(cwd.parts)
        if os.path.isdir(host) and not os.path.islink(host) and not cwd.parts[-1].startswith("."):
            return cwd
    elif len(cwd.parts) == 1 or cwd.parts == ("usr", "bin"):
        return cwd
    raise CapabilityError("NOT_FOUND", f"The folder '{cwd.display}' (cwd) does not exist in the sandbox.")


def _allowed_programs(policy, command, program):
    """Every command of the tenant's allow-list that is installed: these, and only these,
    are in the sandbox's /usr/bin (so `env` or `find -exec` can reach the others)."""
    programs = {command: program}
    for name in policy.process_commands:
        if name not in programs:
            real = resolve_command(name)
            if real is not None:
                programs[name] = real
    return programs


def _prepare_storage(root_fd, cwd, writable):
    """Makes the mount points in the tenant's root and the cwd, before bubblewrap needs
    them (it cannot make them in storage bound read-only)."""
    for name in (*SANDBOX_SYSTEM_FOLDERS, PLATFORM_FOLDER):
        try:
            os.mkdir(name, 0o755, dir_fd=root_fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                # A reserved name holding a file or a link could only have been made by
                # hand on the server; mounting over it must not follow it anywhere.
                raise CapabilityError("INTERNAL", f"The tenant's storage holds an unexpected '/{name}'.") from None
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
    if cwd.parts and cwd.parts[0] in SANDBOX_SYSTEM_FOLDERS:
        return  # a system folder of the sandbox itself (cwd: '/tmp')
    try:
        if writable:
            os.close(make_dirs_beneath(root_fd, cwd.parts))
        else:
            os.close(open_beneath(root_fd, cwd.parts, O_DIR))
    except FileNotFoundError:
        raise CapabilityError("NOT_FOUND", f"The folder '{cwd.display}' (cwd) does not exist.") from None
    except OSError as e:
        if e.errno == errno.ENOTDIR and first_non_folder(root_fd, cwd.parts) != "link":
            raise CapabilityError("INVALID_ARGUMENT", f"cwd '{cwd.display}' is not a folder.") from None
        if e.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
            raise CapabilityError(
                "PERMISSION_DENIED", f"cwd '{cwd.display}' leads through a symbolic link; links are never followed."
            ) from None
        raise


def _reply(outcome, request):
    stdout = outcome.stdout.decode("utf-8", errors="replace")
    stderr = outcome.stderr.decode("utf-8", errors="replace")
    truncated = outcome.stdout_truncated or outcome.stderr_truncated
    duration_ms = round(outcome.duration * 1000, 1)
    data = {
        "exitCode": outcome.exit_code,
        "signal": outcome.signal,
        "stdout": stdout,
        "stderr": stderr,
        "durationMs": duration_ms,
        "timedOut": outcome.timed_out,
        "timeoutMs": round(request.timeout * 1000),
        "truncated": truncated,
        "stdoutTruncated": outcome.stdout_truncated,
        "stderrTruncated": outcome.stderr_truncated,
        # The kernel killed the command for passing its memory limit (the whole tree's).
        "memoryExceeded": outcome.memory_limit_hit,
    }
    return {
        "data": data,
        "exitCode": outcome.exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "durationMs": duration_ms,
        "timedOut": outcome.timed_out,
        "truncated": truncated,
    }
