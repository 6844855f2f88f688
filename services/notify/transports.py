"""How a report reaches a practice's system: a transport behind a small interface.

The pathway rules (retries, receipts, acknowledgement, alerts) never see the wire. The first
transport pushes the FHIR resource over HTTPS, signed with the practice's secret; another
(MESH, a GP Connect endpoint, ...) is one more class with `name` and `deliver`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from services.common.tracing import current_trace
from services.notify import signing
from services.notify.config import Practice


@dataclass(frozen=True)
class ReportPayload:
    delivery_id: str  # the same on every attempt: receivers use it to drop repeats
    resource: dict[str, Any]


@dataclass(frozen=True)
class Receipt:
    receipt_id: str


class DeliveryError(Exception):
    """A failed attempt; `error_class` is a short name with no patient data (e.g. HTTP503)."""

    def __init__(self, error_class: str) -> None:
        super().__init__(error_class)
        self.error_class = error_class[:128]


class ReportTransport(Protocol):
    name: str

    async def deliver(self, practice: Practice, payload: ReportPayload) -> Receipt: ...


def encode(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class HttpPushTransport:
    """POST `application/fhir+json` to the practice endpoint; a 2xx with a receipt id is success."""

    name = "http"

    def __init__(
        self,
        client: httpx.AsyncClient,
        secret_of: Callable[[str], bytes | None],
        *,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.secret_of = secret_of
        self.wall_time = wall_time

    async def deliver(self, practice: Practice, payload: ReportPayload) -> Receipt:
        secret = self.secret_of(practice.ods)
        if secret is None:
            raise DeliveryError("NoSigningSecret")
        body = encode(payload.resource)
        headers = {
            "Content-Type": "application/fhir+json",
            "Accept": "application/json",
            signing.DELIVERY_HEADER: payload.delivery_id,
            **signing.sign(secret, body, self.wall_time()),
            # W3C trace context: a practice system that traces continues the report's trace.
            **current_trace(),
        }
        try:
            response = await self.client.post(practice.endpoint, content=body, headers=headers)
        except httpx.TimeoutException:
            raise DeliveryError("Timeout") from None
        except httpx.HTTPError as error:
            raise DeliveryError(type(error).__name__) from None
        if not response.is_success:
            raise DeliveryError(f"HTTP{response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise DeliveryError("MissingReceipt") from None
        receipt = (
            (answer.get("receipt_id") or answer.get("id")) if isinstance(answer, dict) else None
        )
        if not isinstance(receipt, str) or not receipt or len(receipt) > 128:
            raise DeliveryError("MissingReceipt")
        return Receipt(receipt_id=receipt)
