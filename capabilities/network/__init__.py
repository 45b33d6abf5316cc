"""The network capability: fetch and webhooks to public hosts (docs/network.md).

`network.fetch(url, opts)` makes one HTTP request (capabilities.network.fetch);
`network.sendWebhook(url, payload, opts)` POSTs JSON, signed and retried
(capabilities.network.webhooks). Both reach only public addresses, or hosts an
administrator allow-listed for the tenant, checked after DNS and on every redirect
(capabilities.network.addresses), over connections pinned to the checked addresses
(capabilities.network.transport).
"""

from capabilities.network.fetch import fetch
from capabilities.network.webhooks import send_webhook

__all__ = ["fetch", "send_webhook"]
