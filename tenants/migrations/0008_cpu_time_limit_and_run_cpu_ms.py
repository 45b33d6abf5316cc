"""A CPU-time budget per profile, separate from the wall-clock limit, and the CPU a run
used in milliseconds (it was seconds as a float). The seed profiles' budgets come from
tenants/profiles.py, where each is commented; docs/isolates.md says how it is enforced.
"""

import django.core.validators
from django.db import migrations, models

from tenants.profiles import PROFILES


def seed_cpu_budgets(apps, schema_editor):
    # The seed profiles' budgets, from the one place they live.
    PermissionProfile = apps.get_model("tenants", "PermissionProfile")
    for values in PROFILES:
        PermissionProfile.objects.filter(name=values["name"]).update(cpu_time_limit_ms=values["cpu_time_limit_ms"])


def runs_cpu_to_ms(apps, schema_editor):
    BlockRun = apps.get_model("tenants", "BlockRun")
    for run in BlockRun.objects.exclude(cpu_seconds=None).only("id", "cpu_seconds").iterator():
        BlockRun.objects.filter(pk=run.pk).update(cpu_ms=round(run.cpu_seconds * 1000))


def runs_cpu_to_seconds(apps, schema_editor):
    BlockRun = apps.get_model("tenants", "BlockRun")
    for run in BlockRun.objects.exclude(cpu_ms=None).only("id", "cpu_ms").iterator():
        BlockRun.objects.filter(pk=run.pk).update(cpu_seconds=run.cpu_ms / 1000)


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0007_tenantsecret_sealed'),
    ]

    operations = [
        migrations.AddField(
            model_name='blockrun',
            name='cpu_ms',
            field=models.PositiveIntegerField(blank=True, help_text="CPU time the run used (all the isolate's threads, from its assignment on), in ms.", null=True),
        ),
        migrations.RunPython(runs_cpu_to_ms, runs_cpu_to_seconds),
        migrations.RemoveField(
            model_name='blockrun',
            name='cpu_seconds',
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='cpu_time_limit_ms',
            field=models.PositiveIntegerField(default=30000, help_text='CPU time of a run (all its threads, start-up excluded), in milliseconds. Separate from the wall-clock limit: past it the run ends with CPU_LIMIT.', validators=[django.core.validators.MinValueValidator(10), django.core.validators.MaxValueValidator(86400000)]),
        ),
        migrations.AlterField(
            model_name='policyoverride',
            name='setting',
            field=models.CharField(choices=[('files_access', 'files access'), ('max_file_size', 'max file size'), ('storage_quota', 'storage quota'), ('blocked_extensions', 'blocked extensions'), ('files_rate_per_minute', 'files rate per minute'), ('network_access', 'network access'), ('cdn_domains', 'cdn domains'), ('network_rate_per_minute', 'network rate per minute'), ('max_response_size', 'max response size'), ('canvas_max_width', 'canvas max width'), ('canvas_max_height', 'canvas max height'), ('canvas_formats', 'canvas formats'), ('canvas_max_ops', 'canvas max ops'), ('canvas_max_per_run', 'canvas max per run'), ('canvas_rate_per_minute', 'canvas rate per minute'), ('database_access', 'database access'), ('database_rate_per_minute', 'database rate per minute'), ('database_statement_timeout_ms', 'database statement timeout ms'), ('database_max_rows', 'database max rows'), ('database_max_result_bytes', 'database max result bytes'), ('process_allowed', 'process allowed'), ('process_commands', 'process commands'), ('process_timeout_seconds', 'process timeout seconds'), ('process_max_output', 'process max output'), ('process_rate_per_minute', 'process rate per minute'), ('kv_max_keys', 'kv max keys'), ('kv_max_bytes', 'kv max bytes'), ('kv_rate_per_minute', 'kv rate per minute'), ('email_per_hour', 'email per hour'), ('email_max_recipients', 'email max recipients'), ('email_max_bytes', 'email max bytes'), ('email_max_attachment_bytes', 'email max attachment bytes'), ('image_formats', 'image formats'), ('image_max_frames', 'image max frames'), ('image_rate_per_minute', 'image rate per minute'), ('realtime_max_message_bytes', 'realtime max message bytes'), ('realtime_rate_per_minute', 'realtime rate per minute'), ('memory_mb', 'memory mb'), ('time_limit_seconds', 'time limit seconds'), ('cpu_time_limit_ms', 'cpu time limit ms'), ('console_output_cap', 'console output cap'), ('concurrent_runs', 'concurrent runs'), ('api_rate_per_minute', 'api rate per minute'), ('endpoint_max_body_bytes', 'endpoint max body bytes'), ('max_schedules', 'max schedules'), ('schedule_min_interval_minutes', 'schedule min interval minutes')], max_length=50),
        ),
        migrations.RunPython(seed_cpu_budgets, migrations.RunPython.noop),
    ]
