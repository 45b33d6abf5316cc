"""Effective policy and the decision on every capability call.

`effective_policy(tenant)` is the tenant's profile with its overrides applied.
`decide(policy, op, args)` says whether a call may go ahead; it is the first check the
broker makes, before rate limits and before any handler runs. It decides per capability
(DECIDERS), then runs the checks the operation itself names (capabilities.registry
describes each operation and points at its checks here; this module knows no operation
by name). Handlers check further what only they can see (paths on disk, addresses after
DNS, the storage quota).

Nothing here trusts the isolate: the operation name and the arguments are the block's
own, and are read as untrusted data.
"""

from dataclasses import dataclass, field, fields, make_dataclass
from urllib.parse import urlsplit

from tenants.models import OVERRIDABLE_FIELDS, PermissionProfile, split_list

LIST_FIELDS = {"blocked_extensions", "cdn_domains", "canvas_formats", "process_commands", "image_formats"}


class PolicyMethods:
    """What an effective policy can do besides carrying its values."""

    def rate_per_minute(self, capability):
        # Email has no per-minute limit: its limit is per hour, counted by its handler
        # once a message is known to be sendable (capabilities/email).
        return getattr(self, f"{capability}_rate_per_minute", 0)

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


def value_type(model_field):
    """The Python type of an overridable field's value in an effective policy."""
    if model_field.name in LIST_FIELDS:
        return tuple  # lists of names are stored as text and read as tuples
    return {"BooleanField": bool, "CharField": str, "TextField": str}.get(model_field.get_internal_type(), int)


# One attribute per overridable profile field (tenants.models.OVERRIDABLE_FIELDS), in the
# model's order, plus the profile's name and which fields the tenant's overrides set. It
# is built from the model, so that a new profile field is a policy value without being
# listed again here. Frozen and defined at module level under its own name, so that it
# pickles (the call context carries it to RQ workers).
EffectivePolicy = make_dataclass(
    "EffectivePolicy",
    [(name, value_type(PermissionProfile._meta.get_field(name))) for name in OVERRIDABLE_FIELDS]
    + [("profile_name", str, field(default="")), ("overridden", frozenset, field(default=frozenset()))],
    bases=(PolicyMethods,),
    frozen=True,
)
EffectivePolicy.__module__ = __name__


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


def decide(policy: EffectivePolicy, op, args: dict, *, tenant_active=True) -> Decision:
    """Whether the call may go ahead under this policy. Every denial names the reason.

    `op` is the operation as capabilities.registry describes it (its capability,
    whether it writes, its own policy checks): the broker has looked it up, and has
    refused a name it does not know, before asking."""
    if not tenant_active:
        return Decision.deny("PERMISSION_DENIED", "This tenant is suspended; it can start no run and make no call.")
    if not isinstance(args, dict):
        return Decision.deny("INVALID_ARGUMENT", "The call's arguments must be an object.")
    decider = DECIDERS.get(op.capability)
    if decider is None:
        # An operation of a capability no policy governs is not allowed (fail closed).
        return Decision.deny("PERMISSION_DENIED", f"No policy governs {str(op.capability)[:40]} calls.")
    decision = decider(policy, op, args)
    for check in op.policy_checks:
        if not decision.allowed:
            break
        decision = check(policy, args)
    return decision


def denied_for_profile(policy, what):
    return Decision.deny("PERMISSION_DENIED", f"The {policy.profile_name or 'tenant'} profile does not allow {what}.")


def decide_files(policy, op, args):
    if policy.files_access == "none":
        return denied_for_profile(policy, "file access")
    if op.writes and policy.files_access == "read":
        return denied_for_profile(policy, "writing or deleting files (read-only access)")
    return ALLOW


def check_file_write(policy, args):
    """A file written: its size, and its type unless the profile allows every type."""
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
    return ALLOW


def check_canvas_size(policy, args):
    """A canvas created: whole pixels, within the profile's largest canvas."""
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
    return ALLOW


def check_export_format(policy, args):
    """An image exported: in one of the profile's formats."""
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


def decide_kv(policy, op, args):
    if not policy.kv_max_keys:
        return denied_for_profile(policy, "a key-value store")
    return ALLOW


def decide_email(policy, op, args):
    if not policy.email_per_hour:
        return denied_for_profile(policy, "sending email")
    return ALLOW


def decide_image(policy, op, args):
    if not policy.image_formats:
        return denied_for_profile(policy, "image processing")
    return ALLOW


def decide_realtime(policy, op, args):
    if not policy.realtime_max_message_bytes:
        return denied_for_profile(policy, "realtime channels")
    return ALLOW


DECIDERS = {
    "files": decide_files,
    "network": decide_network,
    "canvas": decide_canvas,
    "database": decide_database,
    "process": decide_process,
    "kv": decide_kv,
    "email": decide_email,
    "image": decide_image,
    "realtime": decide_realtime,
}
