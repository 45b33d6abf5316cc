"""Sending one HTTP request to a checked destination, and reading its answer within the
tenant's limits.

# SECURITY: the connection goes to the addresses capabilities.network.addresses checked,
# and nowhere else. httpx's transport is given a network backend (PinnedBackend) that
# connects to those addresses itself instead of resolving the host again; the URL, and
# so the Host header and the TLS server name (SNI) and certificate check, stay the
# host's. No proxy from the environment is used (trust_env=False): a proxy would make
# the connection somewhere else.

Every read and write on the connection is bounded by the request's deadline
(DeadlineStream), so a server trickling bytes cannot hold a worker past it, and every
byte of the answer is counted as it arrives, after decompression too (read_body).
"""

import contextlib
import ssl
import threading
import time
import zlib

import httpcore
import httpx

from capabilities.base import CapabilityError
from capabilities.network.limits import INFLATE_STEP, READ_CHUNK

USER_AGENT = "Symposium/1.0 (content block)"

_ssl_context = None
_ssl_lock = threading.Lock()


def ssl_context():
    """The TLS settings of every request: the certifi CA bundle, hostname checking on.
    Tests replace this to trust their own certificate authority."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context(trust_env=False)
        return _ssl_context


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by `deadline` (time.time())."""

    def __init__(self, inner, deadline):
        self.inner = inner
        self.deadline = deadline

    def _timeout(self, timeout, error):
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise error("the request's time ran out")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes, timeout=None):
        return self.inner.read(max_bytes, self._timeout(timeout, httpcore.ReadTimeout))

    def write(self, buffer, timeout=None):
        self.inner.write(buffer, self._timeout(timeout, httpcore.WriteTimeout))

    def close(self):
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        tls = self.inner.start_tls(ssl_context, server_hostname, self._timeout(timeout, httpcore.ConnectTimeout))
        return DeadlineStream(tls, self.deadline)

    def get_extra_info(self, info):
        return self.inner.get_extra_info(info)


class PinnedBackend(httpcore.SyncBackend):
    """Connects to the destination's checked addresses, in order, and to nothing else."""

    def __init__(self, destination, deadline):
        self.destination = destination
        self.deadline = deadline
        self.connected_to = None

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        if host != self.destination.host or port != self.destination.port:
            # httpx asked for a connection the check did not cover: never make it.
            raise httpcore.ConnectError("connection to an unchecked destination refused")
        last_error = httpcore.ConnectError("no address to connect to")
        for address in self.destination.addresses:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                raise httpcore.ConnectTimeout("the request's time ran out")
            try:
                stream = super().connect_tcp(
                    address,
                    port,
                    timeout=remaining if timeout is None else min(timeout, remaining),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
                continue
            self.connected_to = address
            return DeadlineStream(stream, self.deadline)
        raise last_error

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not reachable")


class PinnedTransport(httpx.HTTPTransport):
    def __init__(self, destination, deadline):
        context = ssl_context()
        super().__init__(verify=context, trust_env=False, retries=0)
        self.backend = PinnedBackend(destination, deadline)
        # HTTPTransport has no parameter for the network backend; its pool is replaced
        # by one that uses ours (tests/test_network.py proves the pinning).
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=1,
            max_keepalive_connections=0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=self.backend,
        )


def _reason(error):
    text = str(error)
    lowered = text.lower()
    if "certificate" in lowered or isinstance(getattr(error, "__cause__", None), ssl.SSLCertVerificationError):
        return "its TLS certificate could not be verified"
    if "ssl" in lowered or "tls" in lowered or "handshake" in lowered:
        return "the TLS handshake failed"
    if "refused" in lowered:
        return "connection refused"
    if "unreachable" in lowered:
        return "network unreachable"
    if "reset" in lowered:
        return "connection reset"
    return "connection failed"


