"""The HTTP push transport: signed FHIR JSON, a receipt from the answer, errors by class."""

from __future__ import annotations

import json

import httpx
import pytest

from services.notify import signing
from services.notify.config import Practice
from services.notify.transports import DeliveryError, HttpPushTransport, ReportPayload

PRACTICE = Practice(ods="A81001", endpoint="https://gp.example/reports", secret_ref="dev:s")
SECRET = b"s3cret"
PAYLOAD = ReportPayload("dlv_1", {"resourceType": "DiagnosticReport", "id": "ver_1"})
NOW = 1_767_225_600.0


def transport(handler: httpx.MockTransport) -> HttpPushTransport:
    client = httpx.AsyncClient(transport=handler)
    return HttpPushTransport(client, {"A81001": SECRET}.get, wall_time=lambda: NOW)


async def test_posts_signed_fhir_json_and_returns_the_receivers_receipt() -> None:
    seen: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        signing.verify(SECRET, request.content, dict(request.headers), NOW, tolerance_s=300)
        return httpx.Response(201, json={"receipt_id": "rcpt-42"})

    receipt = await transport(httpx.MockTransport(receive)).deliver(PRACTICE, PAYLOAD)
    assert receipt.receipt_id == "rcpt-42"
    request = seen[0]
    assert str(request.url) == PRACTICE.endpoint
    assert request.headers["content-type"] == "application/fhir+json"
    assert request.headers[signing.DELIVERY_HEADER] == "dlv_1"
    assert json.loads(request.content) == PAYLOAD.resource


@pytest.mark.parametrize(
    ("answer", "error_class"),
    [
        (httpx.Response(503), "HTTP503"),
        (httpx.Response(401, json={"detail": "bad signature"}), "HTTP401"),
        (httpx.Response(200, text="ok"), "MissingReceipt"),
        (httpx.Response(200, json={"status": "ok"}), "MissingReceipt"),
        (httpx.Response(200, json=["rcpt"]), "MissingReceipt"),
    ],
)
async def test_a_refusal_or_an_answer_without_a_receipt_is_a_failed_attempt(
    answer: httpx.Response, error_class: str
) -> None:
    with pytest.raises(DeliveryError) as failed:
        await transport(httpx.MockTransport(lambda _: answer)).deliver(PRACTICE, PAYLOAD)
    assert failed.value.error_class == error_class


async def test_network_errors_and_timeouts_are_failed_attempts_named_by_class() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    for handler, error_class in ((refuse, "ConnectError"), (stall, "Timeout")):
        with pytest.raises(DeliveryError) as failed:
            await transport(httpx.MockTransport(handler)).deliver(PRACTICE, PAYLOAD)
        assert failed.value.error_class == error_class


async def test_a_practice_without_a_secret_is_never_sent_an_unsigned_report() -> None:
    calls: list[httpx.Request] = []
    other = Practice(ods="B82002", endpoint="https://gp.example/b", secret_ref="dev:x")

    def receive(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"id": "x"})

    mock = httpx.MockTransport(receive)
    with pytest.raises(DeliveryError) as failed:
        await transport(mock).deliver(other, PAYLOAD)
    assert failed.value.error_class == "NoSigningSecret"
    assert not calls
