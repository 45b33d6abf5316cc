"""Models of the capabilities app, defined in their capability's package."""

from capabilities.kv.models import KeyValue  # noqa: F401
from capabilities.email.models import OutboxMessage  # noqa: F401
