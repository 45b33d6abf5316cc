"""The seed's four permission profiles (DESIGN.md, "Permission profiles"), made from the
one place their numbers live: tenants/profiles.py (each value there says where it comes
from).

A migration runs against the model as it was at that point of the history, so only the
fields that model has are taken; a later migration that adds a profile field fills it in
for the seed profiles from the same module (see the profile_values helper there). Values
changed in tenants/profiles.py later reach a fresh database through this migration and an
existing one through the data migration that goes with the change.
"""

from django.db import migrations

from tenants.profiles import PROFILES, profile_values


def create_profiles(apps, schema_editor):
    PermissionProfile = apps.get_model("tenants", "PermissionProfile")
    for values in PROFILES:
        PermissionProfile.objects.update_or_create(name=values["name"], defaults=profile_values(PermissionProfile, values))


def remove_profiles(apps, schema_editor):
    PermissionProfile = apps.get_model("tenants", "PermissionProfile")
    PermissionProfile.objects.filter(name__in=[p["name"] for p in PROFILES], tenants__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(create_profiles, remove_profiles)]
