"""The statement guard: statements and names a block's SQL may not use.

# SECURITY: this is the second line of defence, not the first. On SQLite the first is the
# authorizer (capabilities.database.sqlite); on PostgreSQL it is the tenant's own login
# role, which owns nothing but its schema and cannot switch to any other role
# (capabilities.database.postgres). The guard refuses, with a message that says why,
# what would otherwise fail obscurely or would let a tenant learn about other tenants
# through the shared catalogs: session and role changes, transaction control, COPY,
# procedural code that could build SQL the guard never sees, and the catalog tables and
# functions that describe every schema of the database.

Every rule is data below, with the reason it exists.
"""

import re

from capabilities.base import CapabilityError
from capabilities.database.limits import MAX_BODY_NESTING
from capabilities.database.sqltext import POSTGRES, SQLITE, paren_depths, split_statements, tokenize

TRANSACTIONS = "Transactions are managed by the platform: each query is its own transaction; use database.transaction() to run several statements all or nothing."

# Statements refused by their first word, with the reason the block author reads.
COMMON_REFUSED = {
    "begin": TRANSACTIONS,
    "start": TRANSACTIONS,
    "commit": TRANSACTIONS,
    "end": TRANSACTIONS,
    "rollback": TRANSACTIONS,
    "abort": TRANSACTIONS,
    "savepoint": TRANSACTIONS,
    "release": TRANSACTIONS,
    "vacuum": "VACUUM is not available: the platform maintains the database.",
}

SQLITE_REFUSED = {
    **COMMON_REFUSED,
    # ATTACH opens another database file: the one way out of the tenant's own file.
    "attach": "ATTACH is not available: a tenant has one database, its own.",
    "detach": "DETACH is not available: a tenant has one database, its own.",
}

SESSION = "Session settings are fixed by the platform (role, schema search path, timeouts); SET and RESET are not available."
PG_REFUSED = {
    **COMMON_REFUSED,
    # The role, the search path and the statement timeout are what confine the tenant.
    "set": SESSION,
    "reset": SESSION,
    "discard": SESSION,
    # COPY reads and writes server files and runs programs (TO PROGRAM); COPY to the
    # client is not how blocks get rows.
    "copy": "COPY is not available: it reaches the server's files and programs. Use INSERT and SELECT.",
    # Procedural code builds SQL at run time (EXECUTE '...'), out of the guard's sight.
    "do": "DO blocks are not available: only SQL statements (and SQL-language functions) can be run.",
    # Privileges: a tenant's objects are its own and stay private.
    "grant": "GRANT is not available: a tenant's tables are private to it.",
    "revoke": "REVOKE is not available: a tenant's tables are private to it.",
    "reassign": "REASSIGN OWNED is not available.",
    "security": "SECURITY LABEL is not available.",
    # LISTEN/NOTIFY channels are shared by the whole database server.
    "listen": "LISTEN and NOTIFY are not available: their channels are shared by every tenant.",
    "notify": "LISTEN and NOTIFY are not available: their channels are shared by every tenant.",
    "unlisten": "LISTEN and NOTIFY are not available: their channels are shared by every tenant.",
    "load": "LOAD is not available: it loads server libraries.",
    "checkpoint": "CHECKPOINT is not available: the platform maintains the database.",
    "import": "IMPORT FOREIGN SCHEMA is not available.",
    # Cursors and prepared statements live in the session, which the platform reuses;
    # parameters are bound for you and rows are fetched in batches already.
    "prepare": "PREPARE is not available: pass ? parameters with the query instead.",
    "execute": "EXECUTE is not available: pass ? parameters with the query instead.",
    "deallocate": "DEALLOCATE is not available: the platform prepares nothing that needs it.",
    "declare": "Cursors are not available: the platform fetches rows in batches itself.",
    "fetch": "Cursors are not available: the platform fetches rows in batches itself.",
    "move": "Cursors are not available: the platform fetches rows in batches itself.",
    "close": "Cursors are not available: the platform fetches rows in batches itself.",
}

# Object kinds a tenant may not CREATE, ALTER or DROP: cluster-wide or database-wide
# objects (roles, databases, tablespaces, extensions, languages, foreign servers,
# replication), and schemas (a tenant has exactly one, the platform's).
PG_REFUSED_OBJECTS = {
    "role", "user", "group", "database", "schema", "extension", "language", "tablespace",
    "server", "foreign", "subscription", "publication", "event", "system", "default",
    "transform", "access", "owned", "collation",
}  # fmt: skip

