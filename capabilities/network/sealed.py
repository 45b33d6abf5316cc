"""Sealed secrets: values a block can use in a request without ever holding them.

# SECURITY: a sealed secret's value reaches nothing but the wire of an HTTPS request to
# one of the hosts its administrator named. The block's process.env holds a placeholder,
# "symposium-sealed:<NAME>:<32 hex digits>", made afresh for every run (run_env), so a
# placeholder seen in one run (in a log, a file, a database) is worth nothing in the
# next. The value travels to the handler as the secret's ciphertext (CallContext.sealed,
# also through RQ) and is decrypted only here, in the call that sends it (unseal):
#
# - a request that carries a placeholder (in its URL, a header or its body) goes out
#   only when its scheme is https and its host is one of the secret's hosts; anywhere
#   else it is refused with PERMISSION_DENIED, and the call's audit row says which
#   secret and which host (never the value). Redirects are checked again, hop by hop,
#   with the block's request as it wrote it (placeholders, not values);
# - in a URL the value is percent-encoded whole, so it cannot change the URL's host; a
#   value a header cannot carry (a line break, a character beyond Latin-1) is refused;
# - what comes back (the answer's body, headers and URL, error messages, a webhook's
#   attempts) has every sealed value of the run replaced by its placeholder (redact), so
#   a host that echoes what it got (many do) shows the block the placeholder again.
#
# Not covered (docs/policy.md): a host among the secret's own that hands the value back
# transformed (base64, cut short, inside another text) reveals it, as a host that
# publishes what it is sent does; seal a secret to hosts that only authenticate with it.
"""

import json
import secrets
import urllib.parse
from dataclasses import dataclass, replace

import httpx

from capabilities.base import CapabilityError
from tenants import crypto
from tenants.policy import host_matches

PLACEHOLDER_PREFIX = "symposium-sealed:"


@dataclass(frozen=True, repr=False)
class Seal:
    """A sealed secret as one run's calls carry it: its name, the run's placeholder for
    it, its ciphertext (decrypted only to be sent) and the hosts it may be sent to."""

    name: str
    placeholder: str
    encrypted_value: str
    hosts: tuple

    def __repr__(self):
        return f"<Seal {self.name} for {' '.join(self.hosts)}>"

    def value(self):
        return crypto.decrypt(self.encrypted_value)


def new_placeholder(name):
    """A placeholder for the secret `name`, unguessable, different in every run."""
    return f"{PLACEHOLDER_PREFIX}{name}:{secrets.token_hex(16)}"


def run_env(run_secrets, placeholders):
    """process.env of a run: the values of plain secrets, the placeholders of sealed
    ones. `placeholders` (name -> placeholder) is the run's own, kept for as long as the
    run lasts; a sealed secret without one yet gets one."""
    env = {}
    for secret in run_secrets:
        if secret.sealed:
            env[secret.name] = placeholders.setdefault(secret.name, new_placeholder(secret.name))
        else:
            env[secret.name] = secret.value
    return env


def run_seals(run_secrets, placeholders):
    """The Seals of a run's calls: the sealed secrets the block holds a placeholder of,
    with the ciphertext and hosts read last (an administrator's change of hosts reaches
    running blocks with their policy)."""
    return tuple(
        Seal(s.name, placeholders[s.name], s.encrypted_value, tuple(s.hosts))
        for s in run_secrets if s.sealed and s.name in placeholders
    )


def _contains(value, needle, needle_bytes):
    if isinstance(value, str):
        return needle in value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return needle_bytes in bytes(value)
    if isinstance(value, dict):
        return any(_contains(k, needle, needle_bytes) or _contains(v, needle, needle_bytes) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_contains(v, needle, needle_bytes) for v in value)
    return False


def placeholders_in(seals, value):
    """The names of the sealed secrets whose placeholder appears in `value` (a call's
    arguments, a console line), for the audit log."""
    return [s.name for s in seals if _contains(value, s.placeholder, s.placeholder.encode())]


def _refuse(seal, why):
    return CapabilityError("PERMISSION_DENIED", f"The request carries the sealed secret {seal.name}, {why}.")


