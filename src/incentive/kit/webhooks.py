"""Standard Webhooks (https://www.standardwebhooks.com) v1 signatures: HMAC-SHA256 over
``id.timestamp.body``, in the ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``
headers. Used for webhooks we receive (coupon providers) and those we send (reward messages).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

_SECRET_PREFIX = "whsec_"


class BadSignature(Exception):
    """A webhook that must not be believed; the message names what is wrong."""


def webhook_key(secret: str) -> bytes:
    # Standard Webhooks secrets are "whsec_<base64>" and the key is the decoded bytes, so a
    # provider using one of its libraries interoperates; any other secret is used as UTF-8.
    if secret.startswith(_SECRET_PREFIX):
        encoded = secret[len(_SECRET_PREFIX) :]
        try:  # their libraries accept the base64 unpadded too
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error as exc:
            raise ValueError("a whsec_ secret must be base64") from exc
    return secret.encode()


def _digest(secret: str, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for a body sent at `timestamp` (unix seconds)."""
    return "v1," + base64.b64encode(_digest(secret, msg_id, str(timestamp), body)).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = 300,
) -> None:
    """Accept a webhook only when one of its v1 signatures is ours over these exact bytes and
    its timestamp is within `tolerance` seconds of now; raise `BadSignature` otherwise."""
    lowered = {name.lower(): value for name, value in headers.items()}
    values: dict[str, str] = {}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        value = lowered.get(name, "").strip()
        if not value:
            raise BadSignature(f"missing header {name}")
        values[name] = value
    stamp = values["webhook-timestamp"]
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise BadSignature(f"webhook-timestamp is not unix seconds: {stamp[:40]!r}")
    age = (time.time() if now is None else now) - int(stamp)
    if age > tolerance:
        raise BadSignature(f"stale webhook-timestamp: {int(age)} s old")
    if age < -tolerance:
        raise BadSignature(f"webhook-timestamp {int(-age)} s in the future")
    expected = _digest(secret, values["webhook-id"], stamp, body)
    matched = False
    for candidate in values["webhook-signature"].split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        # No early exit: every candidate costs the same, whichever one matches.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise BadSignature("no matching signature")


def headers(secret: str, msg_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The three headers of a webhook we send with ``body``."""
    stamp = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
    }
