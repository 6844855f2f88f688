"""HMAC-SHA256 signatures of report deliveries, one secret per practice.

The signature covers the timestamp and the exact body bytes (`<timestamp>.<body>`), so a
receiver can refuse both a changed body and an old request replayed later:

    X-Signature-Timestamp: 1767225600
    X-Signature: sha256=<hex of HMAC-SHA256(secret, b"1767225600." + body)>

Timestamps are wall-clock Unix seconds of the sending machine, not the pathway clock: they
prove freshness of a request on the wire, which simulated pathway time says nothing about.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
DELIVERY_HEADER = "X-Delivery-Id"
_PREFIX = "sha256="


class SignatureError(Exception):
    """Why a signed request was refused (no secret or body in the message)."""


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return _PREFIX + digest


def sign(secret: bytes, body: bytes, now: float) -> dict[str, str]:
    """The headers that sign `body` at Unix time `now`."""
    timestamp = int(now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: bytes, body: bytes, headers: Mapping[str, str], now: float, tolerance_s: int
) -> None:
    """Raise SignatureError unless `headers` sign `body` with `secret` within the tolerance."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    given = lowered.get(SIGNATURE_HEADER.lower())
    if not raw_timestamp or not given:
        raise SignatureError(f"send {SIGNATURE_HEADER} and {TIMESTAMP_HEADER}")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} must be Unix seconds") from None
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"{TIMESTAMP_HEADER} is more than {tolerance_s}s from now")
    if not given.startswith(_PREFIX):
        raise SignatureError(f"{SIGNATURE_HEADER} must be 'sha256=<hex>'")
    if not hmac.compare_digest(given, signature(secret, timestamp, body)):
        raise SignatureError("the signature does not match the body")
