"""The profile's share of the shared executors (`concurrent_calls`, capabilities/fairness.py),
and the seed profiles' values for it, taken from tenants/profiles.py (each value commented
there; documented in docs/policy.md and docs/broker.md).
"""

import django.core.validators
from django.db import migrations, models

from tenants.profiles import PROFILES


def seed_values(apps, schema_editor):
    # The seed profiles' values of the new field, from the one place they live.
    PermissionProfile = apps.get_model("tenants", "PermissionProfile")
    for values in PROFILES:
        PermissionProfile.objects.filter(name=values["name"]).update(concurrent_calls=values["concurrent_calls"])


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0009_blockrun_error_detail'),
    ]

    operations = [
        migrations.AddField(
            model_name='permissionprofile',
            name='concurrent_calls',
            field=models.PositiveIntegerField(default=4, help_text="Calls of a tenant that run at once on one server's threads, and RQ jobs it has in flight from one server; never more than half of either. More wait in the tenant's own queue.", validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(1000)]),
        ),
        migrations.AlterField(
            model_name='policyoverride',
            name='setting',
            field=models.CharField(choices=[('files_access', 'files access'), ('max_file_size', 'max file size'), ('storage_quota', 'storage quota'), ('blocked_extensions', 'blocked extensions'), ('files_rate_per_minute', 'files rate per minute'), ('network_access', 'network access'), ('cdn_domains', 'cdn domains'), ('network_rate_per_minute', 'network rate per minute'), ('max_response_size', 'max response size'), ('canvas_max_width', 'canvas max width'), ('canvas_max_height', 'canvas max height'), ('canvas_formats', 'canvas formats'), ('canvas_max_ops', 'canvas max ops'), ('canvas_max_per_run', 'canvas max per run'), ('canvas_rate_per_minute', 'canvas rate per minute'), ('database_access', 'database access'), ('database_rate_per_minute', 'database rate per minute'), ('database_statement_timeout_ms', 'database statement timeout ms'), ('database_max_rows', 'database max rows'), ('database_max_result_bytes', 'database max result bytes'), ('process_allowed', 'process allowed'), ('process_commands', 'process commands'), ('process_timeout_seconds', 'process timeout seconds'), ('process_max_output', 'process max output'), ('process_rate_per_minute', 'process rate per minute'), ('kv_max_keys', 'kv max keys'), ('kv_max_bytes', 'kv max bytes'), ('kv_rate_per_minute', 'kv rate per minute'), ('email_per_hour', 'email per hour'), ('email_max_recipients', 'email max recipients'), ('email_max_bytes', 'email max bytes'), ('email_max_attachment_bytes', 'email max attachment bytes'), ('image_formats', 'image formats'), ('image_max_frames', 'image max frames'), ('image_rate_per_minute', 'image rate per minute'), ('realtime_max_message_bytes', 'realtime max message bytes'), ('realtime_rate_per_minute', 'realtime rate per minute'), ('memory_mb', 'memory mb'), ('time_limit_seconds', 'time limit seconds'), ('console_output_cap', 'console output cap'), ('concurrent_runs', 'concurrent runs'), ('concurrent_calls', 'concurrent calls'), ('api_rate_per_minute', 'api rate per minute'), ('endpoint_max_body_bytes', 'endpoint max body bytes'), ('max_schedules', 'max schedules'), ('schedule_min_interval_minutes', 'schedule min interval minutes')], max_length=50),
        ),
        migrations.RunPython(seed_values, migrations.RunPython.noop),
    ]
