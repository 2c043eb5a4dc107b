"""api.webhooks.signing: Standard Webhooks signatures, checked by the reference library."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from api.webhooks.signing import generate_secret, sign, signed_headers, verify
from flags.errors import ValidationError


def test_generate_secret__form__whsec_base64_of_24_bytes() -> None:
    """A secret is whsec_ + base64 of 24 bytes, and every one differs."""
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(secret) == len("whsec_") + 32
    assert generate_secret() != secret


def test_signed_headers__reference_library__verifies() -> None:
    """standardwebhooks verifies our headers and hands back the JSON body."""
    secret = generate_secret()
    body = b'{"type":"state.killed","sequence":7}'
    headers = signed_headers(secret, "msg_7_wh_1", body)
    assert Webhook(secret).verify(body, headers) == {"type": "state.killed", "sequence": 7}


def test_signed_headers__tampered_body__reference_library_refuses() -> None:
    """A changed body, id or secret fails the reference verification."""
    secret = generate_secret()
    body = b'{"a":1}'
    headers = signed_headers(secret, "msg_1", body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)


def test_sign__reference_library__same_value() -> None:
    """Our signature equals the reference library's for the same inputs."""
    secret = generate_secret()
    from datetime import UTC, datetime

    ts = 1_700_000_000
    ours = sign(secret, "msg_x", ts, b"hello")
    theirs = Webhook(secret).sign("msg_x", datetime.fromtimestamp(ts, UTC), "hello")
    assert ours == theirs


def test_verify__own_check__accepts_and_refuses() -> None:
    """verify accepts a fresh signature among several, refuses an old or forged one."""
    secret = generate_secret()
    headers = signed_headers(secret, "m", b"x")
    headers["webhook-signature"] = "v1,Zm9yZ2Vk " + headers["webhook-signature"]
    assert verify(secret, headers, b"x")
    assert not verify(secret, headers, b"y")
    assert not verify(secret, headers, b"x", now=time.time() + 3600)
    assert not verify(secret, {}, b"x")


@pytest.mark.parametrize("secret", ["nope", "whsec_", "whsec_!!!"])
def test_sign__malformed_secret__validation_error(secret: str) -> None:
    """A secret not of generate_secret's form raises ValidationError naming it."""
    with pytest.raises(ValidationError) as info:
        sign(secret, "m", 1, b"")
    assert info.value.field == "secret"
