"""The database capability: a tenant's own SQL database (docs/database.md).

`database.query(sql, params)` runs one statement; `database.transaction(steps)` runs
several, all or nothing. `?` placeholders are bound by the driver, never pasted into the
text. The database is a SQLite file in the tenant's storage by default
(capabilities.database.sqlite), or a schema with its own roles when the platform runs on
PostgreSQL (capabilities.database.postgres). Before anything runs, the text is read
(capabilities.database.sqltext) and checked (capabilities.database.guard).
"""

import hashlib

from django.conf import settings

from capabilities.base import CapabilityError
from capabilities.database import guard, postgres, sqlite
from capabilities.database.limits import MAX_TRANSACTION_STEPS
from capabilities.database.sqltext import POSTGRES, SQLITE, check_params, parse_statement
from capabilities.database.values import check_param

__all__ = ["query", "statement_fingerprint", "transaction"]


def statement_fingerprint(args):
    """The audit target of a query: a fingerprint of the statement and its first two
    words, not the statement, whose literals could hold personal data."""
    sql = args.get("sql")
    if not isinstance(sql, str):
        return sql if isinstance(sql, int) else ""
    return "sql:" + hashlib.sha256(sql.encode()).hexdigest()[:12] + " " + " ".join(sql.split()[:2])[:40]


def _backend():
    if settings.USING_POSTGRES:
        return POSTGRES, postgres
    return SQLITE, sqlite


def _check_access(ctx):
    # decide() has already allowed the call; a handler run anyway (a bug in the broker,
    # a job replayed after a policy change) must still not do more than the policy says.
    if ctx.policy.database_access not in ("full", "complex"):
        profile = ctx.policy.profile_name or "tenant's"
        raise CapabilityError("PERMISSION_DENIED", f"The {profile} profile does not allow database access.")


def _prepare(sql, params, dialect):
    statement = parse_statement(sql, dialect)
    params = [check_param(value, index) for index, value in enumerate(check_params(statement, params))]
    guard.check(statement)
    return statement, params


def query(ctx, args):
    """Run one statement. Reply: data {rows, rowCount, columns, lastInsertId?}."""
    _check_access(ctx)
    dialect, backend = _backend()
    statement, params = _prepare(args.get("sql"), args.get("params"), dialect)
    [result] = backend.run(ctx, [(statement, params)])
    return {"data": result, "rowCount": result["rowCount"], "columns": result["columns"]}


def transaction(ctx, args):
    """Run steps [{query, params}] in one transaction: all of them, or none when one
    fails. Reply: data {results: [one query reply per step], rowCount: their sum}."""
    _check_access(ctx)
    steps = args.get("steps")
    if not isinstance(steps, list) or not steps:
        raise CapabilityError("INVALID_ARGUMENT", "A transaction needs a non-empty array of steps: [{query, params}, ...].")
    if len(steps) > MAX_TRANSACTION_STEPS:
        raise CapabilityError("INVALID_ARGUMENT", f"A transaction has at most {MAX_TRANSACTION_STEPS} steps; this one has {len(steps)}.")
    dialect, backend = _backend()
    prepared = []
    # Every step is read and checked before the first one runs.
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            raise CapabilityError("INVALID_ARGUMENT", f"Step {index + 1}: a step is an object {{query, params}}.")
        sql = step.get("query", step.get("sql"))
        try:
            prepared.append(_prepare(sql, step.get("params"), dialect))
        except CapabilityError as error:
            raise CapabilityError(error.code, f"Step {index + 1}: {error.message}") from None
    results = backend.run(ctx, prepared, steps=True)
    total = sum(result["rowCount"] for result in results)
    return {"data": {"results": results, "rowCount": total}, "rowCount": total}
