"""The email capability: messages from the tenant's configured sender through the
platform's relay, or to the embedded outbox (docs/email.md)."""

from capabilities.email.handlers import email_send

__all__ = ["email_send"]
