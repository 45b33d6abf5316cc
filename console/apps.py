from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """What people see: the runner page and its websocket, the login pages, and the
    admin's overview and tenant panels. It may import every other part; none imports it."""

    name = "console"
    verbose_name = "Console"
