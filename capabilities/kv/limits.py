"""The key-value store's own limits, the same for every tenant. The profile's limits
(how many keys, how many bytes in all, calls a minute) come from the effective policy."""

# Bytes of a key (UTF-8). Long enough for "user:<uuid>:settings:<name>", short enough for
# the unique index (PostgreSQL's btree entries must stay under a third of a page).
MAX_KEY_BYTES = 512

# Bytes of one value, encoded (JSON text or the raw bytes). State between runs, not
# storage: larger things belong in files, which have their own quota.
MAX_VALUE_BYTES = 1024 * 1024

# The longest TTL a key may have: a year. A key without one lives until deleted.
MAX_TTL_SECONDS = 365 * 24 * 3600

# Keys returned by one list() call, by default and at most; more come with the cursor.
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000

# Expired rows of the tenant removed by one set(), so that purging never makes a write
# slow (the rest go with later writes, or with `manage.py purgekv`).
PURGE_BATCH = 1000
