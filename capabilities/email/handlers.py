"""email.send: a message from the tenant's sender, through the platform's relay.

Everything a block gives is checked before anything is sent: no header field may hold a
line break (header injection), recipients are counted and matched against the tenant's
allow-list, sizes are measured, and only then is one message counted against the hourly
rate and handed to Django's email machinery (settings.EMAIL_BACKEND: the SMTP relay of
SYMPOSIUM_EMAIL_URL, or the embedded outbox).
"""

import mimetypes
import smtplib
import socket
import time
from email.headerregistry import Address
from email.utils import make_msgid, parseaddr

from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.validators import validate_email

from capabilities import files
from capabilities.base import CapabilityError
from capabilities.email import limits
from tenants.models import Tenant, split_list
from tenants.ratelimit import check_hourly_rate

LINE_BREAKS = ("\r", "\n", "\x00", "\u2028", "\u2029", "\x85")


def _no_line_breaks(value, what):
    if any(c in value for c in LINE_BREAKS):
        raise CapabilityError("INVALID_ARGUMENT", f"The {what} contains a line break; header fields are one line (header injection is refused).")


def _address(value, what):
    """The bare address of `value` ("alice@example.org" or "Alice <alice@example.org>"),
    and the value as it goes in the header."""
    if not isinstance(value, str) or not value.strip():
        raise CapabilityError("INVALID_ARGUMENT", f"Each {what} address must be a non-empty string.")
    _no_line_breaks(value, f"{what} address {value[:60]!r}")
    if len(value) > limits.MAX_ADDRESS_CHARS:
        raise CapabilityError("INVALID_ARGUMENT", f"A {what} address is at most {limits.MAX_ADDRESS_CHARS} characters.")
    if "," in value or ";" in value:
        # parseaddr would take the first of several addresses and drop the rest.
        raise CapabilityError("INVALID_ARGUMENT", f"{value[:80]!r} holds more than one address; give a list instead.")
    name, address = parseaddr(value)
    try:
        validate_email(address)
    except ValidationError:
        raise CapabilityError("INVALID_ARGUMENT", f"{value[:80]!r} is not an email address.") from None
    if any(c in address for c in ",;<>\" "):
        raise CapabilityError("INVALID_ARGUMENT", f"{value[:80]!r} is not one email address.")
    header = str(Address(display_name=name, addr_spec=address)) if name else address
    return address.lower(), header


def _addresses(args, name):
    value = args.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise CapabilityError("INVALID_ARGUMENT", f"{name} must be an address or a list of addresses.")
    return [_address(item, name) for item in value]


def _allowed(address, allow_list):
    domain = address.rpartition("@")[2]
    return address in allow_list or f"@{domain}" in allow_list


