"""Effective policy and the decision on every capability call.

`effective_policy(tenant)` is the tenant's profile with its overrides applied.
`decide(policy, op, args)` says whether a call may go ahead; it is the first check the
broker makes, before rate limits and before any handler runs. Handlers check further
what only they can see (paths on disk, addresses after DNS, the storage quota).

Nothing here trusts the isolate: the operation name and the arguments are the block's
own, and are read as untrusted data.
"""

from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from tenants.models import OVERRIDABLE_FIELDS, PermissionProfile, split_list

# What each operation needs. The broker's allow-list of operations is this dict's keys
# (capabilities.registry checks that every key has a handler).
OPERATION_CAPABILITY = {
    "readFile": "files",
    "writeFile": "files",
    "listDirectory": "files",
    "getFileInfo": "files",
    "fileExists": "files",
    "deleteFile": "files",
    "network.fetch": "network",
    "network.sendWebhook": "network",
    "canvas.createCanvas": "canvas",
    "canvas.draw": "canvas",
    "canvas.exportImage": "canvas",
    "database.query": "database",
    "database.transaction": "database",
    "process.execute": "process",
}
FILE_READ_OPS = {"readFile", "listDirectory", "getFileInfo", "fileExists"}
FILE_WRITE_OPS = {"writeFile", "deleteFile"}
LIST_FIELDS = {"blocked_extensions", "cdn_domains", "canvas_formats", "process_commands"}


@dataclass(frozen=True)
class EffectivePolicy:
    files_access: str
    max_file_size: int
    storage_quota: int
    blocked_extensions: tuple
    files_rate_per_minute: int
    network_access: str
    cdn_domains: tuple
    network_rate_per_minute: int
    max_response_size: int
    canvas_max_width: int
    canvas_max_height: int
    canvas_formats: tuple
    canvas_max_ops: int
    canvas_max_per_run: int
    canvas_rate_per_minute: int
    database_access: str
    database_rate_per_minute: int
    database_statement_timeout_ms: int
    database_max_rows: int
    database_max_result_bytes: int
    process_allowed: bool
    process_commands: tuple
    process_timeout_seconds: int
    process_max_output: int
    process_rate_per_minute: int
    memory_mb: int
    time_limit_seconds: int
    console_output_cap: int
    concurrent_runs: int
    api_rate_per_minute: int
    endpoint_max_body_bytes: int
    max_schedules: int
    schedule_min_interval_minutes: int
    profile_name: str = ""
    overridden: frozenset = frozenset()

    def rate_per_minute(self, capability):
        return getattr(self, f"{capability}_rate_per_minute")

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


assert set(OVERRIDABLE_FIELDS) == {f.name for f in fields(EffectivePolicy)} - {"profile_name", "overridden"}


def profile_values(profile: PermissionProfile):
    return {name: getattr(profile, name) for name in OVERRIDABLE_FIELDS}


def build_policy(values, profile_name="", overridden=()):
    values = dict(values)
    for name in LIST_FIELDS:
        values[name] = tuple(split_list(values[name])) if isinstance(values[name], str) else tuple(values[name])
    return EffectivePolicy(**values, profile_name=profile_name, overridden=frozenset(overridden))


def effective_policy(tenant):
    """The tenant's profile with its overrides applied."""
    values = profile_values(tenant.profile)
    overridden = []
    for override in tenant.overrides.all():
        if override.setting in values:
            values[override.setting] = override.typed_value()
            overridden.append(override.setting)
    return build_policy(values, tenant.profile.name, overridden)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: str = ""
    message: str = ""

    @classmethod
    def deny(cls, code, message):
        return cls(False, code, message)


ALLOW = Decision(True)


def decide(policy: EffectivePolicy, op: str, args: dict, *, tenant_active=True) -> Decision:
    """Whether the call may go ahead under this policy. Every denial names the reason."""
    capability = OPERATION_CAPABILITY.get(op)
    if capability is None:
        return Decision.deny("INVALID_ARGUMENT", f"Unknown operation {str(op)[:40]!r}.")
    if not tenant_active:
        return Decision.deny("PERMISSION_DENIED", "This tenant is suspended; it can start no run and make no call.")
    if not isinstance(args, dict):
        return Decision.deny("INVALID_ARGUMENT", "The call's arguments must be an object.")
    return DECIDERS[capability](policy, op, args)


