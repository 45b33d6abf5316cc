"""kv.get, kv.set, kv.delete and kv.list: a tenant's key-value state between runs.

Rows live in the platform's database (capabilities.kv.models.KeyValue), keyed by tenant:
every query names ctx.tenant_id, which the broker took from the run's record, so no key a
block names can reach another tenant's rows. An expired key is invisible at once (every
read filters on `expires`) and its row is removed by the tenant's next writes.

The quotas (keys, bytes) are checked in the same transaction as the write, after it:
the tenant's row is locked first (PostgreSQL) or the transaction holds SQLite's write
lock from its start (IMMEDIATE), so two writes in parallel cannot both take the last
free key.
"""

import base64
import binascii
import json
import math
from datetime import timedelta

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import Substr
from django.utils import timezone

from capabilities.base import CapabilityError
from capabilities.kv import limits
from capabilities.kv.models import KeyValue
from tenants.models import Tenant


def _check_enabled(ctx):
    if not ctx.policy.kv_max_keys:
        raise CapabilityError("PERMISSION_DENIED", f"The {ctx.policy.profile_name or 'tenant'} profile does not allow a key-value store.")


def _key(args, name="key"):
    key = args.get(name)
    if not isinstance(key, str) or not key:
        raise CapabilityError("INVALID_ARGUMENT", f"The {name} must be a non-empty string.")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise CapabilityError("INVALID_ARGUMENT", f"The {name} contains a control character; keys are printable text.")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise CapabilityError("INVALID_ARGUMENT", f"The {name} is not valid Unicode text.") from None
    if size > limits.MAX_KEY_BYTES:
        raise CapabilityError("INVALID_ARGUMENT", f"The {name} is {size} bytes; keys are at most {limits.MAX_KEY_BYTES} bytes.")
    return key


def _live(ctx, now):
    return KeyValue.objects.filter(tenant_id=ctx.tenant_id).filter(Q(expires__isnull=True) | Q(expires__gt=now))


