"""Realtime channel names, and the channel-layer group that carries a tenant's channel.

A channel name is the tenant's own word ("orders", "build:42"); the group it maps to
holds the tenant's id, taken from the run (a publish) or the URL's tenant (a listener), so
the same name in two tenants is two groups, and no name can reach another tenant's.
"""

import hashlib
import re

from capabilities.base import CapabilityError
from tenants.models import CHANNEL_NAME_PATTERN, split_list

CHANNEL_NAME = re.compile(CHANNEL_NAME_PATTERN)


def valid_channel(name):
    return isinstance(name, str) and CHANNEL_NAME.fullmatch(name) is not None


def check_channel(name):
    if not valid_channel(name):
        raise CapabilityError(
            "INVALID_ARGUMENT",
            "A channel name is 1 to 100 letters, digits and - _ . : (starting with a letter or digit).")
    return name


def group_name(tenant_id, channel):
    # Channel-layer group names allow fewer characters than channel names (no ':') and
    # at most 100 of them: a digest of the name fits every name.
    digest = hashlib.sha256(channel.encode()).hexdigest()[:40]
    return f"realtime.{tenant_id}.{digest}"


def is_public(tenant, channel):
    """Whether the tenant's administrator opened this channel to anyone (no login)."""
    for pattern in split_list(tenant.realtime_public_channels):
        if pattern.endswith("*") and channel.lower().startswith(pattern[:-1]):
            return True
        if channel.lower() == pattern:
            return True
    return False
