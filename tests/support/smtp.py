"""A real SMTP server on loopback for tests and benchmarks (aiosmtpd, a test dependency)."""

import email
import email.policy

from aiosmtpd.controller import Controller

from tests.support.platform import free_port


class Relay:
    """An aiosmtpd handler that keeps what it receives, as (MAIL FROM, RCPT TOs, parsed
    message), and refuses recipients whose address starts with 'nobody'."""

    def __init__(self):
        self.messages = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content, policy=email.policy.default)))
        return "250 Message accepted for delivery"


def start_relay():
    """A started aiosmtpd Controller on a free loopback port; its handler is `.handler`."""
    controller = Controller(Relay(), hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller
