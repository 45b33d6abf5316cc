from django.apps import AppConfig


class BlocksConfig(AppConfig):
    name = "blocks"
    verbose_name = "Blocks, the API and schedules"
    default_auto_field = "django.db.models.BigAutoField"
