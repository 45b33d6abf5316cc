"""network.sendWebhook(url, payload, {headers, retries, timeout}): a JSON POST, signed
when the tenant has a webhook secret, retried with exponential backoff when the
receiver fails.

Signing follows the Standard Webhooks specification (standardwebhooks.com): headers
webhook-id (one id per delivery, the same on every attempt, for the receiver to
deduplicate), webhook-timestamp (seconds, the attempt's own) and webhook-signature
"v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>". The secret is the tenant's, set
by an administrator: "whsec_<base64>" is used as the base64-decoded key (the format the
Standard Webhooks libraries read); any other value is used as it is, as UTF-8 bytes.

Each attempt is recorded in the reply's `attempts` list ({attempt, status, error,
durationMs}) so the broker's audit can show every one of them.
"""

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time

from capabilities.base import CapabilityError
from capabilities.network.addresses import check_destination
from capabilities.network.fetch import base_headers, check_headers, request_timeout_ms
from capabilities.network.limits import (
    MAX_REQUEST_BODY,
    WEBHOOK_BACKOFF_SECONDS,
    WEBHOOK_DEFAULT_RETRIES,
    WEBHOOK_DEFAULT_TIMEOUT_MS,
    WEBHOOK_MAX_BACKOFF_SECONDS,
    WEBHOOK_MAX_RETRIES,
    WEBHOOK_MAX_TIMEOUT_MS,
    WEBHOOK_RESPONSE_KEPT,
)
from capabilities.network.sealed import sealed_handler, unseal
from capabilities.network.transport import exchange, read_body

# The signature headers are the platform's; a block setting them would forge them.
SIGNATURE_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"}
# Failures worth another attempt: the receiver is down, overloaded, or slow.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
RETRY_ERRORS = {"UPSTREAM_ERROR", "TIMEOUT"}


def secret_key(secret):
    """The HMAC key of a tenant's webhook secret (see the module's docstring)."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise CapabilityError(
                "PERMISSION_DENIED",
                "The tenant's webhook secret starts with whsec_ but is not base64; an administrator must set it again.",
            ) from None
    return secret.encode("utf-8")


def sign(key, message_id, timestamp, body):
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _retry_after(response_headers):
    value = response_headers.get("retry-after", "")
    return float(value) if value.isdigit() else 0.0


@sealed_handler
def send_webhook(ctx, args):
    retries = args.get("retries", WEBHOOK_DEFAULT_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= WEBHOOK_MAX_RETRIES:
        raise CapabilityError("INVALID_ARGUMENT", f"retries must be a whole number from 0 to {WEBHOOK_MAX_RETRIES}.")
    timeout_ms = request_timeout_ms(args.get("timeout"), WEBHOOK_DEFAULT_TIMEOUT_MS, WEBHOOK_MAX_TIMEOUT_MS)
    pairs = check_headers(args.get("headers"), refused=SIGNATURE_HEADERS)
    try:
        body = json.dumps(args.get("payload"), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):
        raise CapabilityError("INVALID_ARGUMENT", "The payload must be a JSON value.") from None
    if len(body) > MAX_REQUEST_BODY:
        raise CapabilityError("QUOTA_EXCEEDED", f"The payload is {len(body)} bytes; at most {MAX_REQUEST_BODY} can be sent.")
    key = secret_key(ctx.webhook_secret) if ctx.webhook_secret else None
    message_id = "msg_" + secrets.token_urlsafe(18)
    # Without a deadline from the broker, the call still ends: every attempt at its
    # timeout, plus every wait.
    overall = ctx.bounded((retries + 1) * (timeout_ms / 1000.0 + WEBHOOK_MAX_BACKOFF_SECONDS))
    attempts = []
    last_error = None
    last_status = None
    delivered = False
    answer = b""
    wait = 0.0
    for number in range(1, retries + 2):
        if number > 1:
            if overall.time_left() <= wait:
                break  # no time left for another attempt
            time.sleep(wait)
        started = time.time()
        # Each attempt ends at its own timeout or the call's deadline, whichever comes
        # first; the message says which.
        seconds = overall.timeout(timeout_ms / 1000.0)
        deadline = started + seconds
        call_limited = ctx.deadline is not None and seconds < timeout_ms / 1000.0
        record = {"attempt": number, "status": None, "error": None, "durationMs": 0}
        try:
            destination = check_destination(ctx, args.get("url"), deadline)
            # The receiver verifies the signature on what it gets: the body with the
            # sealed values in, so that is what is signed.
            destination, sent_pairs, sent_body = unseal(ctx, destination, pairs, body, json_body=True)
            headers = [("Content-Type", "application/json"), ("webhook-id", message_id), ("webhook-timestamp", str(int(started)))]
            if key is not None:
                headers.append(("webhook-signature", sign(key, message_id, int(started), sent_body)))
            message = (
                f"The call's time ran out before {destination.host} answered."
                if call_limited
                else f"{destination.host} did not answer within {int(timeout_ms)} ms."
            )
            with exchange(destination, "POST", base_headers(sent_pairs + headers), sent_body, deadline, message) as response:
                last_status = response.status_code
                record["status"] = response.status_code
                answer = read_body(response, ctx.policy.max_response_size, "The receiver's answer")
                retry_after = _retry_after(response.headers)
        except CapabilityError as error:
            record["error"] = error.message
            record["durationMs"] = round((time.time() - started) * 1000, 1)
            attempts.append(record)
            if error.code not in RETRY_ERRORS:
                error.attempts = attempts
                raise
            last_error = error
            wait = min(WEBHOOK_BACKOFF_SECONDS * 2 ** (number - 1), WEBHOOK_MAX_BACKOFF_SECONDS)
            continue
        record["durationMs"] = round((time.time() - started) * 1000, 1)
        attempts.append(record)
        if 200 <= last_status < 300:
            delivered = True
            break
        if last_status not in RETRY_STATUSES:
            break  # the receiver said no (400, 401, 404, ...): asking again will not help
        last_error = None
        wait = min(max(WEBHOOK_BACKOFF_SECONDS * 2 ** (number - 1), retry_after), WEBHOOK_MAX_BACKOFF_SECONDS)
    if last_status is None and last_error is not None:
        # No receiver ever answered: fail like fetch() would, after the retries.
        error = CapabilityError(
            last_error.code, f"The webhook was not delivered after {len(attempts)} attempt(s): {last_error.message}"
        )
        error.attempts = attempts
        raise error
    return {
        "data": {
            "status": last_status,
            "attempts": len(attempts),
            "delivered": delivered,
            "id": message_id,
            "response": answer[:WEBHOOK_RESPONSE_KEPT].decode("utf-8", errors="replace"),
        },
        "status": last_status,
        "attempts": attempts,
        "ok": delivered,
    }


def delivery_attempt_rows(reply):
    """An audit row for each delivery attempt a webhook's reply reports (at most 20),
    delivered or not, under the call's own row."""
    attempts = reply.get("attempts") if not reply.get("ok") else (reply.get("envelope") or {}).get("attempts")
    if not isinstance(attempts, list):
        return []
    rows = []
    for attempt in attempts[:20]:
        if not isinstance(attempt, dict):
            continue
        status = attempt.get("status")
        delivered = isinstance(status, int) and 200 <= status < 300
        rows.append(dict(
            outcome="allowed" if delivered else "failed",
            error_code="" if delivered else "UPSTREAM_ERROR",
            message=str(attempt.get("error") or (f"HTTP {status}" if status else ""))[:300],
            duration_ms=attempt.get("durationMs") if isinstance(attempt.get("durationMs"), (int, float)) else None,
        ))
    return rows
