"""Values between a block and its database: parameters in, rows out, and the caps on
what one call may return.

Parameters arrive JSON-decoded (bytes as `bytes`). Rows go back as objects keyed by
column, with values a block can hold: numbers JavaScript represents exactly stay
numbers, bigger integers and exact decimals become strings, dates become ISO 8601
strings, binary values bytes (a Uint8Array in the block). docs/database.md lists them.
"""

import datetime
import decimal
import json
import math
import uuid

from capabilities.base import CapabilityError
from capabilities.database.limits import FETCH_BATCH, VALUE_OVERHEAD

# The largest integer a JavaScript number holds exactly (Number.MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER = 2**53 - 1
INT64_MAX = 2**63 - 1


def check_param(value, index):
    """A parameter as the drivers take it; objects and arrays become JSON text here and
    are wrapped for PostgreSQL by its backend."""
    if value is None or isinstance(value, (bool, str, bytes, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise CapabilityError("INVALID_ARGUMENT", f"Parameter {index + 1} is not a finite number.")
        return value
    if isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise CapabilityError(
                "INVALID_ARGUMENT", f"Parameter {index + 1} is an integer outside the 64-bit range; pass it as a string."
            )
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return value
    raise CapabilityError("INVALID_ARGUMENT", f"Parameter {index + 1} has a type that cannot be bound ({type(value).__name__}).")


def to_block(value):
    """A value read from the database as the block receives it."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return _duration(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_block(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_block(v) for v in value]
    # Network addresses, ranges, geometric types and anything else: their text form,
    # which is what PostgreSQL itself prints.
    return str(value)


def _decimal(value):
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
    if value == value.to_integral_value() and abs(value) <= MAX_SAFE_INTEGER:
        return int(value)
    as_float = float(value)
    # A decimal stays a number only when the number means exactly the same value
    # (0.5, 2.25, an AVG that a double holds); otherwise its digits would be lost.
    if decimal.Decimal(repr(as_float)) == value:
        return as_float
    return str(value)


def _duration(delta):
    """An interval as an ISO 8601 duration: P1DT2H3M4.5S."""
    total = delta.total_seconds()
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    seconds = round(seconds, 6)
    text = f"{sign}P{int(days)}D" if days else f"{sign}P"
    time_part = ""
    if hours:
        time_part += f"{int(hours)}H"
    if minutes:
        time_part += f"{int(minutes)}M"
    if seconds or not (days or hours or minutes):
        time_part += f"{seconds:g}S"
    return text + ("T" + time_part if time_part else "")


def size_of(value):
    """Roughly the bytes a value costs in the reply."""
    if value is None or isinstance(value, bool):
        return VALUE_OVERHEAD
    if isinstance(value, str):
        return VALUE_OVERHEAD + (len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass")))
    if isinstance(value, bytes):
        return VALUE_OVERHEAD + len(value)
    if isinstance(value, (int, float)):
        return VALUE_OVERHEAD + 16
    if isinstance(value, (dict, list)):
        return VALUE_OVERHEAD + len(json.dumps(value, default=lambda v: len(v) * "x" if isinstance(v, bytes) else str(v)))
    return VALUE_OVERHEAD + len(str(value))


def column_keys(names):
    """The keys of the row objects: the column names, with a suffix (_2, _3, ...) for a
    name seen before, so that `SELECT a.id, b.id` keeps both values."""
    keys, seen = [], set()
    for name in names:
        key, n = name, 1
        while key in seen:
            n += 1
            key = f"{name}_{n}"
        seen.add(key)
        keys.append(key)
    return keys


class ResultCollector:
    """Rows of one call, counted against the tenant's caps as they are read, so that a
    million-row result stops at the cap instead of being held in memory first."""

    def __init__(self, policy):
        self.max_rows = policy.database_max_rows
        self.max_bytes = policy.database_max_result_bytes
        self.rows = 0
        self.bytes = 0

    def batch_size(self):
        """How many rows to fetch next: FETCH_BATCH, or fewer when rows are large, so
        that one batch cannot hold much more than the bytes still allowed."""
        if not self.rows:
            return min(50, FETCH_BATCH)
        average = max(self.bytes // self.rows, 1)
        room = max(self.max_bytes - self.bytes, 0)
        return max(1, min(FETCH_BATCH, self.max_rows + 1 - self.rows, room // average + 1))

    def add_rows(self, keys, raw_rows):
        out = []
        key_cost = sum(len(k) for k in keys) + VALUE_OVERHEAD
        for raw in raw_rows:
            self.rows += 1
            if self.rows > self.max_rows:
                raise CapabilityError(
                    "QUOTA_EXCEEDED",
                    f"The result has more than {self.max_rows} rows, this tenant's limit per call. "
                    "Add a LIMIT or a narrower WHERE clause, or read the rows in pages.",
                )
            values = [to_block(v) for v in raw]
            self.bytes += key_cost + sum(size_of(v) for v in values)
            if self.bytes > self.max_bytes:
                raise CapabilityError(
                    "QUOTA_EXCEEDED",
                    f"The result is larger than {self.max_bytes} bytes, this tenant's limit per call. "
                    "Select fewer columns or rows, or read the rows in pages.",
                )
            out.append(dict(zip(keys, values)))
        return out
