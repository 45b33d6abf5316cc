"""The network capability: fetch and webhooks to public hosts (docs/network.md).

`network.fetch(url, opts)` makes one HTTP request (capabilities.network.fetch);
`network.sendWebhook(url, payload, opts)` POSTs JSON, signed and retried
(capabilities.network.webhooks). Both reach only public addresses, or hosts an
administrator allow-listed for the tenant, checked after DNS and on every redirect
(capabilities.network.addresses), over connections pinned to the checked addresses
(capabilities.network.transport).
"""

from urllib.parse import urlsplit

from capabilities.network.fetch import fetch
from capabilities.network.webhooks import delivery_attempt_rows, send_webhook

__all__ = ["delivery_attempt_rows", "fetch", "send_webhook", "url_host"]


def url_host(args):
    """The audit target of a network call: the host of its URL, not the URL (whose path
    and query may carry tokens)."""
    url = args.get("url")
    if not isinstance(url, str):
        return url if isinstance(url, int) else ""
    try:
        return urlsplit(url).hostname or url[:100]
    except ValueError:
        return url[:100]
