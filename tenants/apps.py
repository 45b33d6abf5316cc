from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants and policy"

    def ready(self):
        from tenants import signals  # noqa: F401
