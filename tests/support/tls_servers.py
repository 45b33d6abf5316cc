"""Real HTTP servers on 127.0.0.1 for the network capability's tests.

`LocalServer` runs a ThreadingHTTPServer (optionally with TLS) whose paths each play a
server a block might meet: JSON and text answers, redirects, a 10 GB stream, a slow
loris, a gzip bomb, a webhook receiver that checks Standard Webhooks signatures. Every
request it gets is recorded, so a test can assert what reached it (and what never did).
"""

import base64
import datetime
import gzip
import hashlib
import hmac
import json
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

GB = 1024**3
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.bytes_sent = {}
        self.fail_next = 0
        self.fail_status = 500
        self.webhook_key = None
        self.bombs = {}
        self.sni = []

    def bomb(self, megabytes):
        """gzip of `megabytes` MB of zeros: about a thousand times smaller."""
        with self.lock:
            if megabytes not in self.bombs:
                self.bombs[megabytes] = gzip.compress(bytes(megabytes * 1024 * 1024), compresslevel=9)
            return self.bombs[megabytes]

    def paths(self):
        with self.lock:
            return [r["path"] for r in self.requests]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
        with state.lock:
            state.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "params": params,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                    "time": time.time(),
                }
            )
        route = getattr(self, "route_" + path.strip("/").replace("-", "_"), None)
        if route is None:
            return self.reply(404, b"no such page", "text/plain")
        route(params, body)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def reply(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route_json(self, params, body):
        self.reply(200, b'{"hello": "world", "n": 1}', "application/json; charset=utf-8", [("X-Trace", "abc"), ("Set-Cookie", "a=1")])

    def route_text(self, params, body):
        self.reply(200, "héllo".encode(), "text/plain; charset=utf-8")

    def route_binary(self, params, body):
        self.reply(200, PNG_BYTES, "image/png")

    def route_status(self, params, body):
        self.reply(int(params.get("code", "500")), b"status page", "text/plain")

    def route_echo(self, params, body):
        echo = {"method": self.command, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode("latin-1")}
        self.reply(200, json.dumps(echo).encode(), "application/json")

    def route_redirect(self, params, body):
        self.reply(int(params.get("code", "302")), b"moved", "text/plain", [("Location", params["to"])])

    def route_loop(self, params, body):
        self.reply(302, b"again", "text/plain", [("Location", "/loop")])

    def route_huge(self, params, body):
        """Ten gigabytes of zeros, streamed until the client hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if params.get("declared"):
            self.send_header("Content-Length", str(10 * GB))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        chunk = bytes(64 * 1024)
        sent = 0
        try:
            while sent < 10 * GB:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            with self.server.state.lock:
                self.server.state.bytes_sent[self.path] = sent

    def route_slow(self, params, body):
        """A slow loris: headers at once, then one byte every 100 ms."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def route_silent(self, params, body):
        time.sleep(float(params.get("seconds", "5")))
        try:
            self.reply(200, b"late", "text/plain")
        except OSError:
            pass

    def route_bomb(self, params, body):
        bomb = self.server.state.bomb(int(params.get("mb", "100")))
        self.reply(200, bomb, "application/octet-stream", [("Content-Encoding", "gzip")])

    def route_gzipped(self, params, body):
        self.reply(200, gzip.compress(b'{"compressed": true}'), "application/json", [("Content-Encoding", "gzip")])

    def route_data(self, params, body):
        """A small JSON API (the seed's api.example.com/data): items, limited by ?limit."""
        limit = int(params.get("limit", "10"))
        items = [{"id": n, "name": f"item {n}", "score": n * 7 % 10} for n in range(1, min(limit, 25) + 1)]
        self.reply(200, json.dumps({"items": items, "count": len(items)}).encode(), "application/json")

    def route_webhook(self, params, body):
        state = self.server.state
        verified = None
        if state.webhook_key is not None:
            verified = verify_standard_webhook(state.webhook_key, self.headers, body)
        with state.lock:
            state.requests[-1]["verified"] = verified
            failing = state.fail_next > 0
            if failing:
                state.fail_next -= 1
        if verified is False:
            return self.reply(401, b"bad signature", "text/plain")
        if failing:
            return self.reply(state.fail_status, b"try later", "text/plain")
        self.reply(200, b"thanks", "text/plain")

    route_xyz = route_webhook  # the seed's https://webhook.site/xyz


def verify_standard_webhook(key, headers, body):
    """The receiver's side of Standard Webhooks, written from the specification (not
    with the platform's code): HMAC-SHA256 over '<id>.<timestamp>.<body>', base64, any of
    the space-separated 'v1,<sig>' entries, and a timestamp within five minutes."""
    message_id, timestamp, signatures = headers.get("webhook-id"), headers.get("webhook-timestamp"), headers.get("webhook-signature")
    if not (message_id and timestamp and signatures) or abs(time.time() - int(timestamp)) > 300:
        return False
    expected = base64.b64encode(hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()
    return any(sig.startswith("v1,") and hmac.compare_digest(sig[3:], expected) for sig in signatures.split())


class LocalServer:
    def __init__(self, tls_context=None, host="127.0.0.1", port=0):
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.state = self.httpd.state = State()
        if tls_context is not None:
            tls_context.sni_callback = lambda sslobj, name, ctx: self.state.sni.append(name)
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path, host="127.0.0.1", scheme="http"):
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def make_certificates(directory, names):
    """A test certificate authority and a server certificate for `names`, as PEM files.
    Returns (ca_file, cert_file, key_file)."""

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Symposium test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_file, cert_file, key_file


def server_tls_context(cert_file, key_file):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context
