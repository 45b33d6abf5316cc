"""The key-value capability: JSON (or bytes) state kept between runs, per tenant, in the
platform's database, with TTLs and quotas (docs/kv.md)."""

from capabilities.kv.handlers import kv_delete, kv_get, kv_list, kv_set

__all__ = ["kv_get", "kv_set", "kv_delete", "kv_list"]
