from django.apps import AppConfig


class IsolatesConfig(AppConfig):
    name = "isolates"
    verbose_name = "Isolates"
