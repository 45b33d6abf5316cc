"""The database capability's own limits, one place, each with what it bounds and why.

The profile's limits (statement timeout, rows and bytes a call may return) come from the
tenant's effective policy; these are the platform's, the same for every tenant, and bound
what one call can cost the server whatever the profile says.
"""

# Characters of SQL in one statement. Real statements are a few KB; this bounds the work
# of the lexer and the guard, and the size of what reaches the database server.
MAX_SQL_LENGTH = 256 * 1024

# Parameters bound to one statement. PostgreSQL's protocol allows 65535; a block that
# needs more should insert in several statements.
MAX_PARAMS = 10_000

# Steps of one database.transaction call. Each step still has the statement timeout and
# the whole call the run's deadline; this bounds the size of the reply's bookkeeping.
MAX_TRANSACTION_STEPS = 1_000

# How deeply SQL function bodies may nest CREATE FUNCTION statements that the guard reads
# (a body is SQL text that the guard checks like any statement).
MAX_BODY_NESTING = 4

# Rows fetched from the database per round trip while a result is read and counted
# against the row and byte caps. Small enough that stopping at the cap wastes little.
FETCH_BATCH = 500

# Bytes counted for each value besides its content, roughly what it costs in the JSON
# reply (quotes, commas, the key). Keeps a million empty strings from looking free.
VALUE_OVERHEAD = 8

# PostgreSQL connections one worker process keeps per tenant, and how long an idle one
# stays open. Each tenant connects as its own login role (docs/database.md, "How tenants
# are kept apart"), so connections are per tenant; they are few and short-lived so that
# many tenants do not use up the server's max_connections.
PG_POOL_MAX_SIZE = 2
PG_POOL_MAX_IDLE_SECONDS = 30.0
# Tenant pools one worker process keeps open at once; the least recently used one is
# closed when another tenant needs a pool.
PG_MAX_OPEN_POOLS = 16
# Connections one tenant's login role may hold on the server at once, over every worker:
# a tenant can never take all of max_connections.
PG_TENANT_CONNECTION_LIMIT = 20
# Seconds to wait for a free connection of the tenant's pool (also bounded by the call's
# deadline).
PG_POOL_WAIT_SECONDS = 10.0
# Disk one statement may use for sorts and hashes that spill (temp_file_limit), in KB.
# Set on the tenant's role when the platform connects as a superuser (only a superuser
# may set it): a cartesian join spilling to disk stops here as well as at its timeout.
PG_TEMP_FILE_LIMIT_KB = 1024 * 1024
