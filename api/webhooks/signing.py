"""Standard Webhooks signatures (https://www.standardwebhooks.com/): pure.

A secret is ``whsec_`` + base64 of 24 random bytes. A delivery is signed over
``"{webhook-id}.{webhook-timestamp}.{body}"`` with HMAC-SHA256 under the secret's
bytes; ``webhook-signature`` is ``v1,<base64 digest>``. Any Standard Webhooks
library verifies it (the tests use the reference ``standardwebhooks`` package).
Each attempt is signed anew with its own timestamp, so a retry after hours still
passes a receiver's timestamp tolerance.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

from flags.errors import ValidationError

__all__ = ["SECRET_PREFIX", "generate_secret", "sign", "signed_headers", "verify"]

SECRET_PREFIX = "whsec_"
# The spec's default receiver tolerance, in seconds.
TOLERANCE = 5 * 60


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValidationError("a webhook secret starts with whsec_", field="secret")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValidationError("a webhook secret is whsec_ + base64", field="secret") from exc
    if not key:
        raise ValidationError("a webhook secret may not be empty", field="secret")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one attempt: ``v1,<base64 HMAC-SHA256>``.
    Raises ``ValidationError`` (field ``secret``) for a secret not of ``generate_secret``'s form."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (timestamp: now, in seconds)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def verify(
    secret: str,
    headers: dict[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE,
) -> bool:
    """Whether ``headers`` sign ``body`` under ``secret`` with a timestamp within
    ``tolerance`` seconds of ``now``. Any ``v1`` signature of a space-separated list may
    match; comparisons are constant-time."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        ts = int(lowered["webhook-timestamp"])
        given = lowered["webhook-signature"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    expected = sign(secret, msg_id, ts, body).encode()
    return any(
        hmac.compare_digest(expected, candidate.encode())
        for candidate in given.split(" ")
        if candidate.startswith("v1,")
    )