def _text(args, name, required=False):
    value = args.get(name)
    if value is None:
        if required:
            raise CapabilityError("INVALID_ARGUMENT", f"A {name} (a string) is required.")
        return None
    if not isinstance(value, str):
        raise CapabilityError("INVALID_ARGUMENT", f"The {name} must be a string.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CapabilityError("INVALID_ARGUMENT", f"The {name} is not valid Unicode text.") from None
    return value


def _attachments(ctx, args):
    """[(filename, bytes, mimetype)] from the block's attachments."""
    items = args.get("attachments") or []
    if not isinstance(items, list):
        raise CapabilityError("INVALID_ARGUMENT", "attachments must be a list of {filename, content | path}.")
    if len(items) > limits.MAX_ATTACHMENTS:
        raise CapabilityError("INVALID_ARGUMENT", f"A message has at most {limits.MAX_ATTACHMENTS} attachments.")
    result = []
    for index, item in enumerate(items):
        where = f"attachments[{index}]"
        if not isinstance(item, dict):
            raise CapabilityError("INVALID_ARGUMENT", f"{where} must be an object {{filename, content | path}}.")
        path, content = item.get("path"), item.get("content")
        if (path is None) == (content is None):
            raise CapabilityError("INVALID_ARGUMENT", f"{where} needs either content (a string or Uint8Array) or path (a tenant file).")
        filename = item.get("filename")
        if filename is None and isinstance(path, str):
            filename = path.rsplit("/", 1)[-1]
        if not isinstance(filename, str) or not filename or len(filename) > limits.MAX_FILENAME_CHARS:
            raise CapabilityError("INVALID_ARGUMENT", f"{where}.filename must be a name of 1 to {limits.MAX_FILENAME_CHARS} characters.")
        _no_line_breaks(filename, f"{where}.filename")
        if "/" in filename or "\\" in filename:
            raise CapabilityError("INVALID_ARGUMENT", f"{where}.filename is a name, not a path.")
        if path is not None:
            # Read as the files capability reads: the tenant's own storage, its rules.
            data = files.read_file(ctx, {"path": path, "encoding": "binary"})["data"]
        elif isinstance(content, str):
            data = content.encode("utf-8", "surrogatepass")
        elif isinstance(content, (bytes, bytearray, memoryview)):
            data = bytes(content)
        else:
            raise CapabilityError("INVALID_ARGUMENT", f"{where}.content must be a string or a Uint8Array.")
        if len(data) > ctx.policy.email_max_attachment_bytes:
            raise CapabilityError(
                "QUOTA_EXCEEDED",
                f"{where} ({filename[:60]}) is {len(data)} bytes; an attachment is at most {ctx.policy.email_max_attachment_bytes} bytes.")
        mimetype = item.get("contentType")
        if mimetype is not None:
            if not isinstance(mimetype, str) or "/" not in mimetype or len(mimetype) > 100:
                raise CapabilityError("INVALID_ARGUMENT", f"{where}.contentType must be a MIME type such as text/csv.")
            _no_line_breaks(mimetype, f"{where}.contentType")
        else:
            mimetype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        result.append((filename, data, mimetype))
    return result


def email_send(ctx, args):
    policy = ctx.policy
    profile = policy.profile_name or "tenant's"
    if not policy.email_per_hour:
        raise CapabilityError("PERMISSION_DENIED", f"The {profile} profile does not allow sending email.")
    tenant = Tenant.objects.only("email_sender", "email_allowed_recipients").get(pk=ctx.tenant_id)
    if not tenant.email_sender:
        raise CapabilityError("PERMISSION_DENIED", "This tenant has no email sender; an administrator sets it in the tenant's settings.")

    chosen = {"from", "sender", "headers"} & set(args)
    if chosen:
        raise CapabilityError("INVALID_ARGUMENT", f"A block cannot set {sorted(chosen)[0]}: mail is from the tenant's configured sender, with the platform's headers.")
    to, cc, bcc = _addresses(args, "to"), _addresses(args, "cc"), _addresses(args, "bcc")
    recipients = to + cc + bcc
    if not recipients:
        raise CapabilityError("INVALID_ARGUMENT", "A message needs at least one recipient (to, cc or bcc).")
    if len(recipients) > policy.email_max_recipients:
        raise CapabilityError(
            "QUOTA_EXCEEDED", f"The message has {len(recipients)} recipients; this tenant may send to at most {policy.email_max_recipients} at once.")
    allow_list = set(split_list(tenant.email_allowed_recipients))
    if allow_list:
        outside = [address for address, _ in recipients if not _allowed(address, allow_list)]
        if outside:
            raise CapabilityError("PERMISSION_DENIED", f"{outside[0][:80]} is not on this tenant's list of allowed recipients.")
    reply_to = _addresses(args, "replyTo")
    subject = _text(args, "subject", required=True)
    _no_line_breaks(subject, "subject")
    if len(subject) > limits.MAX_SUBJECT_CHARS:
        raise CapabilityError("INVALID_ARGUMENT", f"The subject is at most {limits.MAX_SUBJECT_CHARS} characters.")
    text, html = _text(args, "text"), _text(args, "html")
    if text is None and html is None:
        raise CapabilityError("INVALID_ARGUMENT", "A message needs a text or an html body (or both).")
    attachments = _attachments(ctx, args)
    size = len((text or "").encode()) + len((html or "").encode()) + sum(len(data) for _, data, _ in attachments)
    if size > policy.email_max_bytes:
        raise CapabilityError(
            "QUOTA_EXCEEDED", f"The message is {size} bytes (bodies and attachments); this tenant's largest message is {policy.email_max_bytes} bytes.")

    rate = check_hourly_rate(ctx.tenant_id, "email", policy.email_per_hour)
    if not rate.allowed:
        retry = round(rate.retry_after, 1)
        raise CapabilityError(
            "RATE_LIMITED", f"This tenant may send {policy.email_per_hour} messages per hour; the next one can go in {retry:g} s.", retry_after=retry)

    domain = tenant.email_sender.rpartition("@")[2]
    message_id = make_msgid(domain=domain)
    message = EmailMultiAlternatives(
        subject=subject, body=text if text is not None else html, from_email=tenant.email_sender,
        to=[h for _, h in to], cc=[h for _, h in cc], bcc=[h for _, h in bcc], reply_to=[h for _, h in reply_to],
        headers={"Message-ID": message_id},
    )
    if text is None:
        message.content_subtype = "html"
    elif html is not None:
        message.attach_alternative(html, "text/html")
    for filename, data, mimetype in attachments:
        message.attach(filename, data, mimetype)
    # What the outbox keeps with the message.
    message.tenant_id, message.tenant_slug, message.run_id = ctx.tenant_id, ctx.tenant_slug, ctx.run_id

    timeout = limits.SMTP_TIMEOUT_SECONDS
    if ctx.deadline is not None:
        timeout = max(0.5, min(timeout, ctx.deadline - time.time()))
    try:
        with get_connection(timeout=timeout) as connection:
            connection.send_messages([message])
    except smtplib.SMTPRecipientsRefused as e:
        raise CapabilityError("UPSTREAM_ERROR", f"The mail relay refused every recipient ({_reason(next(iter(e.recipients.values()), None))}).") from None
    except smtplib.SMTPResponseException as e:
        raise CapabilityError("UPSTREAM_ERROR", f"The mail relay refused the message: {_reason((e.smtp_code, e.smtp_error))}.") from None
    except (smtplib.SMTPException, OSError, socket.timeout):
        raise CapabilityError("UPSTREAM_ERROR", "The platform's mail relay could not be reached; the message was not sent.") from None
    refused = {parseaddr(address)[1].lower() for address in getattr(message, "refused", ())}
    accepted = [address for address, _ in recipients if address not in refused]
    return {"data": {"messageId": message_id, "accepted": accepted}}


def _reason(code_and_text):
    if not code_and_text:
        return "no reason given"
    code, text = code_and_text
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(text.split())[:160]}"