@contextlib.contextmanager
def exchange(destination, method, headers, body, deadline, timeout_message):
    """Send one request to `destination` and yield the response, its body not read yet.
    Connection errors become UPSTREAM_ERROR, time running out TIMEOUT."""
    target = f"{destination.host}:{destination.port}"
    try:
        with httpx.Client(
            transport=PinnedTransport(destination, deadline),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(max(deadline - time.time(), 0.001)),
        ) as client:
            request = client.build_request(method, destination.url, headers=headers, content=body)
            response = client.send(request, stream=True)
            try:
                yield response
            finally:
                response.close()
    except httpx.TimeoutException:
        raise CapabilityError("TIMEOUT", timeout_message) from None
    except httpx.ConnectError as error:
        raise CapabilityError("UPSTREAM_ERROR", f"Could not connect to {target}: {_reason(error)}.") from None
    except httpx.RemoteProtocolError:
        raise CapabilityError("UPSTREAM_ERROR", f"{target} sent an invalid or incomplete HTTP response.") from None
    except httpx.LocalProtocolError as error:
        raise CapabilityError("INVALID_ARGUMENT", f"The request cannot be sent: {str(error)[:200]}") from None
    except (httpx.ReadError, httpx.WriteError, httpx.CloseError):
        raise CapabilityError("UPSTREAM_ERROR", f"The connection to {target} broke off.") from None
    except httpx.HTTPError as error:
        raise CapabilityError("UPSTREAM_ERROR", f"The request to {target} failed: {type(error).__name__}.") from None


class _Inflater:
    """gzip or deflate decoding, a bounded step at a time (zlib's max_length), so that
    a small compressed answer that inflates to gigabytes is counted as it grows."""

    def __init__(self, encoding):
        self.encoding = encoding
        self.decoder = None
        self.pending = b""

    def _new_decoder(self, first_bytes):
        if self.encoding == "deflate" and not (
            len(first_bytes) >= 2 and first_bytes[0] & 0x0F == 8 and (first_bytes[0] * 256 + first_bytes[1]) % 31 == 0
        ):
            return zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some servers send
        return zlib.decompressobj(16 + zlib.MAX_WBITS if self.encoding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data):
        """Yield the decoded bytes of `data`, at most INFLATE_STEP at a time."""
        data = self.pending + data
        self.pending = b""
        while data:
            if self.decoder is None:
                if len(data) < 2:
                    self.pending = data
                    return
                self.decoder = self._new_decoder(data)
            out = self.decoder.decompress(data, INFLATE_STEP)
            if out:
                yield out
            if self.decoder.eof:
                # A gzip stream may hold several members, one after the other.
                data = self.decoder.unused_data
                self.decoder = None if self.encoding == "gzip" else self.decoder
                if self.encoding != "gzip":
                    return
            else:
                data = self.decoder.unconsumed_tail

    def finish(self):
        if self.pending:
            raise zlib.error("truncated stream")
        if self.decoder is not None and not self.decoder.eof:
            # What is left in zlib's buffers; at most one window (32 KB).
            yield self.decoder.flush()


def read_body(response, limit, what="The response"):
    """The response's body, decoded, or QUOTA_EXCEEDED as soon as more than `limit`
    bytes have arrived or been inflated. Never holds more than `limit` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise CapabilityError(
            "QUOTA_EXCEEDED", f"{what} is {int(declared)} bytes; this tenant may receive at most {limit} bytes per response."
        )
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        inflater = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        inflater = _Inflater("deflate" if encoding == "deflate" else "gzip")
    else:
        raise CapabilityError("UPSTREAM_ERROR", f"{what} uses a content encoding the platform does not decode ({encoding[:40]}).")
    too_large = CapabilityError("QUOTA_EXCEEDED", f"{what} is larger than {limit} bytes, this tenant's limit per response; it was cut off.")
    body = bytearray()
    received = 0
    try:
        for chunk in response.iter_raw(READ_CHUNK):
            received += len(chunk)
            if received > limit:
                raise too_large
            if inflater is None:
                body += chunk
            else:
                for piece in inflater.feed(chunk):
                    body += piece
                    if len(body) > limit:
                        raise too_large
            if len(body) > limit:
                raise too_large
        if inflater is not None:
            for piece in inflater.finish():
                body += piece
                if len(body) > limit:
                    raise too_large
    except zlib.error:
        raise CapabilityError("UPSTREAM_ERROR", f"{what} is not valid {encoding} data.") from None
    return bytes(body)
