"""The seed profiles exist once, as data (tenants/profiles.py): a fresh database holds
exactly those rows, and docs/policy.md shows the same numbers."""

import importlib
import re
from pathlib import Path

import pytest
from django.apps import apps as django_apps

from tenants.models import PermissionProfile
from tenants.profiles import PROFILES

DOCS = Path(__file__).resolve().parent.parent / "docs" / "policy.md"
SEED = importlib.import_module("tenants.migrations.0002_seed_profiles")

pytestmark = pytest.mark.django_db


def profile_rows():
    return {p.name: {f: getattr(p, f) for f in PROFILES[0]} for p in PermissionProfile.objects.all()}


def test_a_fresh_database_holds_exactly_the_profiles_of_the_data_module():
    # Transactional tests empty the database after they run, seed rows included: make
    # the rows again the way migrating a new database does, with the migration's code.
    PermissionProfile.objects.all().delete()
    SEED.create_profiles(django_apps, None)
    assert profile_rows() == {values["name"]: values for values in PROFILES}


def size(value):
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if value >= scale and value % scale == 0:
            return f"{value // scale} {unit}"
    return f"{value} bytes"


def count(value):
    return f"{value // 1000}k" if value >= 1000 and value % 1000 == 0 else str(value)


FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}

# docs/policy.md's profile table, row by row: how each cell is written from a profile.
ROWS = {
    "files": lambda p: {"read": "read", "write": "read/write/delete", "all": "all (any type, recursive delete)"}[p["files_access"]],
    "largest file": lambda p: size(p["max_file_size"]),
    "storage quota": lambda p: size(p["storage_quota"]),
    "files calls/min": lambda p: str(p["files_rate_per_minute"]),
    "network": lambda p: {"none": "none", "cdn": "CDN hosts", "all": "any public host"}[p["network_access"]],
    "network calls/min": lambda p: str(p["network_rate_per_minute"]),
    "largest response": lambda p: size(p["max_response_size"]),
    "canvas": lambda p: "none" if not p["canvas_max_width"] else (
        f"{p['canvas_max_width']}x{p['canvas_max_height']}, " + " ".join(FORMAT_NAMES[f] for f in p["canvas_formats"].split())),
    "database": lambda p: "none" if p["database_access"] == "none" else (
        f"{'full SQL' if p['database_access'] == 'full' else 'full SQL, higher limits'}, {p['database_rate_per_minute']}/min, "
        f"{p['database_statement_timeout_ms'] / 1000:g} s statements, {count(p['database_max_rows'])} rows"),
    "process": lambda p: f"allow-listed commands, {p['process_rate_per_minute']}/min" if p["process_allowed"] else "none",
    "key-value store": lambda p: "none" if not p["kv_max_keys"] else f"{p['kv_max_keys']:,} keys, {size(p['kv_max_bytes'])}",
    "email": lambda p: "none" if not p["email_per_hour"] else f"{p['email_per_hour']}/hour, {p['email_max_recipients']} recipients",
    "images": lambda p: "none" if not p["image_formats"] else (
        "all six formats" if len(p["image_formats"].split()) == 6 else " ".join(FORMAT_NAMES[f] for f in p["image_formats"].split())),
    "realtime messages": lambda p: "none" if not p["realtime_max_message_bytes"] else (
        f"{size(p['realtime_max_message_bytes'])}, {p['realtime_rate_per_minute']}/min"),
    "memory / time": lambda p: f"{p['memory_mb']} MB / {p['time_limit_seconds']} s",
    "CPU time": lambda p: f"{p['cpu_time_limit_ms'] / 1000:g} s",
    "console output kept": lambda p: size(p["console_output_cap"]),
    "runs at once": lambda p: str(p["concurrent_runs"]),
    "calls at once": lambda p: str(p["concurrent_calls"]),
}


def documented_table():
    """The profile table of docs/policy.md as {row: [cell per profile]}, with the marks
    (*) of values that are ours rather than the seed's taken off."""
    lines = [line for line in DOCS.read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [re.sub(r"\*", "", cell).strip() for cell in line.strip("|").split("|")]
        table[cells[0]] = cells[1:]
    return header[1:], table


def test_the_docs_table_shows_the_profiles_numbers():
    names, table = documented_table()
    assert names == [p["name"] for p in PROFILES]
    assert table == {row: [cell(p) for p in PROFILES] for row, cell in ROWS.items()}
