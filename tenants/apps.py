from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants and policy"

    def ready(self):
        # Imported here, not at the top: the receivers import the models, which exist
        # only once the apps are ready.
        from tenants import signals  # noqa: F401
