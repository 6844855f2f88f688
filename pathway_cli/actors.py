"""The people and systems around the pathway, driving it only through its public interfaces.

A GP practice system, a vetting clinician, a booking clerk, a reporter (HTTP APIs with their
API keys) and an imaging provider's systems (its own Kafka topics). The end-to-end tests,
the simulator and the benchmark all drive the running system through these.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped,unused-ignore]

from pathway_schemas import topics
from pathway_schemas.base import ReferralEvent
from pathway_schemas.envelope import Received, from_record, to_record

Json = dict[str, Any]

DEV_KEYS = {
    "A81001": "dev-practice-a81001",
    "B82002": "dev-practice-b82002",
    "vetting": "dev-vetting-clinician",
    "reporter": "dev-reporter",
    "clerk": "dev-booking-clerk",
    "operator": "dev-operator",
    "RXA01": "dev-provider-rxa01",
    "NWX02": "dev-provider-nwx02",
}


class ApiError(RuntimeError):
    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} answered {status}: {body[:500]}")
        self.status = status
        self.body = body


class Api:
    """One caller of one service's API with its key; unexpected answers raise ApiError."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, key: str) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = {"X-API-Key": key}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Json | None = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> Any:
        headers = dict(self.headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        url = f"{self.base_url}{path}"
        response = await self.client.request(method, url, json=json, params=params, headers=headers)
        if response.status_code not in ok:
            raise ApiError(method, url, response.status_code, response.text)
        return response.json() if response.content else None


class Practice:
    """A GP practice system: refers, follows, cancels, answers, amends and acknowledges."""

    def __init__(
        self, client: httpx.AsyncClient, urls: Mapping[str, str], ods: str, key: str | None = None
    ) -> None:
        key = key or DEV_KEYS[ods]
        self.ods = ods
        self.request = Api(client, urls["request"], key)
        self.notify = Api(client, urls["notify"], key)

    async def submit(self, details: Json, idempotency_key: str | None = None) -> Json:
        key = idempotency_key or f"{self.ods}-{uuid.uuid4().hex}"
        result: Json = await self.request.call(
            "POST", "/referrals", json=details, idempotency_key=key
        )
        return result

    async def referral(self, referral_id: str) -> Json:
        result: Json = await self.request.call("GET", f"/referrals/{referral_id}")
        return result

    async def cancel(
        self,
        referral_id: str,
        by: str,
        reason: str = "no_longer_needed",
        ok: tuple[int, ...] = (200,),
    ) -> Any:
        body = {"reason": reason, "cancelled_by": by}
        return await self.request.call("POST", f"/referrals/{referral_id}/cancel", json=body, ok=ok)

    async def answer(self, referral_id: str, query_id: str, answer: str, by: str) -> Json:
        body = {"query_id": query_id, "answer": answer, "answered_by": by}
        result: Json = await self.request.call(
            "POST", f"/referrals/{referral_id}/answer", json=body
        )
        return result

    async def amend(self, referral_id: str, by: str, **changes: Any) -> Json:
        result: Json = await self.request.call(
            "POST", f"/referrals/{referral_id}/amend", json={"amended_by": by, **changes}
        )
        return result

    async def report(self, report_id: str) -> Json:
        result: Json = await self.notify.call("GET", f"/reports/{report_id}")
        return result

    async def acknowledge(
        self, report_id: str, by: str, action: str = "Reviewed", addendum_id: str | None = None
    ) -> Json:
        body: Json = {"acknowledged_by": by, "action": action}
        if addendum_id:
            body["addendum_id"] = addendum_id
        result: Json = await self.notify.call(
            "POST", f"/reports/{report_id}/acknowledge", json=body
        )
        return result

    async def inbox(self) -> list[Json]:
        result = await self.notify.call("GET", f"/inbox/{self.ods}")
        return result["items"] if isinstance(result, dict) and "items" in result else list(result)


class VettingClinician:
    def __init__(
        self, client: httpx.AsyncClient, urls: Mapping[str, str], key: str = DEV_KEYS["vetting"]
    ) -> None:
        self.api = Api(client, urls["vetting"], key)

    async def worklist(self, **filters: Any) -> list[Json]:
        page = await self.api.call("GET", "/worklist", params=filters)
        items: list[Json] = page["items"]
        return items

    async def item(self, referral_id: str) -> Json:
        result: Json = await self.api.call("GET", f"/worklist/{referral_id}")
        return result

    async def accept(
        self, referral_id: str, protocol: str, justified_by: str | None = None, **extra: Any
    ) -> Json:
        body: Json = {"protocol": protocol, **extra}
        if justified_by:
            body["justified_by"] = justified_by
        result: Json = await self.api.call("POST", f"/worklist/{referral_id}/accept", json=body)
        return result

    async def return_(self, referral_id: str, reason: str, advice: str) -> Json:
        body = {"reason": reason, "advice": advice}
        result: Json = await self.api.call("POST", f"/worklist/{referral_id}/return", json=body)
        return result

    async def query(self, referral_id: str, question: str) -> Json:
        result: Json = await self.api.call(
            "POST", f"/worklist/{referral_id}/query", json={"question": question}
        )
        return result


class BookingClerk:
    def __init__(
        self, client: httpx.AsyncClient, urls: Mapping[str, str], key: str = DEV_KEYS["clerk"]
    ) -> None:
        self.api = Api(client, urls["scheduling"], key)

    async def booking(self, referral_id: str) -> Json:
        result: Json = await self.api.call("GET", f"/bookings/{referral_id}")
        return result

    async def choose(self, referral_id: str, slot_id: str, chosen_by: str = "patient") -> Json:
        body = {"slot_id": slot_id, "chosen_by": chosen_by}
        result: Json = await self.api.call("POST", f"/bookings/{referral_id}/choose", json=body)
        return result

    async def rebook(self, referral_id: str, slot_id: str | None = None) -> Json:
        body = {"slot_id": slot_id} if slot_id else {}
        result: Json = await self.api.call("POST", f"/bookings/{referral_id}/rebook", json=body)
        return result

    async def defer(
        self, referral_id: str, reason: str, available_from: str, ok: tuple[int, ...] = (200,)
    ) -> Any:
        body = {"reason": reason, "available_from": available_from}
        return await self.api.call("POST", f"/bookings/{referral_id}/defer", json=body, ok=ok)

    async def cancel(self, referral_id: str, reason: str = "patient_request") -> Json:
        result: Json = await self.api.call(
            "POST", f"/bookings/{referral_id}/cancel", json={"reason": reason}
        )
        return result


class Reporter:
    def __init__(
        self, client: httpx.AsyncClient, urls: Mapping[str, str], key: str = DEV_KEYS["reporter"]
    ) -> None:
        self.api = Api(client, urls["reporting"], key)

    async def examination(self, referral_id: str) -> Json:
        result: Json = await self.api.call("GET", f"/examinations/{referral_id}")
        return result

    async def worklist(self, provider: str | None = None) -> Any:
        return await self.api.call(
            "GET", "/worklist", params={"provider": provider} if provider else None
        )

    async def report(
        self,
        referral_id: str,
        *,
        status: str,
        text: str,
        conclusion: str,
        finding_flag: str,
        key_images: list[Json] | None = None,
    ) -> Json:
        body = {
            "status": status,
            "text": text,
            "conclusion": conclusion,
            "finding_flag": finding_flag,
            "key_images": key_images or [],
        }
        result: Json = await self.api.call(
            "POST", f"/examinations/{referral_id}/reports", json=body
        )
        return result

    async def addendum(self, report_id: str, text: str, finding_flag: str) -> Json:
        body = {"text": text, "finding_flag": finding_flag}
        result: Json = await self.api.call("POST", f"/reports/{report_id}/addenda", json=body)
        return result

    async def delay(self, referral_id: str, reason: str = "mdt", note: str = "") -> Json:
        result: Json = await self.api.call(
            "POST", f"/examinations/{referral_id}/delay", json={"reason": reason, "note": note}
        )
        return result


class Operator:
    """The operations team: alerts, deliveries and their redelivery (notify), providers (scheduling)."""

    def __init__(
        self, client: httpx.AsyncClient, urls: Mapping[str, str], key: str = DEV_KEYS["operator"]
    ) -> None:
        self.notify = Api(client, urls["notify"], key)
        self.scheduling = Api(client, urls["scheduling"], key)

    async def alerts(self, state: str = "open") -> list[Json]:
        result: list[Json] = await self.notify.call("GET", "/alerts", params={"state": state})
        return result

    async def deliveries(self, state: str = "failed") -> list[Json]:
        result: list[Json] = await self.notify.call("GET", "/deliveries", params={"state": state})
        return result

    async def redeliver(self, delivery_id: str) -> Json:
        result: Json = await self.notify.call("POST", f"/deliveries/{delivery_id}/redeliver")
        return result

    async def provider(self, ods: str) -> Json:
        result: Json = await self.scheduling.call("GET", f"/providers/{ods}")
        return result


@dataclass
class ProviderSystem:
    """An imaging provider's RIS on its own topics: reads its orders, sends its events.

    Events it sends continue the trace of the order they answer (W3C headers), as a
    well-behaved provider integration would.
    """

    ods: str
    bootstrap: str
    source: str = ""
    #: how long a fetch may wait for records (the embedded broker does not answer early)
    fetch_max_wait_ms: int = 500
    orders: dict[str, list[Received]] = field(default_factory=dict)
    _order_trace: dict[str, dict[str, str]] = field(default_factory=dict)
    _producer: Any = None
    _consumer: Any = None

    def __post_init__(self) -> None:
        self.source = self.source or f"/providers/{self.ods.lower()}/ris"

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await self._producer.start()
        # No consumer group: the provider reads its whole outbound topic from the start.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        await self._consumer.start()
        topic = topics.provider_outbound(self.ods)
        partitions = await _partitions_for(self._consumer, topic)
        self._consumer.assign([TopicPartition(topic, p) for p in partitions])
        await self._consumer.seek_to_beginning()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def poll(self, timeout_ms: int = 200) -> None:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for record in records:
                with contextlib.suppress(Exception):
                    received = from_record(record.headers, record.value, topic=record.topic)
                    self.orders.setdefault(received.envelope.subject, []).append(received)
                    self._order_trace[received.envelope.subject] = dict(received.envelope.trace)

    async def wait_for_order(
        self, referral_id: str, event_type: str, timeout: float = 60.0
    ) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            for received in self.orders.get(referral_id, []):
                if received.envelope.type == event_type:
                    return received
            if time.monotonic() > deadline:
                seen = [r.envelope.type for r in self.orders.get(referral_id, [])]
                raise TimeoutError(
                    f"{self.ods}: no {event_type} for {referral_id} within {timeout}s; saw {seen}"
                )
            await self.poll()

    def order_types(self, referral_id: str) -> list[str]:
        """The types of the orders read so far for a referral, in the order they came."""
        return [r.envelope.type for r in self.orders.get(referral_id, [])]

    async def wait_for_orders(
        self, referral_id: str, event_type: str, count: int, timeout: float = 60.0
    ) -> list[Received]:
        """Wait until `count` orders of this type have come for the referral."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.orders.get(referral_id, []) if r.envelope.type == event_type]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.ods}: {len(found)} of {count} {event_type} for {referral_id} "
                    f"within {timeout}s; saw {self.order_types(referral_id)}"
                )
            await self.poll()

    async def send(self, event: ReferralEvent, *, event_id: str | None = None) -> str:
        record = to_record(
            event,
            topic=topics.provider_inbound(self.ods),
            source=self.source,
            event_id=event_id,
            trace=self._order_trace.get(event.referral_id),
        )
        await self._producer.send_and_wait(
            record.topic, record.value, key=record.key, headers=list(record.headers)
        )
        return dict(record.headers)["ce_id"].decode()


@dataclass
class ProviderNetwork:
    """Every provider's systems at once: scheduling spreads orders and walk-ins across them."""

    systems: dict[str, ProviderSystem]

    @classmethod
    def of(cls, bootstrap: str, codes: tuple[str, ...] = ("RXA01", "NWX02")) -> ProviderNetwork:
        return cls({code: ProviderSystem(code, bootstrap) for code in codes})

    async def start(self) -> None:
        for system in self.systems.values():
            await system.start()

    async def stop(self) -> None:
        for system in self.systems.values():
            await system.stop()

    def __getitem__(self, ods: str) -> ProviderSystem:
        return self.systems[ods]

    def other_than(self, ods: str) -> ProviderSystem:
        return next(s for code, s in self.systems.items() if code != ods)

    async def wait_for_order(
        self, referral_id: str, event_type: str, timeout: float = 60.0
    ) -> tuple[ProviderSystem, Received]:
        """The first order of this type for the referral at any provider, and who got it."""
        deadline = time.monotonic() + timeout
        while True:
            for system in self.systems.values():
                for received in system.orders.get(referral_id, []):
                    if received.envelope.type == event_type:
                        return system, received
            if time.monotonic() > deadline:
                seen = {code: s.order_types(referral_id) for code, s in self.systems.items()}
                raise TimeoutError(
                    f"no {event_type} for {referral_id} at any provider within {timeout}s; saw {seen}"
                )
            for system in self.systems.values():
                await system.poll(timeout_ms=50)


async def _partitions_for(consumer: Any, topic: str) -> list[int]:
    for _ in range(50):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions: was it created?")


async def eventually(
    probe: Callable[[], Any],
    *,
    timeout: float = 60.0,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    """Call `probe` (async) until it returns something truthy; its value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
        except ApiError as error:
            last = error
        if last and not isinstance(last, ApiError):
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s (last: {str(last)[:300]})")
        await asyncio.sleep(interval)


def timeline_types(referral: Json) -> list[str]:
    return [
        entry["event_type"].removeprefix("uk.nhs.imaging.")
        for entry in referral.get("timeline", [])
    ]
