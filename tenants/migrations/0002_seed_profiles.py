"""The seed's four permission profiles (DESIGN.md, "Permission profiles").

Numbers the seed gives are used as given; where it is silent (marked "chosen") the value
is ours and is documented in docs/policy.md. Admins may edit all of them afterwards.

A frozen copy of tenants/profiles.py as it was when this migration was written: a
migration must create the same rows whenever it runs. tests/test_profiles.py checks
that the two agree.
"""

from django.db import migrations

MB = 1024 * 1024
GB = 1024 * MB

# Code and executables a block should not drop into storage unless it has "all" access.
BLOCKED = ".exe .dll .so .dylib .sh .bash .bat .cmd .com .msi .ps1 .scr .jar .apk .elf .bin .app .deb .rpm"
CDN = "cdn.jsdelivr.net unpkg.com cdnjs.cloudflare.com fonts.googleapis.com fonts.gstatic.com esm.sh"
# Harmless tools for Advanced tenants: they read and transform text, nothing more.
COMMANDS = "ls cat echo wc head tail sort uniq grep cut tr sed awk date pwd stat du find basename dirname md5sum sha256sum base64 true false sleep env printf seq tee"

PROFILES = [
    dict(
        name="Basic",
        description="Read-only files and CDN fetches. For untrusted, display-only blocks.",
        files_access="read",
        max_file_size=1 * MB,  # chosen: nothing can be written; this bounds reads' replies
        storage_quota=10 * MB,  # chosen
        blocked_extensions=BLOCKED,
        files_rate_per_minute=120,  # chosen
        network_access="cdn",
        cdn_domains=CDN,
        network_rate_per_minute=10,  # seed
        max_response_size=5 * MB,  # chosen
        canvas_max_width=0,  # seed: no canvas
        canvas_max_height=0,
        canvas_formats="",
        canvas_max_ops=0,
        canvas_max_per_run=0,
        canvas_rate_per_minute=0,
        database_access="none",  # seed
        database_rate_per_minute=0,
        database_statement_timeout_ms=1000,
        database_max_rows=1000,
        database_max_result_bytes=1 * MB,
        process_allowed=False,  # seed
        process_commands="",
        process_timeout_seconds=1,
        process_max_output=64 * 1024,
        process_rate_per_minute=0,
        memory_mb=64,  # chosen: "small"
        time_limit_seconds=30,  # chosen: "small"
        console_output_cap=256 * 1024,
        concurrent_runs=2,
    ),
    dict(
        name="Interactive",
        description="Read/write files up to 5 MB, any public host, 1920x1080 PNG canvases.",
        files_access="write",
        max_file_size=5 * MB,  # seed
        storage_quota=100 * MB,  # chosen
        blocked_extensions=BLOCKED,
        files_rate_per_minute=600,
        network_access="all",
        cdn_domains=CDN,
        network_rate_per_minute=30,  # seed
        max_response_size=10 * MB,
        canvas_max_width=1920,  # seed
        canvas_max_height=1080,
        canvas_formats="png",  # seed: image export
        canvas_max_ops=20000,
        canvas_max_per_run=10,
        canvas_rate_per_minute=600,
        database_access="none",  # seed
        database_rate_per_minute=0,
        database_statement_timeout_ms=1000,
        database_max_rows=1000,
        database_max_result_bytes=1 * MB,
        process_allowed=False,
        process_commands="",
        process_timeout_seconds=1,
        process_max_output=64 * 1024,
        process_rate_per_minute=0,
        memory_mb=128,  # seed
        time_limit_seconds=60,  # seed
        console_output_cap=1 * MB,
        concurrent_runs=5,
    ),
    dict(
        name="Data",
        description="Full SQL in the tenant's own database, 50 MB files, 4K canvases in several formats.",
        files_access="write",
        max_file_size=50 * MB,  # seed
        storage_quota=1 * GB,
        blocked_extensions=BLOCKED,
        files_rate_per_minute=1200,
        network_access="all",
        cdn_domains=CDN,
        network_rate_per_minute=60,  # seed
        max_response_size=50 * MB,
        canvas_max_width=3840,  # seed
        canvas_max_height=2160,
        canvas_formats="png jpeg webp",
        canvas_max_ops=50000,
        canvas_max_per_run=20,
        canvas_rate_per_minute=1200,
        database_access="full",  # seed
        database_rate_per_minute=100,  # seed
        database_statement_timeout_ms=5000,
        database_max_rows=10000,
        database_max_result_bytes=10 * MB,
        process_allowed=False,
        process_commands="",
        process_timeout_seconds=1,
        process_max_output=64 * 1024,
        process_rate_per_minute=0,
        memory_mb=256,  # seed
        time_limit_seconds=300,  # seed
        console_output_cap=2 * MB,
        concurrent_runs=10,
    ),
    dict(
        name="Advanced",
        description="Everything, with allow-listed process execution and the highest limits.",
        files_access="all",
        max_file_size=500 * MB,  # seed
        storage_quota=10 * GB,
        blocked_extensions="",
        files_rate_per_minute=6000,
        network_access="all",
        cdn_domains=CDN,
        network_rate_per_minute=200,  # seed
        max_response_size=200 * MB,
        canvas_max_width=7680,  # seed
        canvas_max_height=4320,
        canvas_formats="png jpeg webp gif bmp tiff",  # seed: all formats
        canvas_max_ops=200000,
        canvas_max_per_run=50,
        canvas_rate_per_minute=6000,
        database_access="complex",
        database_rate_per_minute=1000,  # chosen: "higher limits"
        database_statement_timeout_ms=30000,
        database_max_rows=100000,
        database_max_result_bytes=50 * MB,
        process_allowed=True,  # seed
        process_commands=COMMANDS,
        process_timeout_seconds=60,
        process_max_output=10 * MB,
        process_rate_per_minute=120,
        memory_mb=512,  # seed
        time_limit_seconds=600,  # seed
        console_output_cap=5 * MB,
        concurrent_runs=20,
    ),
]


def create_profiles(apps, schema_editor):
    PermissionProfile = apps.get_model("tenants", "PermissionProfile")
    for values in PROFILES:
        PermissionProfile.objects.update_or_create(name=values["name"], defaults=values)


def remove_profiles(apps, schema_editor):
    PermissionProfile = apps.get_model("tenants", "PermissionProfile")
    PermissionProfile.objects.filter(name__in=[p["name"] for p in PROFILES], tenants__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(create_profiles, remove_profiles)]
