"""The four permission profiles of the seed (DESIGN.md, "Permission profiles"), as data.

One dict per profile, one comment per value saying where the number comes from: "seed"
when DESIGN.md gives it, "chosen" with the reason when the seed is silent and the value
is ours. Admins edit the profiles in the admin afterwards; this is what a fresh platform
starts with.

Migration 0002 makes the profiles from this module (the fields its model had then), and
each later migration that adds a profile field fills that field in from here; so these
numbers exist in this one place. tests/test_profiles.py checks that a freshly migrated
database holds exactly what this module says, and that docs/policy.md's table shows the
same numbers. Changing a value here reaches new databases at once; existing ones need a
data migration that applies it.
"""

MB = 1024 * 1024
GB = 1024 * MB

# Code and executables a block should not drop into storage unless it has "all" access.
BLOCKED_EXTENSIONS = ".exe .dll .so .dylib .sh .bash .bat .cmd .com .msi .ps1 .scr .jar .apk .elf .bin .app .deb .rpm"
# Public CDNs serving scripts, styles and fonts: all a display-only block needs to fetch.
CDN_DOMAINS = "cdn.jsdelivr.net unpkg.com cdnjs.cloudflare.com fonts.googleapis.com fonts.gstatic.com esm.sh"
# Harmless tools for Advanced tenants: they read and transform text, nothing more.
SAFE_COMMANDS = (
    "ls cat echo wc head tail sort uniq grep cut tr sed awk date pwd stat du find basename dirname "
    "md5sum sha256sum base64 true false sleep env printf seq tee"
)

# Values of a capability a profile does not have at all. They are never used while the
# capability is off; they are the model's smallest valid values, so that an admin who
# turns the capability on for one tenant starts from a safe limit, not from a large one.
DATABASE_OFF = dict(
    database_access="none",  # seed: no database below Data
    database_rate_per_minute=0,  # unused while access is "none"
    database_statement_timeout_ms=1000,  # chosen: a second, if an override turns SQL on
    database_max_rows=1000,  # chosen: a page of rows, if an override turns SQL on
    database_max_result_bytes=1 * MB,  # chosen: as small as a reply worth having
)
PROCESS_OFF = dict(
    process_allowed=False,  # seed: only Advanced runs processes
    process_commands="",  # nothing is allowed to run
    process_timeout_seconds=1,  # the model's minimum
    process_max_output=64 * 1024,  # chosen: enough for one command's short answer
    process_rate_per_minute=0,  # unused while processes are not allowed
)

BASIC = dict(
    name="Basic",
    description="Read-only files and CDN fetches. For untrusted, display-only blocks.",
    files_access="read",  # seed: read-only files
    max_file_size=1 * MB,  # chosen: nothing can be written; this bounds reads' replies
    storage_quota=10 * MB,  # chosen: room for the files an admin puts there to be read
    blocked_extensions=BLOCKED_EXTENSIONS,  # chosen: the platform's list of executables
    files_rate_per_minute=120,  # chosen: two reads a second is plenty for display
    network_access="cdn",  # seed: CDN only
    cdn_domains=CDN_DOMAINS,  # chosen: the common public CDNs
    network_rate_per_minute=10,  # seed
    max_response_size=5 * MB,  # chosen: a large script bundle or font fits
    canvas_max_width=0,  # seed: no canvas
    canvas_max_height=0,  # seed: no canvas
    canvas_formats="",  # no canvas, so no export format
    canvas_max_ops=0,  # no canvas
    canvas_max_per_run=0,  # no canvas
    canvas_rate_per_minute=0,  # unused without a canvas
    **DATABASE_OFF,
    **PROCESS_OFF,
    memory_mb=64,  # chosen: the seed says "small"
    time_limit_seconds=30,  # chosen: the seed says "small"
    cpu_time_limit_ms=10_000,  # chosen: a display block computes little; a third of its wall time
    console_output_cap=256 * 1024,  # chosen: a display block logs little
    concurrent_runs=2,  # chosen: one page with a couple of blocks at once
    concurrent_calls=2,  # chosen: as many as its runs; display blocks make few slow calls
    # Saved blocks: API requests, HTTP endpoint bodies, schedules.
    api_rate_per_minute=60,  # chosen: an application polling once a second
    endpoint_max_body_bytes=64 * 1024,  # chosen: a form post, not an upload
    max_schedules=0,  # spec: Basic has no schedules
    schedule_min_interval_minutes=15,  # unused without schedules
    # Key-value state, email, images and realtime channels: a display-only block has none.
    kv_max_keys=0,  # none
    kv_max_bytes=0,  # none
    kv_rate_per_minute=0,  # unused without a store
    email_per_hour=0,  # spec: Basic sends no email
    email_max_recipients=1,  # unused: the model's smallest valid value
    email_max_bytes=1 * MB,  # unused
    email_max_attachment_bytes=1,  # unused: the model's smallest valid value
    image_formats="",  # no image processing
    image_max_frames=1,  # unused
    image_rate_per_minute=0,  # unused
    realtime_max_message_bytes=0,  # no realtime channels
    realtime_rate_per_minute=0,  # unused
)

