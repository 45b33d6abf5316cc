"""network.fetch(url, {method, headers, body, timeout, redirect}): one HTTP request, as
fetch() would make it, to a public address (or a host the tenant's administrator
allow-listed), with the answer capped at the tenant's response size.

Like fetch(), an answer with an error status (404, 500) is not a failure: the reply says
`ok: false`. Failures are what fetch() would reject for: the request could not be made
or the answer could not be read (UPSTREAM_ERROR, TIMEOUT), or the platform refused it
(PERMISSION_DENIED, INVALID_ARGUMENT, QUOTA_EXCEEDED).
"""

import json
import math
import re
import time

from capabilities.base import CapabilityError
from capabilities.network.addresses import check_destination
from capabilities.network.limits import (
    DEFAULT_TIMEOUT_MS,
    MAX_HEADER_COUNT,
    MAX_HEADERS_BYTES,
    MAX_REDIRECTS,
    MAX_REQUEST_BODY,
    MAX_TIMEOUT_MS,
)
from capabilities.network.sealed import sealed_handler, unseal
from capabilities.network.transport import USER_AGENT, exchange, read_body

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
REDIRECT_MODES = {"follow", "manual", "error"}

# Headers the platform sets itself: the connection's framing and its destination. A
# block's Host header would let it name another site on the same address than the one
# its URL (and so the checks) named.
PLATFORM_HEADERS = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer", "proxy-authorization", "proxy-connection", "proxy-authenticate",
}  # fmt: skip
# The platform decodes gzip and deflate itself (counting what they inflate to), so it
# sends its own Accept-Encoding; a block's is ignored, as browsers ignore it.
IGNORED_HEADERS = {"accept-encoding"}
# Dropped when a redirect leads to another origin (scheme, host or port): the
# credentials were meant for the first one (the Fetch standard drops Authorization).
CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization"}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_headers(headers, refused=()):
    """The request headers as (name, value) pairs, or INVALID_ARGUMENT."""
    if headers is None:
        return []
    if isinstance(headers, dict):
        items = list(headers.items())
    elif isinstance(headers, list) and all(isinstance(h, (list, tuple)) and len(h) == 2 for h in headers):
        items = [tuple(h) for h in headers]
    else:
        raise CapabilityError("INVALID_ARGUMENT", "Headers must be an object of names and values.")
    if len(items) > MAX_HEADER_COUNT:
        raise CapabilityError("INVALID_ARGUMENT", f"At most {MAX_HEADER_COUNT} headers can be sent.")
    pairs, total = [], 0
    for name, value in items:
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise CapabilityError("INVALID_ARGUMENT", f"{str(name)[:60]!r} is not a valid header name.")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise CapabilityError("INVALID_ARGUMENT", f"The value of header {name} must be a string.")
        value = str(value)
        if any(ch in value for ch in "\r\n\x00"):
            # A line break in a value would start a header (or a request) of its own.
            raise CapabilityError("INVALID_ARGUMENT", f"The value of header {name} contains a line break or NUL character.")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise CapabilityError("INVALID_ARGUMENT", f"The value of header {name} has characters HTTP headers cannot carry.") from None
        lowered = name.lower()
        if lowered in PLATFORM_HEADERS or lowered in refused:
            raise CapabilityError("INVALID_ARGUMENT", f"The {name} header is set by the platform and cannot be given.")
        if lowered in IGNORED_HEADERS:
            continue
        total += len(name) + len(value)
        if total > MAX_HEADERS_BYTES:
            raise CapabilityError("INVALID_ARGUMENT", f"The headers are larger than {MAX_HEADERS_BYTES} bytes.")
        pairs.append((name, value.strip()))
    return pairs


def has_header(pairs, name):
    return any(n.lower() == name for n, _ in pairs)


def encode_body(body, pairs):
    """The body as bytes, and the headers with a Content-Type when the body implies one
    (like fetch: a string is text/plain, an object or array is sent as JSON)."""
    if body is None:
        return None, pairs
    if isinstance(body, str):
        data, kind = body.encode("utf-8"), "text/plain;charset=UTF-8"
    elif isinstance(body, (bytes, bytearray, memoryview)):
        data, kind = bytes(body), None
    elif isinstance(body, (dict, list, int, float, bool)):
        if isinstance(body, float) and not math.isfinite(body):
            raise CapabilityError("INVALID_ARGUMENT", "The body is not a finite number.")
        data, kind = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), "application/json"
    else:
        raise CapabilityError("INVALID_ARGUMENT", "The body must be a string, bytes, or a JSON value.")
    if len(data) > MAX_REQUEST_BODY:
        raise CapabilityError("QUOTA_EXCEEDED", f"The request body is {len(data)} bytes; at most {MAX_REQUEST_BODY} can be sent.")
    if kind and not has_header(pairs, "content-type"):
        pairs = pairs + [("Content-Type", kind)]
    return data, pairs


def request_timeout_ms(value, default=DEFAULT_TIMEOUT_MS, maximum=MAX_TIMEOUT_MS):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CapabilityError("INVALID_ARGUMENT", "The timeout must be a positive number of milliseconds.")
    return min(value, maximum)


