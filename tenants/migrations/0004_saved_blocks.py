"""Runs record the saved block and version they ran; profiles bound the API, HTTP
endpoints and schedules (docs/blocks.md). The seed's profiles get the values
tenants/profiles.py gives them:

| profile     | API requests/min/token | endpoint body | schedules | shortest interval |
| Basic       | 60                     | 64 KB         | none      | (15 min)          |
| Interactive | 120                    | 1 MB          | 5         | 15 min            |
| Data        | 600                    | 10 MB         | 20        | 1 min             |
| Advanced    | 1200                   | 32 MB         | 50        | 1 min             |
"""

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

from tenants.profiles import PROFILES, profile_values


def seed_values(apps, schema_editor):
    # The seed profiles' values of the new fields, from the one place they live.
    PermissionProfile = apps.get_model("tenants", "PermissionProfile")
    new_fields = {"api_rate_per_minute", "endpoint_max_body_bytes", "max_schedules", "schedule_min_interval_minutes"}
    for values in PROFILES:
        fields = profile_values(PermissionProfile, values)
        PermissionProfile.objects.filter(name=values["name"]).update(
            **{name: value for name, value in fields.items() if name in new_fields})


class Migration(migrations.Migration):

    dependencies = [
        ('blocks', '0001_initial'),
        ('tenants', '0003_blockrun_token'),
    ]

    operations = [
        migrations.AddField(
            model_name='blockrun',
            name='block',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='runs', to='blocks.block'),
        ),
        migrations.AddField(
            model_name='blockrun',
            name='version',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='runs', to='blocks.blockversion'),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='api_rate_per_minute',
            field=models.PositiveIntegerField(default=120, help_text='API requests per minute per API token. 0 means no limit.'),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='endpoint_max_body_bytes',
            field=models.BigIntegerField(default=1048576, help_text="Largest request body a block's HTTP endpoint accepts, in bytes.", validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(67108864)]),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='max_schedules',
            field=models.PositiveIntegerField(default=0, help_text='Schedules per tenant. 0: none.'),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='schedule_min_interval_minutes',
            field=models.PositiveIntegerField(default=15, help_text='Shortest time between two firings of a schedule.', validators=[django.core.validators.MinValueValidator(1)]),
        ),
        migrations.AlterField(
            model_name='blockrun',
            name='source',
            field=models.CharField(db_index=True, default='runblock', help_text='runblock, runner, api, http or schedule', max_length=20),
        ),
        migrations.AlterField(
            model_name='policyoverride',
            name='setting',
            field=models.CharField(choices=[('files_access', 'files access'), ('max_file_size', 'max file size'), ('storage_quota', 'storage quota'), ('blocked_extensions', 'blocked extensions'), ('files_rate_per_minute', 'files rate per minute'), ('network_access', 'network access'), ('cdn_domains', 'cdn domains'), ('network_rate_per_minute', 'network rate per minute'), ('max_response_size', 'max response size'), ('canvas_max_width', 'canvas max width'), ('canvas_max_height', 'canvas max height'), ('canvas_formats', 'canvas formats'), ('canvas_max_ops', 'canvas max ops'), ('canvas_max_per_run', 'canvas max per run'), ('canvas_rate_per_minute', 'canvas rate per minute'), ('database_access', 'database access'), ('database_rate_per_minute', 'database rate per minute'), ('database_statement_timeout_ms', 'database statement timeout ms'), ('database_max_rows', 'database max rows'), ('database_max_result_bytes', 'database max result bytes'), ('process_allowed', 'process allowed'), ('process_commands', 'process commands'), ('process_timeout_seconds', 'process timeout seconds'), ('process_max_output', 'process max output'), ('process_rate_per_minute', 'process rate per minute'), ('memory_mb', 'memory mb'), ('time_limit_seconds', 'time limit seconds'), ('console_output_cap', 'console output cap'), ('concurrent_runs', 'concurrent runs'), ('api_rate_per_minute', 'api rate per minute'), ('endpoint_max_body_bytes', 'endpoint max body bytes'), ('max_schedules', 'max schedules'), ('schedule_min_interval_minutes', 'schedule min interval minutes')], max_length=50),
        ),
        migrations.RunPython(seed_values, migrations.RunPython.noop),
    ]