INTERACTIVE = dict(
    name="Interactive",
    description="Read/write files up to 5 MB, any public host, 1920x1080 PNG canvases.",
    files_access="write",  # seed: read/write/delete
    max_file_size=5 * MB,  # seed
    storage_quota=100 * MB,  # chosen: twenty files of the largest size
    blocked_extensions=BLOCKED_EXTENSIONS,  # chosen: the platform's list of executables
    files_rate_per_minute=600,  # chosen: ten a second, for dashboards that poll files
    network_access="all",  # seed: any public host
    cdn_domains=CDN_DOMAINS,  # chosen: used only if an admin narrows access to "cdn"
    network_rate_per_minute=30,  # seed
    max_response_size=10 * MB,  # chosen: twice the largest file it may write
    canvas_max_width=1920,  # seed
    canvas_max_height=1080,  # seed
    canvas_formats="png",  # seed: PNG export
    canvas_max_ops=20000,  # chosen: a detailed chart, not an animation's worth
    canvas_max_per_run=10,  # chosen: a dashboard's charts
    canvas_rate_per_minute=600,  # chosen: as for files
    **DATABASE_OFF,
    **PROCESS_OFF,
    memory_mb=128,  # seed
    time_limit_seconds=60,  # seed
    cpu_time_limit_ms=30_000,  # chosen: half its wall time; the rest is waiting on calls
    console_output_cap=1 * MB,  # chosen: enough to debug with, small to store
    concurrent_runs=5,  # chosen: a few users of one tenant at once
    concurrent_calls=4,  # chosen: a quarter of a server's 16 threads
    api_rate_per_minute=120,  # chosen: two requests a second per token
    endpoint_max_body_bytes=1 * MB,  # chosen: a small upload
    max_schedules=5,  # chosen: a few periodic jobs
    schedule_min_interval_minutes=15,  # spec's example: every 15 minutes at most
    kv_max_keys=1000,  # chosen: settings and small state of a few pages
    kv_max_bytes=10 * MB,  # chosen: a tenth of what its files may hold
    kv_rate_per_minute=600,  # chosen: ten a second, as files
    email_per_hour=10,  # spec
    email_max_recipients=10,  # chosen: a team, not a mailing list
    email_max_bytes=5 * MB,  # chosen: its largest file fits as an attachment
    email_max_attachment_bytes=5 * MB,  # chosen: its largest file
    image_formats="png jpeg webp gif",  # chosen: the web's formats
    image_max_frames=50,  # chosen: a short animation
    image_rate_per_minute=120,  # chosen: two a second; each costs CPU
    realtime_max_message_bytes=16 * 1024,  # chosen: a status update, not a file
    realtime_rate_per_minute=600,  # chosen: ten a second, a live page's pace
)

DATA = dict(
    name="Data",
    description="Full SQL in the tenant's own database, 50 MB files, 4K canvases in several formats.",
    files_access="write",  # seed: read/write/delete
    max_file_size=50 * MB,  # seed
    storage_quota=1 * GB,  # chosen: twenty files of the largest size
    blocked_extensions=BLOCKED_EXTENSIONS,  # chosen: the platform's list of executables
    files_rate_per_minute=1200,  # chosen: pipelines read and write many small files
    network_access="all",  # seed: any public host
    cdn_domains=CDN_DOMAINS,  # chosen: used only if an admin narrows access to "cdn"
    network_rate_per_minute=60,  # seed
    max_response_size=50 * MB,  # chosen: as large as the largest file it may write
    canvas_max_width=3840,  # seed
    canvas_max_height=2160,  # seed
    canvas_formats="png jpeg webp",  # seed: several formats
    canvas_max_ops=50000,  # chosen: a 4K chart with many points
    canvas_max_per_run=20,  # chosen: a report's figures
    canvas_rate_per_minute=1200,  # chosen: as for files
    database_access="full",  # seed: full SQL
    database_rate_per_minute=100,  # seed
    database_statement_timeout_ms=5000,  # chosen: an analytical query, not a runaway one
    database_max_rows=10000,  # chosen: a report's worth of rows per statement
    database_max_result_bytes=10 * MB,  # chosen: 10,000 rows of about 1 KB
    **PROCESS_OFF,
    memory_mb=256,  # seed
    time_limit_seconds=300,  # seed
    cpu_time_limit_ms=150_000,  # chosen: half its wall time, for pipelines that compute
    console_output_cap=2 * MB,  # chosen: pipelines log progress
    concurrent_runs=10,  # chosen: scheduled jobs and users together
    concurrent_calls=6,  # chosen: pipelines overlap a few slow calls
    api_rate_per_minute=600,  # chosen: ten a second per token
    endpoint_max_body_bytes=10 * MB,  # chosen: a data file posted for processing
    max_schedules=20,  # chosen: data jobs
    schedule_min_interval_minutes=1,  # spec's example: every minute
    kv_max_keys=100_000,  # chosen: state of data jobs
    kv_max_bytes=100 * MB,  # chosen: a tenth of its storage
    kv_rate_per_minute=1200,  # chosen: twenty a second
    email_per_hour=100,  # spec
    email_max_recipients=50,  # chosen: a report's distribution list
    email_max_bytes=20 * MB,  # chosen: a report with its charts
    email_max_attachment_bytes=10 * MB,  # chosen: most mail relays refuse more
    image_formats="png jpeg webp gif bmp tiff",  # chosen: as its canvas formats
    image_max_frames=200,  # chosen
    image_rate_per_minute=300,  # chosen: five a second
    realtime_max_message_bytes=64 * 1024,  # chosen: a table of results
    realtime_rate_per_minute=1200,  # chosen: twenty a second
)

