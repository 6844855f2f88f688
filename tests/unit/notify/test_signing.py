"""HMAC-SHA256 signing of deliveries, per practice, over the timestamp and the body."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, sign, verify

SECRET = b"practice-secret"
NOW = 1_767_225_600.0


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    headers = sign(SECRET, b'{"a":1}', NOW)
    expected = hmac.new(SECRET, b'1767225600.{"a":1}', hashlib.sha256).hexdigest()
    assert headers == {TIMESTAMP_HEADER: "1767225600", SIGNATURE_HEADER: f"sha256={expected}"}


@given(body=st.binary(max_size=2048), secret=st.binary(min_size=1, max_size=64))
def test_a_signed_body_verifies_with_the_same_secret(body: bytes, secret: bytes) -> None:
    verify(secret, body, sign(secret, body, NOW), NOW + 10, tolerance_s=300)


@given(body=st.binary(min_size=1, max_size=512), flip=st.integers(min_value=0, max_value=511))
def test_any_changed_byte_is_refused(body: bytes, flip: int) -> None:
    headers = sign(SECRET, body, NOW)
    index = flip % len(body)
    changed = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, changed, headers, NOW, tolerance_s=300)


def test_another_practices_secret_is_refused() -> None:
    headers = sign(b"practice-a", b"body", NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(b"practice-b", b"body", headers, NOW, tolerance_s=300)


def test_a_replayed_old_request_is_refused() -> None:
    headers = sign(SECRET, b"body", NOW)
    verify(SECRET, b"body", headers, NOW + 300, tolerance_s=300)
    with pytest.raises(SignatureError, match="more than 300s"):
        verify(SECRET, b"body", headers, NOW + 301, tolerance_s=300)


def test_a_moved_timestamp_breaks_the_signature() -> None:
    headers = sign(SECRET, b"body", NOW)
    headers[TIMESTAMP_HEADER] = str(int(NOW) + 5)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, b"body", headers, NOW, tolerance_s=300)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "send X-Signature"),
        ({TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: "sha256=00"}, "Unix seconds"),
        ({TIMESTAMP_HEADER: str(int(NOW)), SIGNATURE_HEADER: "md5=00"}, "sha256=<hex>"),
    ],
)
def test_malformed_signature_headers_say_what_is_wrong(
    headers: dict[str, str], message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(SECRET, b"body", headers, NOW, tolerance_s=300)


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in sign(SECRET, b"body", NOW).items()}
    verify(SECRET, b"body", headers, NOW, tolerance_s=300)
