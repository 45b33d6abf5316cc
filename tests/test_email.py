"""The email capability against a real SMTP server on loopback (aiosmtpd): what the relay
receives, the embedded outbox, and every refusal as an attack."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from capabilities import email as email_capability
from capabilities.base import CapabilityError
from capabilities.email.models import OutboxMessage
from tests.support.platform import free_port
from tests.support.smtp import start_relay
from tenants.models import PolicyOverride
from tenants.ratelimit import limiter, reset_limiter
from symposium.settings import email_settings
from tests.helpers import context_for

pytestmark = [pytest.mark.django_db(transaction=True)]

SENDER = "reports@acme.example"


@pytest.fixture
def relay(settings, platform_outbox):
    controller = start_relay()
    handler = controller.handler
    settings.EMAIL_BACKEND = "capabilities.email.backends.SmtpBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield handler
    controller.stop()


@pytest.fixture(autouse=True)
def platform_outbox(settings):
    """Django's test setup swaps the email backend for its own; put back the platform's
    default (the outbox). The relay fixture replaces it with the SMTP relay."""
    settings.EMAIL_BACKEND = email_settings("")["EMAIL_BACKEND"]


@pytest.fixture(autouse=True)
def fresh_limits():
    reset_limiter()
    limiter().reset()
    yield
    reset_limiter()


@pytest.fixture
def sender(acme):
    acme.email_sender = SENDER
    acme.save()
    return acme


def send(tenant, **args):
    return email_capability.email_send(context_for(tenant), args)


def refused(tenant, **args):
    with pytest.raises(CapabilityError) as info:
        send(tenant, **args)
    return info.value


def override(tenant, setting, value):
    PolicyOverride.objects.create(tenant=tenant, setting=setting, value=str(value))


# -- behaviour ------------------------------------------------------------------------


def test_it_delivers_the_message_to_the_relay(relay, sender):
    (sender.storage_root() / "report.csv").write_text("month,total\njan,3\n")
    reply = send(
        sender, to=["Alice <alice@example.org>", "bob@example.org"], cc="carol@example.org", bcc=["dave@example.org"],
        subject="Monthly report — März", text="Totals attached.", html="<p>Totals <b>attached</b>.</p>",
        replyTo="help@acme.example",
        attachments=[
            {"filename": "notes.txt", "content": "plain notes"},
            {"filename": "pixel.bin", "content": bytes([0, 255, 1])},
            {"path": "report.csv"},
        ],
    )
    assert reply["data"]["accepted"] == ["alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org"]
    [(mail_from, rcpt_tos, message)] = relay.messages
    assert mail_from == SENDER
    assert rcpt_tos == ["alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org"]
    assert message["From"] == SENDER
    assert message["To"] == "Alice <alice@example.org>, bob@example.org"
    assert message["Cc"] == "carol@example.org"
    assert message["Bcc"] is None  # Bcc recipients get the message; nobody sees them
    assert message["Reply-To"] == "help@acme.example"
    assert message["Subject"] == "Monthly report — März"
    assert message["Message-ID"] == reply["data"]["messageId"] and reply["data"]["messageId"].endswith("@acme.example>")
    assert message.get_body(("plain",)).get_content().strip() == "Totals attached."
    assert message.get_body(("html",)).get_content().strip() == "<p>Totals <b>attached</b>.</p>"
    parts = {part.get_filename(): part for part in message.iter_attachments()}
    assert parts["notes.txt"].get_content().strip() == "plain notes"
    assert parts["pixel.bin"].get_content() == bytes([0, 255, 1])
    assert parts["report.csv"].get_content_type() == "text/csv"
    assert parts["report.csv"].get_content().replace("\r\n", "\n") == "month,total\njan,3\n"


def test_it_reports_the_recipients_the_relay_accepted(relay, sender):
    reply = send(sender, to=["alice@example.org", "nobody@example.org"], subject="Hi", text="Hello")
    assert reply["data"]["accepted"] == ["alice@example.org"]
    assert relay.messages[0][1] == ["alice@example.org"]


def test_it_sends_html_only_messages(relay, sender):
    send(sender, to="alice@example.org", subject="Hi", html="<h1>Hello</h1>")
    message = relay.messages[0][2]
    assert message.get_content_type() == "text/html" and "<h1>Hello</h1>" in message.get_content()


def test_it_keeps_mail_in_the_outbox_without_a_relay(settings, sender, client, django_user_model):
    reply = send(sender, to="alice@example.org", subject="Kept here", text="Nothing leaves the machine.",
                 attachments=[{"filename": "a.txt", "content": "x"}])
    stored = OutboxMessage.objects.get()
    assert stored.tenant == sender and stored.from_email == SENDER and stored.to == "alice@example.org"
    assert stored.message_id == reply["data"]["messageId"] and stored.text == "Nothing leaves the machine."
    assert stored.attachments == [{"filename": "a.txt", "contentType": "text/plain", "size": 1}]
    assert b"Subject: Kept here" in bytes(stored.raw)
    admin = django_user_model.objects.create_superuser("root", "root@example.org", "root-password-123")
    client.force_login(admin)
    listing = client.get("/admin/capabilities/outboxmessage/")
    assert listing.status_code == 200 and b"Kept here" in listing.content
    page = client.get(f"/admin/capabilities/outboxmessage/{stored.pk}/change/")
    assert b"Nothing leaves the machine." in page.content and b"a.txt (text/plain, 1 bytes)" in page.content


def test_the_hourly_limit_lets_a_burst_through_then_refuses(sender):
    override(sender, "email_per_hour", 3)
    for _ in range(3):
        send(sender, to="alice@example.org", subject="Hi", text="x")
    error = refused(sender, to="alice@example.org", subject="Hi", text="x")
    assert error.code == "RATE_LIMITED" and "3 messages per hour" in error.message
    assert 1100 < error.retry_after <= 1200  # one message per 20 minutes comes back
    assert OutboxMessage.objects.count() == 3


def test_the_relay_url_is_read_into_djangos_settings():
    assert email_settings("smtp://user%40acme:p%3Ass@mail.example.org:2525?tls=1") == {
        "EMAIL_BACKEND": "capabilities.email.backends.SmtpBackend", "EMAIL_HOST": "mail.example.org", "EMAIL_PORT": 2525,
        "EMAIL_HOST_USER": "user@acme", "EMAIL_HOST_PASSWORD": "p:ss", "EMAIL_USE_TLS": True, "EMAIL_USE_SSL": False,
        "EMAIL_TIMEOUT": 20.0,
    }
    assert email_settings("smtps://mail.example.org")["EMAIL_PORT"] == 465
    for bad in ("http://mail.example.org", "smtp://mail.example.org?tls=yes", "smtp://h?tls=1&ssl=1", "smtp://h?verify=0"):
        with pytest.raises(ImproperlyConfigured):
            email_settings(bad)


# -- containment ----------------------------------------------------------------------


@pytest.mark.parametrize("args, what", [
    ({"subject": "Hi\r\nBcc: victim@example.org"}, "subject"),
    ({"subject": "Hi\nX-Evil: 1"}, "subject"),
    ({"to": "alice@example.org\r\nBcc: victim@example.org"}, "to address"),
    ({"cc": ["ok@example.org", "x@example.org\nSubject: other"]}, "cc address"),
    ({"replyTo": "a@example.org\r\n"}, "replyTo address"),
    ({"attachments": [{"filename": "a.txt\r\nContent-Type: text/html", "content": "x"}]}, "filename"),
    ({"attachments": [{"filename": "a.txt", "content": "x", "contentType": "text/plain\r\nX-Evil: 1"}]}, "contentType"),
])
def test_cant_inject_headers(relay, sender, args, what):
    error = refused(sender, **{"to": "alice@example.org", "subject": "Hi", "text": "x", **args})
    assert error.code == "INVALID_ARGUMENT"
    assert "line break" in error.message and what in error.message
    assert relay.messages == []


def test_cant_choose_the_sender(relay, sender):
    error = refused(sender, to="alice@example.org", subject="Hi", text="x", **{"from": "ceo@bank.example"})
    assert error.code == "INVALID_ARGUMENT" and "tenant's configured sender" in error.message
    assert relay.messages == []


def test_cant_send_without_a_configured_sender(relay, acme):
    error = refused(acme, to="alice@example.org", subject="Hi", text="x")
    assert error.code == "PERMISSION_DENIED" and "no email sender" in error.message


def test_cant_send_to_more_recipients_than_the_profile_allows(relay, sender):
    override(sender, "email_max_recipients", 2)
    error = refused(sender, to=["a@example.org", "b@example.org"], bcc="c@example.org", subject="Hi", text="x")
    assert error.code == "QUOTA_EXCEEDED" and "3 recipients" in error.message and "at most 2" in error.message
    assert relay.messages == []


def test_cant_send_outside_the_tenants_allow_list(relay, sender):
    sender.email_allowed_recipients = "@example.org\nboss@partner.example"
    sender.save()
    send(sender, to=["alice@example.org", "boss@partner.example"], subject="Hi", text="x")
    error = refused(sender, to="alice@example.org", bcc="spy@elsewhere.example", subject="Hi", text="x")
    assert error.code == "PERMISSION_DENIED" and "spy@elsewhere.example is not on this tenant's list" in error.message
    assert len(relay.messages) == 1


def test_cant_send_a_message_over_its_size(relay, sender):
    override(sender, "email_max_bytes", 2000)
    error = refused(sender, to="alice@example.org", subject="Hi", text="x" * 1500, html="y" * 1500)
    assert error.code == "QUOTA_EXCEEDED" and "3000 bytes" in error.message and "2000" in error.message


def test_cant_attach_a_file_over_the_attachment_size(relay, sender):
    override(sender, "email_max_attachment_bytes", 10)
    error = refused(sender, to="alice@example.org", subject="Hi", text="x",
                    attachments=[{"filename": "big.bin", "content": b"z" * 11}])
    assert error.code == "QUOTA_EXCEEDED" and "an attachment is at most 10 bytes" in error.message


def test_cant_attach_files_outside_the_tenants_storage(relay, sender, make_tenant):
    other = make_tenant("globex")
    (other.storage_root() / "secret.txt").write_text("globex's secret")
    error = refused(sender, to="alice@example.org", subject="Hi", text="x", attachments=[{"path": "../globex/secret.txt"}])
    assert error.code == "INVALID_ARGUMENT"
    assert "globex's secret" not in error.message and "/tmp" not in error.message
    assert relay.messages == []


@pytest.mark.parametrize("address", ["not-an-address", "a@b@c.example", "alice@example.org, eve@example.org", ""])
def test_cant_send_to_malformed_addresses(relay, sender, address):
    assert refused(sender, to=address, subject="Hi", text="x").code == "INVALID_ARGUMENT"


def test_cant_send_on_a_profile_without_email(relay, make_tenant):
    basic = make_tenant("plain", "Basic", email_sender="x@plain.example")
    error = refused(basic, to="alice@example.org", subject="Hi", text="x")
    assert error.code == "PERMISSION_DENIED" and "does not allow sending email" in error.message


def test_an_unreachable_relay_is_a_clear_error(settings, sender):
    settings.EMAIL_BACKEND = "capabilities.email.backends.SmtpBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    error = refused(sender, to="alice@example.org", subject="Hi", text="x")
    assert error.code == "UPSTREAM_ERROR" and error.message == "The platform's mail relay could not be reached; the message was not sent."


# -- blocks ---------------------------------------------------------------------------

BLOCK = """
export default async () => {
  await symposium.writeFile('chart.txt', 'a chart');
  const r = await symposium.email.send({
    to: 'alice@example.org', subject: 'From a block', text: 'See attached.',
    attachments: [{ filename: 'raw.bin', content: new Uint8Array([1, 2, 3]) }, { path: 'chart.txt' }],
  });
  let injected;
  try { await symposium.email.send({ to: 'a@example.org', subject: 'x\\r\\nBcc: v@example.org', text: 'x' }); }
  catch (e) { injected = e.code; }
  return { accepted: r.data.accepted, messageId: r.data.messageId, injected };
};
"""


def test_a_block_sends_mail_through_the_relay(run_block, relay, sender, dispatch_path):
    run = run_block(sender, BLOCK)
    assert run.status == "succeeded", run.error
    assert run.result["accepted"] == ["alice@example.org"] and run.result["injected"] == "INVALID_ARGUMENT"
    [(mail_from, rcpt_tos, message)] = relay.messages
    assert mail_from == SENDER and message["Subject"] == "From a block" and message["Message-ID"] == run.result["messageId"]
    assert {p.get_filename(): p.get_content() for p in message.iter_attachments()} == {"raw.bin": b"\x01\x02\x03", "chart.txt": "a chart"}
