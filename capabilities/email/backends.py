"""Django email backends of the platform: the SMTP relay, telling which recipients it
took, and the embedded outbox."""


from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend
from django.core.mail.message import sanitize_address
from django.db import transaction

from capabilities.email import limits
from capabilities.email.models import OutboxMessage


class SmtpBackend(EmailBackend):
    """Django's SMTP backend, keeping on each message the recipients the relay refused
    (`message.refused`), which Django's own drops: the block learns who was accepted."""

    def _send(self, email_message):
        if not email_message.recipients():
            return False
        encoding = email_message.encoding or settings.DEFAULT_CHARSET
        from_email = sanitize_address(email_message.from_email, encoding)
        recipients = [sanitize_address(addr, encoding) for addr in email_message.recipients()]
        message = email_message.message()
        refused = self.connection.sendmail(from_email, recipients, message.as_bytes(linesep="\r\n"))
        email_message.refused = set(refused or {})
        return True


class OutboxBackend(BaseEmailBackend):
    """Keeps messages in the platform's database (OutboxMessage) instead of sending them."""

    def send_messages(self, email_messages):
        for message in email_messages:
            tenant_id = getattr(message, "tenant_id", None)
            html = next((content for content, mimetype in getattr(message, "alternatives", []) if mimetype == "text/html"), "")
            text = message.body if message.content_subtype == "plain" else ""
            if message.content_subtype == "html":
                html = message.body
            with transaction.atomic():
                OutboxMessage.objects.create(
                    tenant_id=tenant_id, tenant_slug=getattr(message, "tenant_slug", ""), run_id=getattr(message, "run_id", ""),
                    message_id=message.extra_headers.get("Message-ID", ""), from_email=message.from_email,
                    to=", ".join(message.to), cc=", ".join(message.cc), bcc=", ".join(message.bcc),
                    subject=message.subject, text=text, html=html,
                    attachments=[{"filename": name, "contentType": mimetype, "size": len(content)}
                                 for name, content, mimetype in message.attachments],
                    raw=message.message().as_bytes(linesep="\r\n"),
                )
                if tenant_id is not None:
                    old = OutboxMessage.objects.filter(tenant_id=tenant_id).values_list("pk", flat=True)[limits.OUTBOX_KEEP_PER_TENANT:]
                    OutboxMessage.objects.filter(pk__in=list(old)).delete()
            message.refused = set()
        return len(email_messages)