# Words of CREATE that may stand between CREATE and the kind of object.
CREATE_MODIFIERS = {
    "or", "replace", "temp", "temporary", "unique", "global", "local", "unlogged",
    "materialized", "recursive", "trusted", "procedural", "constraint", "if", "not", "exists",
}  # fmt: skip

# Names a PostgreSQL statement may not use, anywhere in its code.
#
# pg_*: the system catalogs (pg_class, pg_namespace, pg_proc, pg_stat_*, ...) list every
# schema, table, column, view definition and function body of the database, other
# tenants' included, and the pg_* functions read files, signal backends, take advisory
# locks, or describe objects by number (pg_get_viewdef(oid)). A few harmless ones are
# allowed below.
PG_ALLOWED_PG_NAMES = {
    "pg_typeof", "pg_column_size", "pg_size_pretty", "pg_size_bytes", "pg_sleep", "pg_sleep_for",
    "pg_sleep_until", "pg_input_is_valid", "pg_input_error_info", "pg_trigger_depth",
}  # fmt: skip
PG_REFUSED_NAMES = {
    # (The object-name types, regclass and its kin, are refused by PG_REFUSED_PATTERNS.)
    # set_config('role', ...) and set_config('search_path', ...) are SET in disguise.
    "set_config",
    # These run SQL given as a string, out of the guard's sight.
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
    "cursor_to_xmlschema", "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml",
    "database_to_xmlschema", "database_to_xml_and_xmlschema", "ts_stat", "ts_rewrite", "dblink",
    "dblink_exec",
    # These name or describe any object by number, other tenants' included.
    "format_type", "obj_description", "col_description", "shobj_description", "oidvectortypes",
    # The schemas of the session's search path (the platform sets it; nothing to learn).
    "current_schemas",
    # Whether row security is active on a table named or numbered: another tenant's
    # table's existence.
    "row_security_active",
    # aclitem's output names the roles it grants to and from: acldefault('r', 16390) or
    # '16390=r/16390'::aclitem print role names.
    "aclitem", "_aclitem", "aclitemin", "aclitemout", "aclitemeq", "makeaclitem", "acldefault",
    "aclexplode", "aclcontains", "aclinsert", "aclremove", "hash_aclitem", "hash_aclitem_extended",
    # The database server's and the platform's addresses.
    "inet_server_addr", "inet_server_port", "inet_client_addr", "inet_client_port",
    # Large objects live outside every schema: they would escape the tenant's schema, its
    # quota and its deletion.
    "lo_import", "lo_export", "lo_create", "lo_creat", "lo_open", "lo_close", "lo_unlink",
    "lo_put", "lo_get", "lo_from_bytea", "lo_truncate", "lo_truncate64", "lo_lseek",
    "lo_lseek64", "lo_tell", "lo_tell64", "loread", "lowrite",
    # A rule's action can be NOTIFY; the channels are shared by every tenant.
    "notify", "listen", "unlisten",
}  # fmt: skip
# The object-name types: a value of any of them prints as an object's name (16390::regclass
# is 'a_table', 16390::regrole a role), and reads a name back into its number (which says
# whether another tenant's object exists).
PG_OBJECT_NAME_TYPES = (
    "class", "collation", "config", "dictionary", "namespace", "oper", "operator", "proc",
    "procedure", "role", "type",
)  # fmt: skip
PG_REFUSED_PATTERNS = [
    # to_regclass('x') and friends: a name's number, or NULL if no such object.
    re.compile(r"^to_reg"),
    # has_table_privilege(16390, 'select') and the like answer for objects by number.
    re.compile(r"^has_\w*_privilege$"),
    # The types themselves (casts, typed literals, arrays: _regclass) and their input,
    # output, binary receive and send functions, which take or give the name:
    # regclassout(16390), regprocout(...), regtypeout(...), regroleout(...), and so on.
    re.compile(rf"^_?reg(?:{'|'.join(PG_OBJECT_NAME_TYPES)})(?:in|out|recv|send)?$"),
    # information_schema's helper functions, which read the catalogs by number.
    re.compile(r"^_pg_"),
]
# Why the statement guard and not the server: the family lives in pg_catalog, owned by
# the bootstrap superuser; the platform's user is usually not one, and cannot REVOKE
# EXECUTE on them from PUBLIC (nor should a database-wide change depend on it). A type's
# output function also runs with no EXECUTE check at all whenever a value of the type is
# printed, so only refusing the types' names in the statement closes the casts. The
# pg_* names, which hold the rest of the family (pg_get_*def, pg_describe_object,
# pg_identify_object*), are refused above as a whole.


def refuse(message):
    raise CapabilityError("PERMISSION_DENIED", message)


