from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0006_policyoverride_settings'),
    ]

    operations = [
        migrations.AddField(
            model_name='blockrun',
            name='error_detail',
            field=models.JSONField(blank=True, null=True),
        ),
    ]
