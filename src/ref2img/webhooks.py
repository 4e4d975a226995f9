"""Callback signatures (Standard Webhooks): sign on the server, `verify` in a receiver.

Headers: `webhook-id` (the same on every retry: dedupe on it), `webhook-timestamp` (unix seconds of
this attempt), `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, space-separated
when several). The HMAC key is derived from the app secret, so a receiver needs only the secret:

    from ref2img.webhooks import verify, WebhookVerificationError
    payload = verify(request.headers, raw_body, app_secret)   # the task's query `data` object
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

WEBHOOK_KEY_LABEL = b"ref2img webhook signing key v1"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(ValueError):
    """The callback is not authentic, or too old (a replay)."""


def signing_key(app_secret: str) -> bytes:
    """The HMAC key both sides derive from the app secret (the server never stores the secret)."""
    return hmac.new(app_secret.encode(), WEBHOOK_KEY_LABEL, hashlib.sha256).digest()


def sign(message_id: str, timestamp: int, body: bytes, key: bytes) -> str:
    content = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signed_headers(message_id: str, body: bytes, key: bytes, now: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if now is None else now
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(message_id, timestamp, body, key),
        "content-type": "application/json",
    }


def verify(
    headers: Mapping[str, str], body: bytes | str, app_secret: str, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> dict[str, Any]:
    """Check a callback and return its JSON payload; raise WebhookVerificationError otherwise."""
    lowered = {k.lower(): v for k, v in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    if abs(time.time() - sent) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance_s} s away from now")
    raw = body.encode() if isinstance(body, str) else body
    expected = sign(message_id, sent, raw, signing_key(app_secret))
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures.split()):
        raise WebhookVerificationError("no signature matches: wrong secret or a tampered body")
    return json.loads(raw)
