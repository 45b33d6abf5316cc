"""The block's arguments to process.execute, checked one by one.

Nothing the block sends is interpreted by a shell or a path lookup: the command is a
bare name looked up by the server in /usr/bin and /bin, the arguments become argv as
they are (so `echo $HOME` prints `$HOME`), and the environment is a list of names and
values checked against the variables that change how programs load code.
"""

import os
import re
import time
from dataclasses import dataclass, field

from capabilities.base import CapabilityError
from capabilities.process.limits import BASE_ENVIRONMENT, SANDBOX_LIMITS

COMMAND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

# Where commands are looked up, on the server. Only these folders: a command's name never
# becomes a path the block chose.
COMMAND_FOLDERS = ("/usr/bin", "/bin")
# A command must resolve (through Debian's /etc/alternatives links, say) to a program in
# these trees, the ones the sandbox shows read-only.
SYSTEM_TREES = ("/usr/", "/bin/", "/lib/", "/lib64/")

# Variables that change which code a program runs (the dynamic loader's LD_*, glibc's
# GCONV_PATH and friends, the shells' startup files) or the fixed PATH. Refused rather than
# dropped, so the block's author learns why a setting had no effect.
REFUSED_ENV_NAMES = {
    "PATH", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH", "GLOBIGNORE",
    "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "NIS_PATH", "NLSPATH",
    "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR", "GLIBC_TUNABLES", "MALLOC_CHECK_", "MALLOC_TRACE",
    "PERL5LIB", "PERL5OPT", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "RUBYOPT", "RUBYLIB",
    "NODE_OPTIONS", "JAVA_TOOL_OPTIONS",
}
REFUSED_ENV_PREFIXES = ("LD_", "BASH_FUNC_", "MALLOC_")

# A command stops this long before the call's deadline, so that the broker has a moment
# to carry its result back before the block gives up waiting.
REPLY_MARGIN_SECONDS = 0.25


@dataclass
class ProcessRequest:
    command: str
    program: str  # the program's real path on the server, for the read-only bind
    args: list
    env: dict
    cwd: object  # a TenantPath
    stdin: bytes | None
    timeout: float  # seconds
    allowed_programs: dict = field(default_factory=dict)  # name -> real path, all the tenant's commands
    # When (time.monotonic()) the command must have stopped whatever its timeout, so
    # that a slow sandbox setup on a loaded server never carries the call past its
    # deadline; None when the call has no deadline.
    stop_by: float | None = None


def resolve_command(name):
    """The real path of the program `name` in /usr/bin or /bin, or None."""
    for folder in COMMAND_FOLDERS:
        real = os.path.realpath(os.path.join(folder, name))
        if real.startswith(SYSTEM_TREES) and os.path.isfile(real) and os.access(real, os.X_OK):
            return real
    return None


def check_command(policy, command):
    if not isinstance(command, str) or not command:
        raise CapabilityError("INVALID_ARGUMENT", "A command name (a string) is required.")
    profile = policy.profile_name or "tenant's"
    # decide() has said this already; a handler never relies on it (defence in depth).
    if not policy.process_allowed:
        raise CapabilityError("PERMISSION_DENIED", f"The {profile} profile does not allow process execution.")
    if command not in policy.process_commands:
        raise CapabilityError("PERMISSION_DENIED", f"The command {command[:60]!r} is not on this tenant's allow-list.")
    if not COMMAND_NAME.match(command):
        raise CapabilityError("INVALID_ARGUMENT", f"{command[:60]!r} is not a command name (a bare name such as ls).")
    program = resolve_command(command)
    if program is None:
        raise CapabilityError("NOT_FOUND", f"The command {command!r} is not installed on this server.")
    return program


def check_args(args):
    if args is None:
        return []
    if not isinstance(args, (list, tuple)):
        raise CapabilityError("INVALID_ARGUMENT", "The arguments must be a list of strings.")
    if len(args) > SANDBOX_LIMITS["max_args"]:
        raise CapabilityError("INVALID_ARGUMENT", f"At most {SANDBOX_LIMITS['max_args']} arguments can be passed.")
    total = 0
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            raise CapabilityError("INVALID_ARGUMENT", f"args[{index}] must be a string.")
        if "\x00" in arg:
            raise CapabilityError("INVALID_ARGUMENT", f"args[{index}] contains a NUL character.")
        total += len(_utf8(arg, f"args[{index}]")) + 1
    if total > SANDBOX_LIMITS["max_args_bytes"]:
        raise CapabilityError("INVALID_ARGUMENT", f"The arguments are longer than {SANDBOX_LIMITS['max_args_bytes']} bytes.")
    return list(args)


def check_env(env):
    if env is None:
        return dict(BASE_ENVIRONMENT)
    if not isinstance(env, dict):
        raise CapabilityError("INVALID_ARGUMENT", "env must be an object of names to string values.")
    if len(env) > SANDBOX_LIMITS["max_env_vars"]:
        raise CapabilityError("INVALID_ARGUMENT", f"env may hold at most {SANDBOX_LIMITS['max_env_vars']} variables.")
    result, total = dict(BASE_ENVIRONMENT), 0
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise CapabilityError(
                "INVALID_ARGUMENT", f"{str(name)[:60]!r} is not an environment variable name (letters, digits and _)."
            )
        if name.upper() in REFUSED_ENV_NAMES or name.upper().startswith(REFUSED_ENV_PREFIXES):
            raise CapabilityError(
                "INVALID_ARGUMENT", f"env.{name} cannot be set: it would change which code programs run in the sandbox."
            )
        if not isinstance(value, str):
            raise CapabilityError("INVALID_ARGUMENT", f"env.{name} must be a string.")
        if "\x00" in value:
            raise CapabilityError("INVALID_ARGUMENT", f"env.{name} contains a NUL character.")
        total += len(name) + len(_utf8(value, f"env.{name}")) + 2
        result[name] = value
    if total > SANDBOX_LIMITS["max_env_bytes"]:
        raise CapabilityError("INVALID_ARGUMENT", f"env is larger than {SANDBOX_LIMITS['max_env_bytes']} bytes.")
    return result


def check_stdin(value, policy):
    if value is None:
        return None
    if isinstance(value, str):
        value = _utf8(value, "input")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
    else:
        raise CapabilityError("INVALID_ARGUMENT", "input must be a string (or a Uint8Array).")
    if len(value) > policy.max_file_size:
        raise CapabilityError(
            "QUOTA_EXCEEDED", f"input is {len(value)} bytes; at most {policy.max_file_size} bytes can be passed."
        )
    return value


def stop_by(ctx):
    """The monotonic time by which a command must have stopped (ProcessRequest.stop_by)."""
    left = ctx.time_left()
    return None if left is None else time.monotonic() + left - REPLY_MARGIN_SECONDS


def check_timeout(value, ctx):
    """Seconds the command may run: what the block asked for (in ms), never more than the
    profile's process_timeout_seconds nor beyond the call's deadline."""
    ceiling = float(ctx.policy.process_timeout_seconds)
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value <= 0:
            raise CapabilityError("INVALID_ARGUMENT", "timeout must be a positive number of milliseconds.")
        ceiling = min(ceiling, value / 1000)
    ctx.check_deadline("The call's time ran out before the command could start.", keep=REPLY_MARGIN_SECONDS)
    return ctx.timeout(ceiling, keep=REPLY_MARGIN_SECONDS)


def _utf8(text, what):
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CapabilityError("INVALID_ARGUMENT", f"{what} is not valid Unicode text.") from None