ADVANCED = dict(
    name="Advanced",
    description="Everything, with allow-listed process execution and the highest limits.",
    files_access="all",  # seed: all operations, any type
    max_file_size=500 * MB,  # seed
    storage_quota=10 * GB,  # chosen: twenty files of the largest size
    blocked_extensions="",  # "all" access may write any type
    files_rate_per_minute=6000,  # chosen: a hundred a second
    network_access="all",  # seed: any public host
    cdn_domains=CDN_DOMAINS,  # chosen: used only if an admin narrows access to "cdn"
    network_rate_per_minute=200,  # seed
    max_response_size=200 * MB,  # chosen: large downloads, still bounded in memory
    canvas_max_width=7680,  # seed
    canvas_max_height=4320,  # seed
    canvas_formats="png jpeg webp gif bmp tiff",  # seed: all formats
    canvas_max_ops=200000,  # chosen: an 8K canvas with dense drawing
    canvas_max_per_run=50,  # chosen: a large report's figures
    canvas_rate_per_minute=6000,  # chosen: as for files
    database_access="complex",  # chosen: full SQL plus the seed's "complex queries"
    database_rate_per_minute=1000,  # chosen: the seed says "higher limits"
    database_statement_timeout_ms=30000,  # chosen: long analytical queries
    database_max_rows=100000,  # chosen: ten times Data's
    database_max_result_bytes=50 * MB,  # chosen: 100,000 rows of about 500 bytes
    process_allowed=True,  # seed
    process_commands=SAFE_COMMANDS,  # chosen: text tools only, no shells or compilers
    process_timeout_seconds=60,  # chosen: a minute per command, within the run's ten
    process_max_output=10 * MB,  # chosen: a large listing or transformed file
    process_rate_per_minute=120,  # chosen: two commands a second
    memory_mb=512,  # seed
    time_limit_seconds=600,  # seed
    cpu_time_limit_ms=600_000,  # chosen: its whole wall time, for the longest computations
    console_output_cap=5 * MB,  # chosen: the largest, for the longest runs
    concurrent_runs=20,  # chosen: the highest
    concurrent_calls=8,  # chosen: the highest, half of a server's 16 threads
    api_rate_per_minute=1200,  # chosen: twenty a second per token
    endpoint_max_body_bytes=32 * MB,  # chosen: the highest
    max_schedules=50,  # chosen: the highest
    schedule_min_interval_minutes=1,  # spec's example: every minute (cron's finest)
    kv_max_keys=1_000_000,  # chosen: the highest
    kv_max_bytes=1 * GB,  # chosen: the highest
    kv_rate_per_minute=6000,  # chosen: a hundred a second
    email_per_hour=1000,  # spec
    email_max_recipients=100,  # chosen: the highest
    email_max_bytes=25 * MB,  # chosen: what common relays accept
    email_max_attachment_bytes=20 * MB,  # chosen: under the message's limit
    image_formats="png jpeg webp gif bmp tiff",  # chosen: every format Pillow writes safely here
    image_max_frames=1000,  # chosen: the highest
    image_rate_per_minute=1200,  # chosen: twenty a second
    realtime_max_message_bytes=256 * 1024,  # chosen: the highest
    realtime_rate_per_minute=6000,  # chosen: a hundred a second
)

PROFILES = [BASIC, INTERACTIVE, DATA, ADVANCED]


def profile_values(model, values):
    """The values a migration's historical PermissionProfile model can hold: a migration
    runs against the fields the model had at its point in the history."""
    known = {field.name for field in model._meta.get_fields()}
    return {name: value for name, value in values.items() if name in known}
