"""Where a request may go: URL checks, name resolution and the SSRF guard.

# SECURITY: a block's URL is checked by the address it will connect to, after DNS,
# never by its text. The host is resolved here, every address it resolves to must be a
# public one (unless an administrator allow-listed the host for the tenant), and the
# connection is then made to exactly those addresses (capabilities.network.transport):
# a DNS answer that changes between the check and the connection (DNS rebinding) is
# never asked for. Every redirect hop goes through the same check.

Host spellings that mean an IPv4 address (2130706433, 0177.0.0.1, 0x7f.1, 127.1, with
or without a trailing dot) are read the way browsers read them (the WHATWG URL
standard's IPv4 parser) and replaced by the dotted address before anything else, so
the check, the connection and the Host header all see the same address.
"""

import concurrent.futures
import ipaddress
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass

import httpx

from capabilities.base import CapabilityError
from capabilities.network.limits import BAD_PORTS, DNS_THREADS, DNS_TIMEOUT_SECONDS, MAX_URL_LENGTH
from tenants.policy import host_matches

# Networks a request may not reach, with the name the refusal gives. IPv6 addresses
# that embed an IPv4 address are judged by it first (IPV4_EMBEDDING below).
BLOCKED_IPV4 = [
    ("0.0.0.0/8", "the unspecified 'this network' range"),
    ("10.0.0.0/8", "a private network"),
    ("100.64.0.0/10", "carrier-grade NAT space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata lives here)"),
    ("172.16.0.0/12", "a private network"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation space"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "a private network"),
    ("198.18.0.0/15", "benchmarking space"),
    ("198.51.100.0/24", "documentation space"),
    ("203.0.113.0/24", "documentation space"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
]
BLOCKED_IPV6 = [
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible space"),
    ("64:ff9b:1::/48", "local-use NAT64 space"),
    ("100::/64", "discard space"),
    ("2001::/23", "IETF protocol assignments (Teredo and others)"),
    ("2001:db8::/32", "documentation space"),
    ("3fff::/20", "documentation space"),
    ("fc00::/7", "unique-local (private) space"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
]
_V4 = [(ipaddress.ip_network(net), why) for net, why in BLOCKED_IPV4]
_V6 = [(ipaddress.ip_network(net), why) for net, why in BLOCKED_IPV6]


def _last_32_bits(address):
    return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]


def _bits(address, start, length=32):
    """The IPv4 address in bits [start, start + 32) of the IPv6 address, counted from the
    most significant bit."""
    return ipaddress.IPv4Address((int(address) >> (128 - start - length)) & 0xFFFFFFFF)


def _teredo(address):
    server, client = address.teredo
    return [server, client]


# Every IPv6 form that carries an IPv4 address, and where it carries it. An address of
# one of these forms is judged first by the IPv4 address(es) it carries (a packet to it
# reaches that IPv4 host through a translator, a tunnel or the kernel's own dual stack),
# then as itself: the forms no public host uses (IPv4-compatible, SIIT, local NAT64,
# Teredo) are refused whatever they carry.
IPV4_EMBEDDING = [
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped", _last_32_bits),
    (ipaddress.ip_network("::ffff:0:0:0/96"), "SIIT (IPv4-translated)", _last_32_bits),
    (ipaddress.ip_network("64:ff9b::/96"), "NAT64", _last_32_bits),
    # Local-use NAT64 prefixes may be of any RFC 6052 length; the /96 reading is judged
    # for the message, and the whole range is refused anyway (REFUSED_FORMS).
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64", _last_32_bits),
    (ipaddress.ip_network("2002::/16"), "6to4", lambda address: [_bits(address, 16)]),
    (ipaddress.ip_network("2001::/32"), "Teredo", _teredo),
    (ipaddress.ip_network("::/96"), "IPv4-compatible", _last_32_bits),
]
# Forms refused whatever they carry: no public host is reached through them.
REFUSED_FORMS = {
    "SIIT (IPv4-translated)": "SIIT (IPv4-translated) space",
    "local-use NAT64": "local-use NAT64 space",
    "Teredo": "Teredo space",
    "IPv4-compatible": "IPv4-compatible space",
}


def refusal(address):
    """Why `address` (an ipaddress object) may not be reached, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (zone) address"
        for network, form, embedded in IPV4_EMBEDDING:
            if address in network:
                if form == "IPv4-compatible" and int(address) <= 1:
                    break  # :: and ::1, judged below as themselves
                for ipv4 in embedded(address):
                    why = refusal(ipv4)
                    if why:
                        return f"{why} (as {form} {address.compressed})"
                if form in REFUSED_FORMS:
                    return REFUSED_FORMS[form]
                break
        for network, why in _V6:
            if address in network:
                return why
    else:
        for network, why in _V4:
            if address in network:
                return why
    if not address.is_global:
        return "a reserved address"
    return None


# -- host spellings --------------------------------------------------------------------

_IPV4_PART = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")


def _ipv4_number(part):
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        if not re.fullmatch(r"[0-7]+", part):
            raise ValueError(part)
        return int(part, 8)
    return int(part, 10)


def legacy_ipv4(host):
    """The IPv4 address a host spells, the way browsers read it (WHATWG URL: decimal,
    octal, hex and shortened forms), or None when the host is a name. A host that ends
    in a number but is not a valid address is refused."""
    if ":" in host:
        return None  # an IPv6 address
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if not parts or not _IPV4_PART.match(parts[-1]):
        return None
    try:
        if len(parts) > 4 or not all(_IPV4_PART.match(p) for p in parts):
            raise ValueError(host)
        numbers = [_ipv4_number(p) for p in parts]
        if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
            raise ValueError(host)
        value = numbers[-1]
        for index, number in enumerate(numbers[:-1]):
            value += number * 256 ** (3 - index)
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise CapabilityError("INVALID_ARGUMENT", f"The host {host[:100]!r} is not a valid IPv4 address.") from None


@dataclass(frozen=True)
class Destination:
    """Where one request goes: the host as the URL names it (for Host and TLS SNI), the
    port, and the addresses it was checked against (the only ones connected to)."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple
    allow_listed: bool


def parse_url(url):
    """The URL as httpx reads it, with its host in canonical form, or INVALID_ARGUMENT."""
    if not isinstance(url, str) or not url:
        raise CapabilityError("INVALID_ARGUMENT", "A URL (a string) is required.")
    if len(url) > MAX_URL_LENGTH:
        raise CapabilityError("INVALID_ARGUMENT", f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ch in url for ch in "\r\n\t\x00"):
        raise CapabilityError("INVALID_ARGUMENT", "The URL contains a control character.")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        # httpx refuses some IPv4 spellings browsers accept (0177.0.0.1): read the host
        # the browsers' way, put the dotted address in its place and parse again.
        parsed = _with_canonical_ipv4(url, error)
    except (ValueError, TypeError) as error:
        raise CapabilityError("INVALID_ARGUMENT", f"The URL is not valid ({str(error)[:100]}).") from None
    if parsed.scheme not in ("http", "https"):
        raise CapabilityError("INVALID_ARGUMENT", f"Only http and https URLs can be fetched, not {parsed.scheme[:20] or 'this one'}.")
    if parsed.userinfo:
        # fetch() refuses credentials in URLs too; they are easy to confuse with a host.
        raise CapabilityError("INVALID_ARGUMENT", "URLs with a user name or password are not accepted; send an Authorization header.")
    host = parsed.raw_host.decode("ascii").lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise CapabilityError("INVALID_ARGUMENT", "The URL has no host.")
    if "%" in host:
        raise CapabilityError("INVALID_ARGUMENT", "Scoped IPv6 addresses (with a zone) are not accepted.")
    ipv4 = legacy_ipv4(host)
    if ipv4 is not None:
        host = str(ipv4)
    if host.encode("ascii") != parsed.raw_host:
        parsed = parsed.copy_with(host=host)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if port in BAD_PORTS:
        raise CapabilityError("PERMISSION_DENIED", f"Port {port} is not reachable: it belongs to another protocol than HTTP.")
    return parsed, host, port


def _with_canonical_ipv4(url, error):
    invalid = CapabilityError("INVALID_ARGUMENT", f"The URL is not valid ({str(error)[:100]}).")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise invalid from None
    ipv4 = legacy_ipv4(host) if host else None
    if ipv4 is None:
        raise invalid
    netloc = parts.netloc
    at = netloc.rfind("@") + 1
    position = netloc.lower().find(host, at)
    if position < 0:
        raise invalid
    netloc = netloc[:position] + str(ipv4) + netloc[position + len(host) :]
    try:
        parsed = httpx.URL(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
    except (httpx.InvalidURL, ValueError):
        raise invalid from None
    if parsed.raw_host != str(ipv4).encode():
        raise invalid
    return parsed


def literal_address(host):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# -- resolution ------------------------------------------------------------------------

_resolvers = concurrent.futures.ThreadPoolExecutor(max_workers=DNS_THREADS, thread_name_prefix="symposium-dns")


def resolve(host, port):
    """The addresses `host` resolves to (strings), in the system resolver's order.
    Tests replace this to give names of their own."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses = []
    for info in infos:
        address = info[4][0]
        if address not in addresses:
            addresses.append(address)
    return addresses


def _resolve_within(host, port, seconds):
    future = _resolvers.submit(lambda: resolve(host, port))
    try:
        return future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise CapabilityError("TIMEOUT", f"The name {host} did not resolve in time.") from None
    except (OSError, UnicodeError):
        raise CapabilityError("UPSTREAM_ERROR", f"The host {host} could not be found (DNS lookup failed).") from None


def check_destination(ctx, url, deadline):
    """Check a URL for this tenant and resolve it: the Destination to connect to, or a
    CapabilityError naming why not. Used for the first request and every redirect."""
    parsed, host, port = parse_url(url)
    policy = ctx.policy
    profile = policy.profile_name or "tenant's"
    if policy.network_access == "none":
        raise CapabilityError("PERMISSION_DENIED", f"The {profile} profile does not allow network access.")
    if policy.network_access == "cdn" and not host_matches(host, policy.cdn_domains):
        raise CapabilityError("PERMISSION_DENIED", f"The {profile} profile does not allow requests to {host[:100]} (CDN domains only).")
    allow_listed = host_matches(host, ctx.allowed_hosts or [])
    literal = literal_address(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise CapabilityError("TIMEOUT", "The request's time ran out before the host was resolved.")
        addresses = _resolve_within(host, port, min(DNS_TIMEOUT_SECONDS, remaining))
        if not addresses:
            raise CapabilityError("UPSTREAM_ERROR", f"The host {host} could not be found (DNS lookup failed).")
    if not allow_listed:
        for address in addresses:
            why = refusal(ipaddress.ip_address(address))
            if why:
                shown = f"{host} is {why}" if literal is not None else f"{host} resolves to a non-public address"
                raise CapabilityError(
                    "PERMISSION_DENIED",
                    f"{shown}; only public addresses can be reached (an administrator can allow-list a host for the tenant).",
                )
    return Destination(parsed, host, port, tuple(addresses), allow_listed)
