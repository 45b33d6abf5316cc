"""Settings for platform processes started by the fault and cluster tests.

The production settings plus the reliability settings read from the environment, so a
test can give a Daphne or an RQ worker subprocess a heartbeat of a second instead of
five. (Once symposium/settings.py reads these itself, this module changes nothing.)
"""

import os

from symposium.settings import *  # noqa: F401,F403


def _number(name, default):
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


SYMPOSIUM_HEARTBEAT_SECONDS = _number("SYMPOSIUM_HEARTBEAT_SECONDS", 5)
SYMPOSIUM_HEARTBEAT_STALE_SECONDS = _number("SYMPOSIUM_HEARTBEAT_STALE_SECONDS", 30)
SYMPOSIUM_MAX_RUNS_PER_PROCESS = int(_number("SYMPOSIUM_MAX_RUNS_PER_PROCESS", 100))
SYMPOSIUM_FINISH_RETRY_SECONDS = _number("SYMPOSIUM_FINISH_RETRY_SECONDS", 60)
SYMPOSIUM_RQ_RETRIES = int(_number("SYMPOSIUM_RQ_RETRIES", 2))
SYMPOSIUM_AUDIT_BACKLOG = int(_number("SYMPOSIUM_AUDIT_BACKLOG", 50_000))
