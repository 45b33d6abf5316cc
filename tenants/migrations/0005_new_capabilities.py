"""Profile limits and tenant settings of the key-value store, email, images and realtime
channels, and the seed profiles' values for them, taken from tenants/profiles.py (each
value commented there; documented in docs/kv.md, email.md, image.md and realtime.md).
"""

import django.core.validators
import tenants.models
from django.db import migrations, models

from tenants.profiles import PROFILES, profile_values


def seed_values(apps, schema_editor):
    # The seed profiles' values of the new fields, from the one place they live.
    PermissionProfile = apps.get_model("tenants", "PermissionProfile")
    new_fields = {"kv_", "email_", "image_", "realtime_"}
    for values in PROFILES:
        fields = profile_values(PermissionProfile, values)
        PermissionProfile.objects.filter(name=values["name"]).update(
            **{name: value for name, value in fields.items() if any(name.startswith(p) for p in new_fields)})


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0004_saved_blocks'),
    ]

    operations = [
        migrations.AddField(
            model_name='permissionprofile',
            name='email_max_attachment_bytes',
            field=models.BigIntegerField(default=1048576, help_text='Largest single attachment, in bytes.', validators=[django.core.validators.MinValueValidator(1)]),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='email_max_bytes',
            field=models.BigIntegerField(default=2097152, help_text='Largest message (text, HTML and attachments), in bytes.', validators=[django.core.validators.MinValueValidator(1024)]),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='email_max_recipients',
            field=models.PositiveIntegerField(default=10, help_text='To, Cc and Bcc of one message together.', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(1000)]),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='email_per_hour',
            field=models.PositiveIntegerField(default=0, help_text='Messages a tenant may send per hour. 0: no email.'),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='image_formats',
            field=models.CharField(blank=True, help_text='Formats images may be read from and written to, e.g. png jpeg. Empty: no image processing.', max_length=100, validators=[tenants.models.validate_canvas_formats]),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='image_max_frames',
            field=models.PositiveIntegerField(default=50, help_text='Frames an animated image may have.', validators=[django.core.validators.MinValueValidator(1)]),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='image_rate_per_minute',
            field=models.PositiveIntegerField(default=120, help_text='0 means no limit.'),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='kv_max_bytes',
            field=models.BigIntegerField(default=0, help_text="Total bytes of the tenant's keys and values together.", validators=[django.core.validators.MinValueValidator(0)]),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='kv_max_keys',
            field=models.PositiveIntegerField(default=0, help_text='Keys a tenant may keep in its key-value store. 0: no key-value store.'),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='kv_rate_per_minute',
            field=models.PositiveIntegerField(default=600, help_text='0 means no limit.'),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='realtime_max_message_bytes',
            field=models.PositiveIntegerField(default=0, help_text='Largest published message, in bytes of JSON. 0: no realtime.', validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1048576)]),
        ),
        migrations.AddField(
            model_name='permissionprofile',
            name='realtime_rate_per_minute',
            field=models.PositiveIntegerField(default=600, help_text='0 means no limit.'),
        ),
        migrations.AddField(
            model_name='tenant',
            name='email_allowed_recipients',
            field=models.TextField(blank=True, help_text='Addresses (alice@example.org) or domains (@example.org) blocks may send to, one per line. Empty: any address.', validators=[tenants.models.validate_recipient_list]),
        ),
        migrations.AddField(
            model_name='tenant',
            name='email_sender',
            field=models.EmailField(blank=True, help_text="The From address of every message this tenant's blocks send. Empty: they send none.", max_length=254),
        ),
        migrations.AddField(
            model_name='tenant',
            name='realtime_public_channels',
            field=models.TextField(blank=True, help_text='Realtime channels anyone may listen to without logging in, one per line; a name ending in * matches every channel it begins. Other channels are for members only.', validators=[tenants.models.validate_channel_patterns]),
        ),
        migrations.AlterField(
            model_name='policyoverride',
            name='setting',
            field=models.CharField(choices=[('files_access', 'files access'), ('max_file_size', 'max file size'), ('storage_quota', 'storage quota'), ('blocked_extensions', 'blocked extensions'), ('files_rate_per_minute', 'files rate per minute'), ('network_access', 'network access'), ('cdn_domains', 'cdn domains'), ('network_rate_per_minute', 'network rate per minute'), ('max_response_size', 'max response size'), ('canvas_max_width', 'canvas max width'), ('canvas_max_height', 'canvas max height'), ('canvas_formats', 'canvas formats'), ('canvas_max_ops', 'canvas max ops'), ('canvas_max_per_run', 'canvas max per run'), ('canvas_rate_per_minute', 'canvas rate per minute'), ('database_access', 'database access'), ('database_rate_per_minute', 'database rate per minute'), ('database_statement_timeout_ms', 'database statement timeout ms'), ('database_max_rows', 'database max rows'), ('database_max_result_bytes', 'database max result bytes'), ('process_allowed', 'process allowed'), ('process_commands', 'process commands'), ('process_timeout_seconds', 'process timeout seconds'), ('process_max_output', 'process max output'), ('process_rate_per_minute', 'process rate per minute'), ('kv_max_keys', 'kv max keys'), ('kv_max_bytes', 'kv max bytes'), ('kv_rate_per_minute', 'kv rate per minute'), ('email_per_hour', 'email per hour'), ('email_max_recipients', 'email max recipients'), ('email_max_bytes', 'email max bytes'), ('email_max_attachment_bytes', 'email max attachment bytes'), ('image_formats', 'image formats'), ('image_max_frames', 'image max frames'), ('image_rate_per_minute', 'image rate per minute'), ('realtime_max_message_bytes', 'realtime max message bytes'), ('realtime_rate_per_minute', 'realtime rate per minute'), ('memory_mb', 'memory mb'), ('time_limit_seconds', 'time limit seconds'), ('console_output_cap', 'console output cap'), ('concurrent_runs', 'concurrent runs')], max_length=50),
        ),
        migrations.RunPython(seed_values, migrations.RunPython.noop),
    ]