def _header_value(seal, value):
    if any(ch in value for ch in "\r\n\x00"):
        raise _refuse(seal, "whose value has a line break or NUL character and cannot be sent in a header")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise _refuse(seal, "whose value has characters HTTP headers cannot carry") from None
    return value


def unseal(ctx, destination, pairs, body, json_body=False):
    """The request to `destination` with the values of the sealed secrets whose
    placeholders it carries put in: (destination, pairs, body). PERMISSION_DENIED when
    one of them may not go there. `json_body`: the body is JSON the platform encoded,
    where a value goes in escaped as a JSON string's content."""
    if not ctx.sealed:
        return destination, pairs, body
    url = str(destination.url)
    used = [
        s for s in ctx.sealed
        if s.placeholder in url or any(s.placeholder in v for _, v in pairs)
        or (body is not None and s.placeholder.encode() in body)
    ]
    if not used:
        return destination, pairs, body
    host = destination.host
    for seal in used:
        if destination.url.scheme != "https":
            raise _refuse(seal, f"which is sent over HTTPS only; this request goes to {host[:100]} over plain HTTP")
        if not host_matches(host, seal.hosts):
            raise _refuse(seal, f"which may be sent only to {', '.join(seal.hosts)}; this request goes to {host[:100]}")
    for seal in used:
        try:
            value = seal.value()
        except ValueError as e:
            raise _refuse(seal, f"which cannot be sent: {e}") from None
        if seal.placeholder in url:
            url = url.replace(seal.placeholder, urllib.parse.quote(value, safe=""))
        pairs = [(n, v.replace(seal.placeholder, _header_value(seal, value)) if seal.placeholder in v else v) for n, v in pairs]
        if body is not None:
            put = json.dumps(value, ensure_ascii=False)[1:-1] if json_body else value
            body = body.replace(seal.placeholder.encode(), put.encode("utf-8"))
    if url != str(destination.url):
        unsealed = httpx.URL(url)
        # Percent-encoded, a value cannot move the request elsewhere; checked all the same.
        if (unsealed.scheme, unsealed.host, unsealed.port) != (destination.url.scheme, destination.url.host, destination.url.port):
            raise _refuse(used[0], "and putting its value in would change where the request goes")
        destination = replace(destination, url=unsealed)
    return destination, pairs, body


def _redactions(ctx):
    """(value, placeholder) of every sealed secret of the run, longest first (so that a
    value containing another is replaced whole), as text and as bytes."""
    pairs = []
    for seal in ctx.sealed:
        try:
            value = seal.value()
        except ValueError:
            continue  # undecryptable: it can have been sent nowhere either
        if value:
            pairs.append((value, seal.placeholder))
    pairs.sort(key=lambda p: -len(p[0]))
    return pairs


def _redact_value(value, pairs):
    if isinstance(value, str):
        for secret, placeholder in pairs:
            if secret in value:
                value = value.replace(secret, placeholder)
        return value
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value)
        for secret, placeholder in pairs:
            value = value.replace(secret.encode("utf-8"), placeholder.encode())
        return value
    if isinstance(value, dict):
        return {_redact_value(k, pairs): _redact_value(v, pairs) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, pairs) for v in value]
    return value


def redact(ctx, value):
    """`value` (a reply, a message) with every sealed value of the run replaced by its
    placeholder."""
    if not ctx.sealed:
        return value
    pairs = _redactions(ctx)
    return _redact_value(value, pairs) if pairs else value


def sealed_handler(handler):
    """The network handler `handler`, whose replies and errors never carry a sealed value
    of the run: what an answer echoes goes back to the block as the placeholder."""

    def guarded(ctx, args):
        try:
            reply = handler(ctx, args)
        except CapabilityError as error:
            if not ctx.sealed:
                raise
            redacted = CapabilityError(error.code, redact(ctx, error.message), error.retry_after)
            if hasattr(error, "attempts"):
                redacted.attempts = redact(ctx, error.attempts)
            raise redacted from None
        return redact(ctx, reply)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    guarded.__wrapped__ = handler
    return guarded