def timeout_message(timeout_ms, call_limited, host):
    if call_limited:
        return f"The call's time ran out before {host} answered completely."
    return f"The request to {host} did not complete within {int(timeout_ms)} ms."


def base_headers(pairs):
    headers = list(pairs)
    if not has_header(headers, "user-agent"):
        headers.append(("User-Agent", USER_AGENT))
    if not has_header(headers, "accept"):
        headers.append(("Accept", "*/*"))
    headers.append(("Accept-Encoding", "gzip, deflate"))
    return headers


JSON_TYPES = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
TEXT_TYPES = re.compile(
    r"^(?:text/.*|application/(?:[\w.+-]+\+)?xml|application/(?:java|ecma)script|application/x-www-form-urlencoded|"
    r"image/svg\+xml|application/x-ndjson|application/graphql)$"
)


def decode_data(body, content_type):
    """What `data` holds: parsed JSON for a JSON type, text for a textual type, bytes
    for everything else (images, archives, octet streams). Without a type, text when
    the body is UTF-8, else bytes. A JSON type whose body does not parse is text."""
    mime, _, params = (content_type or "").partition(";")
    mime = mime.strip().lower()
    charset = "utf-8"
    match = re.search(r"charset\s*=\s*\"?([\w.:-]+)", params, re.I)
    if match:
        charset = match.group(1)
    if JSON_TYPES.match(mime):
        text = _text(body, charset)
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text
    if TEXT_TYPES.match(mime):
        return _text(body, charset)
    if not mime:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body
    return body


def _text(body, charset):
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def response_headers(response):
    headers = {}
    for name, value in response.headers.multi_items():
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _same_origin(a, b):
    return (a.scheme, a.raw_host, a.port) == (b.scheme, b.raw_host, b.port)


@sealed_handler
def fetch(ctx, args):
    url = args.get("url")
    method = args.get("method") or "GET"
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise CapabilityError("INVALID_ARGUMENT", f"The method must be one of {', '.join(sorted(METHODS))}.")
    method = method.upper()
    mode = args.get("redirect") or "follow"
    if mode not in REDIRECT_MODES:
        raise CapabilityError("INVALID_ARGUMENT", "redirect must be 'follow', 'manual' or 'error'.")
    pairs = check_headers(args.get("headers"))
    if args.get("body") is not None and method in ("GET", "HEAD"):
        raise CapabilityError("INVALID_ARGUMENT", f"A {method} request cannot have a body.")
    body, pairs = encode_body(args.get("body"), pairs)
    json_body = isinstance(args.get("body"), (dict, list))
    timeout_ms = request_timeout_ms(args.get("timeout"))
    ctx.check_deadline("The call's time ran out before the request could be sent.")
    # The request ends at its own timeout or the call's deadline, whichever comes first;
    # the message says which.
    seconds = ctx.timeout(timeout_ms / 1000.0)
    call_limited = seconds < timeout_ms / 1000.0
    deadline = time.time() + seconds
    limit = ctx.policy.max_response_size

    redirects = 0
    current = url
    while True:
        try:
            destination = check_destination(ctx, current, deadline)
            # Every hop is unsealed from the block's own request (placeholders, not
            # values), so a redirect elsewhere is checked like a first request.
            destination, sent_pairs, sent_body = unseal(ctx, destination, pairs, body, json_body)
        except CapabilityError as error:
            if redirects:
                raise CapabilityError(error.code, f"The request was redirected to {str(current)[:200]}, which was refused: {error.message}") from None
            raise
        message = timeout_message(timeout_ms, call_limited, destination.host)
        with exchange(destination, method, base_headers(sent_pairs), sent_body, deadline, message) as response:
            location = response.headers.get("location")
            if response.status_code in REDIRECT_STATUSES and location and mode != "manual":
                if mode == "error":
                    raise CapabilityError("UPSTREAM_ERROR", f"{destination.host} answered with a redirect ({response.status_code}) and redirect is 'error'.")
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise CapabilityError("UPSTREAM_ERROR", f"Too many redirects (more than {MAX_REDIRECTS}).")
                try:
                    following = response.url.join(location)
                except Exception:  # noqa: BLE001 - any unreadable Location is the server's error
                    raise CapabilityError("UPSTREAM_ERROR", f"{destination.host} redirected to an invalid URL.") from None
                if response.status_code == 303 and method != "HEAD" or response.status_code in (301, 302) and method == "POST":
                    method, body = "GET", None
                    pairs = [(n, v) for n, v in pairs if not n.lower().startswith("content-")]
                if not _same_origin(following, destination.url):
                    pairs = [(n, v) for n, v in pairs if n.lower() not in CREDENTIAL_HEADERS]
                current = str(following)
                continue
            data = read_body(response, limit)
            return {
                "data": decode_data(data, response.headers.get("content-type")),
                "status": response.status_code,
                "statusText": response.reason_phrase,
                "headers": response_headers(response),
                "ok": 200 <= response.status_code < 300,
                "url": str(response.url),
                "redirected": redirects > 0,
            }
