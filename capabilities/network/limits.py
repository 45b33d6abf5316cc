"""The network capability's own limits, one place, each with what it bounds and why.

The profile's limits (which hosts, how many requests a minute, the largest response)
come from the tenant's effective policy; these are the platform's, the same for every
tenant. Every one of them is also bounded by the call's deadline (ctx.deadline).
"""

# A request's whole time (DNS, connect, TLS, sending, every byte of the answer, every
# redirect hop) when the block gives no timeout, and the most it may ask for. A server
# trickling one byte a second hits it like any other: it is a total, not an idle, limit.
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 120_000

# Time for a DNS answer; a resolver that does not answer is a failed request, not a
# worker thread stuck for the system's default (up to a minute).
DNS_TIMEOUT_SECONDS = 5.0
# Threads resolving names at once in one worker process.
DNS_THREADS = 8

# Redirects followed before the request fails (fetch's own limit is 20; 5 covers every
# real chain of http->https->www->login and keeps a redirect loop short). Every hop is
# checked like the first request.
MAX_REDIRECTS = 5

# Characters of a URL, and of all request headers together (names and values).
MAX_URL_LENGTH = 8192
MAX_HEADER_COUNT = 100
MAX_HEADERS_BYTES = 64 * 1024

# The largest request body a block may send. The broker's frame limit bounds it too;
# this is the platform's own bound for the upstream server's sake.
MAX_REQUEST_BODY = 20 * 1024 * 1024

# Bytes read from the socket at a time while a response is streamed and counted.
READ_CHUNK = 64 * 1024
# A compressed response is inflated in steps of at most this many bytes, so that a
# decompression bomb is counted (and stopped) as it grows, never inflated in one go.
INFLATE_STEP = 256 * 1024

# Webhooks: attempts after the first one when the receiver fails (5xx, 408, 429, no
# answer), the default and the most a block may ask for; the wait before retry n is
# WEBHOOK_BACKOFF_SECONDS * 2**(n-1), capped, and never past the call's deadline.
WEBHOOK_DEFAULT_RETRIES = 3
WEBHOOK_MAX_RETRIES = 5
WEBHOOK_BACKOFF_SECONDS = 0.5
WEBHOOK_MAX_BACKOFF_SECONDS = 8.0
# One attempt's time, by default and at most.
WEBHOOK_DEFAULT_TIMEOUT_MS = 10_000
WEBHOOK_MAX_TIMEOUT_MS = 30_000
# Bytes of a webhook receiver's answer kept (for `data.response`); the rest is read and
# dropped up to the tenant's response limit.
WEBHOOK_RESPONSE_KEPT = 4096

# Ports a request may never go to, whatever the host: the "bad ports" of the Fetch
# standard (SMTP, IRC, printers, ...), where an HTTP request could be read as a command
# of another protocol.
BAD_PORTS = {
    1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101,
    102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389,
    427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636,
    989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665,
    6666, 6667, 6668, 6669, 6679, 6697, 10080,
}  # fmt: skip