def _encode_value(value):
    """(stored bytes, is_bytes) for a JSON value or bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), True
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise CapabilityError(
            "INVALID_ARGUMENT",
            "The value must be JSON (no NaN or Infinity; a Uint8Array only as the whole value), or a Uint8Array.",
        ) from None
    return text.encode("utf-8", "surrogatepass"), False


def _decode_value(row):
    raw = bytes(row.value)
    return raw if row.is_bytes else json.loads(raw.decode("utf-8", "surrogatepass"))


def _ttl(args):
    ttl = args.get("ttl")
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise CapabilityError("INVALID_ARGUMENT", "The ttl must be a positive number of seconds.")
    if ttl > limits.MAX_TTL_SECONDS:
        raise CapabilityError("INVALID_ARGUMENT", f"The ttl is at most {limits.MAX_TTL_SECONDS} seconds (a year).")
    return ttl


def _expiry(row):
    return row.expires.isoformat(timespec="milliseconds").replace("+00:00", "Z") if row.expires else None


def purge_expired(tenant_id=None, batch=limits.PURGE_BATCH):
    """Remove up to `batch` expired rows (of one tenant, or of all). Returns how many."""
    rows = KeyValue.objects.filter(expires__lte=timezone.now())
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    ids = list(rows.values_list("pk", flat=True)[:batch])
    return KeyValue.objects.filter(pk__in=ids).delete()[0] if ids else 0


def kv_get(ctx, args):
    key = _key(args)
    _check_enabled(ctx)
    row = _live(ctx, timezone.now()).filter(key=key).first()
    if row is None:
        return {"data": None, "found": False}
    return {"data": _decode_value(row), "found": True, "expires": _expiry(row)}


def kv_set(ctx, args):
    key = _key(args)
    if "value" not in args:
        raise CapabilityError("INVALID_ARGUMENT", "A value is required (use kv.delete to remove a key).")
    value, is_bytes = _encode_value(args["value"])
    ttl = _ttl(args)
    _check_enabled(ctx)
    policy = ctx.policy
    if len(value) > limits.MAX_VALUE_BYTES:
        raise CapabilityError(
            "QUOTA_EXCEEDED", f"The value is {len(value)} bytes; a value is at most {limits.MAX_VALUE_BYTES} bytes (keep larger data in files).")
    size = len(key.encode("utf-8")) + len(value)
    now = timezone.now()
    expires = now + timedelta(seconds=ttl) if ttl is not None else None
    with transaction.atomic():
        # Serialises this tenant's writes on PostgreSQL (SQLite's IMMEDIATE transactions
        # already hold the write lock), so the quota below is checked against every
        # write committed before this one.
        list(Tenant.objects.select_for_update().filter(pk=ctx.tenant_id).values_list("pk", flat=True))
        purge_expired(ctx.tenant_id)
        old = KeyValue.objects.filter(tenant_id=ctx.tenant_id, key=key).values_list("size", flat=True).first()
        used = _live(ctx, now).exclude(key=key).aggregate(keys=Count("pk"), bytes=Sum("size"))
        keys_after, bytes_after = used["keys"] + 1, (used["bytes"] or 0) + size
        if old is None and keys_after > policy.kv_max_keys:
            raise CapabilityError(
                "QUOTA_EXCEEDED", f"The tenant has {used['keys']} keys, its limit; delete some or let them expire before adding {key[:60]!r}.")
        # A write that shrinks a value is allowed even over the quota (the limit may have
        # been lowered): it is how a tenant gets back under it.
        if bytes_after > policy.kv_max_bytes and size > (old or 0):
            raise CapabilityError(
                "QUOTA_EXCEEDED",
                f"Setting {key[:60]!r} ({size} bytes) would bring the tenant's key-value store to {bytes_after} bytes; "
                f"the quota is {policy.kv_max_bytes} bytes.")
        KeyValue.objects.update_or_create(
            tenant_id=ctx.tenant_id, key=key,
            defaults={"value": value, "is_bytes": is_bytes, "size": size, "expires": expires},
        )
    data = {"key": key, "size": size, "expires": expires.isoformat(timespec="milliseconds").replace("+00:00", "Z") if expires else None}
    return {"data": data}


def kv_delete(ctx, args):
    key = _key(args)
    _check_enabled(ctx)
    now = timezone.now()
    # An expired key counts as absent, as it reads; its row goes either way.
    existed = _live(ctx, now).filter(key=key).exists()
    KeyValue.objects.filter(tenant_id=ctx.tenant_id, key=key).delete()
    return {"data": {"deleted": existed}}


def _cursor_key(cursor):
    if cursor is None or cursor == "":
        return None
    try:
        if not isinstance(cursor, str) or len(cursor) > 2 * limits.MAX_KEY_BYTES:
            raise ValueError
        return base64.urlsafe_b64decode(cursor.encode("ascii") + b"==").decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        raise CapabilityError("INVALID_ARGUMENT", "The cursor is not one that kv.list returned.") from None


def kv_list(ctx, args):
    prefix = args.get("prefix", "")
    if prefix is None:
        prefix = ""
    if not isinstance(prefix, str) or len(prefix.encode("utf-8", "surrogatepass")) > limits.MAX_KEY_BYTES:
        raise CapabilityError("INVALID_ARGUMENT", f"The prefix must be a string of at most {limits.MAX_KEY_BYTES} bytes.")
    limit = args.get("limit", limits.DEFAULT_LIST_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= limits.MAX_LIST_LIMIT:
        raise CapabilityError("INVALID_ARGUMENT", f"The limit must be a whole number from 1 to {limits.MAX_LIST_LIMIT}.")
    after = _cursor_key(args.get("cursor"))
    _check_enabled(ctx)
    rows = _live(ctx, timezone.now())
    if prefix:
        # Not key__startswith: on SQLite that is a LIKE, which ignores case. A substring
        # compared with = is exact on both databases.
        rows = rows.annotate(key_start=Substr("key", 1, len(prefix))).filter(key_start=prefix)
    if after is not None:
        rows = rows.filter(key__gt=after)
    page = list(rows.order_by("key").only("key", "size", "expires")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    cursor = base64.urlsafe_b64encode(page[-1].key.encode("utf-8")).decode("ascii").rstrip("=") if more else None
    keys = [{"key": row.key, "size": row.size, "expires": _expiry(row)} for row in page]
    return {"data": {"keys": keys, "cursor": cursor}}