def check(statement):
    """Refuse what the statement may not do; return nothing when it may run."""
    if statement.dialect == SQLITE:
        _check_sqlite(statement.tokens)
    else:
        _check_postgres(list(statement.tokens), nesting=0)


def _check_sqlite(tokens):
    keyword = tokens[0].value if tokens[0].kind == "word" else ""
    if keyword in SQLITE_REFUSED:
        refuse(SQLITE_REFUSED[keyword])


def _object_kind(tokens):
    """For CREATE/ALTER/DROP: the kind of object (the first word past the modifiers)."""
    for token in tokens[1:]:
        if token.kind != "word":
            return ""
        if token.value not in CREATE_MODIFIERS:
            return token.value
    return ""


def _check_postgres(tokens, nesting):
    first = tokens[0]
    keyword = first.value if first.kind == "word" else ""
    if keyword in PG_REFUSED:
        refuse(PG_REFUSED[keyword])
    if keyword in ("create", "alter", "drop"):
        kind = _object_kind(tokens)
        if kind in PG_REFUSED_OBJECTS:
            refuse(f"{keyword.upper()} {kind.upper()} is not available: a tenant has one schema and one role, the platform's.")
        if kind in ("function", "procedure", "routine", "aggregate") and keyword in ("create", "alter"):
            _check_routine(tokens, keyword, nesting)
    _check_names(tokens)


def _check_names(tokens):
    for index, token in enumerate(tokens):
        if token.prefix == "u&":
            # U&"\0070g_class" spells a name the guard would otherwise read.
            refuse("Unicode-escaped strings and names (U&'...') are not available.")
        if token.kind not in ("word", "ident"):
            continue
        name = token.value.lower()
        if name.startswith("pg_") and name not in PG_ALLOWED_PG_NAMES:
            refuse(
                f"{token.value[:60]!r} is not available: the system catalogs and pg_ functions describe every schema "
                "of the database server. To list your own tables, query information_schema.tables."
            )
        if name in PG_REFUSED_NAMES or any(p.match(name) for p in PG_REFUSED_PATTERNS):
            refuse(f"{token.value[:60]!r} is not available to blocks.")
        if name == "public" and index + 1 < len(tokens) and tokens[index + 1].kind == "op" and tokens[index + 1].value == ".":
            # The platform's own tables live in the public schema.
            refuse("The public schema belongs to the platform; a tenant's tables are in its own schema (use unqualified names).")


def _check_routine(tokens, keyword, nesting):
    """CREATE/ALTER FUNCTION, PROCEDURE, ROUTINE, AGGREGATE: only SQL-language bodies,
    whose statements obey the same rules, and no per-function settings (a function's
    SET clause changes the role or the search path while it runs)."""
    depths = paren_depths(tokens)
    for token, depth in zip(tokens, depths):
        if depth == 0 and token.kind == "word" and token.value in ("set", "reset"):
            refuse("Functions cannot carry SET or RESET settings: session settings are fixed by the platform.")
    if keyword == "alter" or _object_kind(tokens) == "aggregate":
        return
    # Every LANGUAGE clause at the top level must say sql (PostgreSQL refuses two
    # clauses that disagree, so the last one cannot hide behind the first).
    languages = [
        tokens[index + 1].value.lower()
        for index, (token, depth) in enumerate(zip(tokens, depths))
        if depth == 0 and token.kind == "word" and token.value == "language" and index + 1 < len(tokens)
    ]
    if not languages and any(t.kind == "word" and t.value == "atomic" for t in tokens):
        languages = ["sql"]
    if not languages or any(language != "sql" for language in languages):
        named = next((language for language in languages if language != "sql"), "(none given)")
        refuse(
            f"Functions in language {named[:30]!r} are not available: only LANGUAGE sql. "
            "Procedural languages build SQL at run time, out of the platform's checks."
        )
    if nesting >= MAX_BODY_NESTING:
        refuse("SQL function bodies are nested too deeply.")
    # The body is SQL in a string ('...', E'...', $$...$$) after AS; PostgreSQL joins
    # string literals separated by a line break, so consecutive strings are one body.
    for body in _bodies(tokens):
        for body_statement in split_statements(tokenize(body, POSTGRES), POSTGRES):
            _check_postgres(body_statement, nesting + 1)


def _bodies(tokens):
    bodies, current, collecting = [], [], False
    for token in tokens:
        if token.kind == "string" and collecting:
            current.append(token.value)
            continue
        if current:
            bodies.append("".join(current))
            current = []
        collecting = token.kind == "word" and token.value == "as" or (collecting and token.kind == "op" and token.value == ",")
    if current:
        bodies.append("".join(current))
    return bodies
