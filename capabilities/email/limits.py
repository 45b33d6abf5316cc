"""The email capability's own limits, the same for every tenant. The profile's limits
(messages per hour, recipients per message, message and attachment sizes) come from the
effective policy; the sender and the allowed recipients are the tenant's own fields."""

# Characters of a subject. RFC 5322 allows 998 per line; a subject longer than a line
# is folded, and one this long is a payload, not a subject.
MAX_SUBJECT_CHARS = 998

# Attachments of one message: enough for a report and its charts.
MAX_ATTACHMENTS = 20
MAX_FILENAME_CHARS = 200

# Characters of one address with its display name ("Alice <alice@example.org>").
MAX_ADDRESS_CHARS = 320

# Seconds the relay has to take a message when the call itself has more time than this.
SMTP_TIMEOUT_SECONDS = 20

# Messages kept in the embedded outbox per tenant; older ones are removed as new ones
# arrive, so a tenant's mail cannot fill the platform's database.
OUTBOX_KEEP_PER_TENANT = 500
