from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0008_cpu_time_limit_and_run_cpu_ms'),
    ]

    operations = [
        migrations.AddField(
            model_name='blockrun',
            name='error_detail',
            field=models.JSONField(blank=True, null=True),
        ),
    ]