def denied_for_profile(policy, what):
    return Decision.deny("PERMISSION_DENIED", f"The {policy.profile_name or 'tenant'} profile does not allow {what}.")


def decide_files(policy, op, args):
    if policy.files_access == "none":
        return denied_for_profile(policy, "file access")
    if op in FILE_WRITE_OPS and policy.files_access == "read":
        return denied_for_profile(policy, "writing or deleting files (read-only access)")
    if op == "writeFile":
        data = args.get("data")
        size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data) if isinstance(data, (bytes, bytearray)) else 0
        if size > policy.max_file_size:
            return Decision.deny(
                "QUOTA_EXCEEDED",
                f"The file is {size} bytes; the largest file this tenant may write is {policy.max_file_size} bytes.",
            )
        path = args.get("path")
        if isinstance(path, str) and policy.files_access != "all":
            lowered = path.lower()
            for ext in policy.blocked_extensions:
                if lowered.endswith(ext):
                    return denied_for_profile(policy, f"writing {ext} files")
    return ALLOW


def host_matches(host, patterns):
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) or host == pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def decide_network(policy, op, args):
    if policy.network_access == "none":
        return denied_for_profile(policy, "network access")
    url = args.get("url")
    if not isinstance(url, str) or not url:
        return Decision.deny("INVALID_ARGUMENT", "A URL (a string) is required.")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return Decision.deny("INVALID_ARGUMENT", "The URL is not valid.")
    if parts.scheme not in ("http", "https"):
        return Decision.deny("INVALID_ARGUMENT", "Only http and https URLs can be fetched.")
    if not host:
        return Decision.deny("INVALID_ARGUMENT", "The URL has no host.")
    if policy.network_access == "cdn" and not host_matches(host, policy.cdn_domains):
        return denied_for_profile(policy, f"requests to {host[:100]} (CDN domains only)")
    return ALLOW


def decide_canvas(policy, op, args):
    if not policy.canvas_max_width or not policy.canvas_max_height:
        return denied_for_profile(policy, "canvases")
    if op == "canvas.createCanvas":
        width, height = args.get("width"), args.get("height")
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 1 or value != int(value):
                return Decision.deny("INVALID_ARGUMENT", f"The canvas {name} must be a whole number of pixels, at least 1.")
        if width > policy.canvas_max_width or height > policy.canvas_max_height:
            return Decision.deny(
                "QUOTA_EXCEEDED",
                f"A {int(width)}x{int(height)} canvas is larger than this tenant's limit of "
                f"{policy.canvas_max_width}x{policy.canvas_max_height}.",
            )
    if op == "canvas.exportImage":
        fmt = args.get("format", "png")
        fmt = fmt.lower() if isinstance(fmt, str) else fmt
        fmt = "jpeg" if fmt == "jpg" else "tiff" if fmt == "tif" else fmt
        if fmt not in policy.canvas_formats:
            allowed = ", ".join(policy.canvas_formats)
            return Decision.deny(
                "PERMISSION_DENIED" if fmt in ("png", "jpeg", "webp", "gif", "bmp", "tiff") else "INVALID_ARGUMENT",
                f"Export format {str(fmt)[:20]!r} is not available to this tenant (available: {allowed}).",
            )
    return ALLOW


def decide_database(policy, op, args):
    if policy.database_access == "none":
        return denied_for_profile(policy, "database access")
    return ALLOW


def decide_process(policy, op, args):
    if not policy.process_allowed:
        return denied_for_profile(policy, "process execution")
    command = args.get("command")
    if not isinstance(command, str) or not command:
        return Decision.deny("INVALID_ARGUMENT", "A command name (a string) is required.")
    if command not in policy.process_commands:
        return Decision.deny("PERMISSION_DENIED", f"The command {command[:60]!r} is not on this tenant's allow-list.")
    return ALLOW


DECIDERS = {
    "files": decide_files,
    "network": decide_network,
    "canvas": decide_canvas,
    "database": decide_database,
    "process": decide_process,
}
