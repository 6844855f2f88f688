"""A steady load of whole referrals that keeps going while services die under it.

Each journey drives one referral from request to acknowledged report only through the
public interfaces (HTTP APIs, provider topics), as the e2e actors do, but every call is
one a real client would repeat when a service is down: commands carry idempotency keys,
provider events carry fixed event ids, and a refused connection or a 5xx is retried until
a deadline. Nothing here sleeps to synchronise: every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import httpx
import nhs_number

from pathway_cli.actors import (
    ApiError,
    BookingClerk,
    Json,
    Practice,
    ProviderNetwork,
    ProviderSystem,
    VettingClinician,
)
from pathway_cli.system import System
from pathway_schemas.base import ReferralEvent
from pathway_schemas.envelope import Received
from pathway_schemas.events import (
    ProviderExaminationCompleted,
    ProviderOrderBooked,
    ProviderPatientArrived,
    ProviderReportIssued,
    ProviderWalkInAuthorised,
)
from pathway_schemas.values import StudyReference

T = TypeVar("T")

WALK_IN = "uk.nhs.imaging.provider.walk_in_authorised.v1"
ORDER_BOOKED = "uk.nhs.imaging.provider.order_booked.v1"
REFERRER = "G1234567"
# Answers a client retries: the service is restarting, or its store is.
RETRIABLE = frozenset({500, 502, 503, 504})
_IDS = uuid.UUID("0b3f7c9e-5d0a-4f4e-8a53-6a0f2f4f9c11")


def synthetic_nhs_number() -> str:
    return str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0])


@dataclass
class Calls:
    """What the clients saw: how often a call had to be repeated, and why."""

    retried: int = 0
    server_errors: int = 0
    unavailable: int = 0


class Retrying:
    """Repeats a call through restarts and outages, as a GP system or RIS would."""

    def __init__(self, calls: Calls, interval: float = 0.5) -> None:
        self.calls = calls
        self.interval = interval

    async def __call__(
        self, call: Callable[[], Awaitable[T]], what: str, timeout: float = 150.0
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await call()
            except httpx.TransportError as error:
                self.calls.unavailable += 1
                last: Exception = error
            except ApiError as error:
                if error.status not in RETRIABLE:
                    raise
                if error.status == 500:
                    self.calls.server_errors += 1
                last = error
            self.calls.retried += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: still failing after {timeout}s ({last})") from last
            await asyncio.sleep(self.interval)

    async def until(
        self,
        probe: Callable[[], Awaitable[T | None]],
        what: str,
        timeout: float = 150.0,
        interval: float = 0.5,
    ) -> T:
        """Poll `probe` until it returns a value; unavailability counts as 'not yet'."""
        deadline = time.monotonic() + timeout
        while True:
            value: T | None = None
            with contextlib.suppress(httpx.TransportError):
                try:
                    value = await probe()
                except ApiError as error:
                    if error.status not in RETRIABLE and error.status != 404:
                        raise
            if value is not None:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not reached within {timeout}s")
            await asyncio.sleep(interval)


class OrderFeed:
    """One task reads every provider's outbound topic; journeys only look at what it read."""

    def __init__(self, providers: ProviderNetwork) -> None:
        self.providers = providers
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> OrderFeed:
        await self.providers.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.providers.stop()

    async def _run(self) -> None:
        while True:
            for provider in self.providers.systems.values():
                await provider.poll(timeout_ms=100)

    def orders(self, referral_id: str) -> list[tuple[ProviderSystem, Received]]:
        return [
            (provider, received)
            for provider in self.providers.systems.values()
            for received in provider.orders.get(referral_id, [])
        ]

    async def wait_for(
        self, referral_id: str, event_type: str, timeout: float = 150.0
    ) -> tuple[ProviderSystem, Received]:
        deadline = time.monotonic() + timeout
        while True:
            for provider, received in self.orders(referral_id):
                if received.envelope.type == event_type:
                    return provider, received
            if time.monotonic() > deadline:
                seen = [r.envelope.type for _, r in self.orders(referral_id)]
                raise TimeoutError(f"{referral_id}: no {event_type} within {timeout}s; saw {seen}")
            await asyncio.sleep(0.2)


@dataclass
class Journey:
    """One referral driven by the load, and what it should end with."""

    referral_id: str
    kind: str  # "walk_in" or "booked"
    report_id: str = ""
    slot_id: str | None = None
    provider: str = ""
    finished: bool = False
    error: str | None = None


@dataclass
class Load:
    """The people and systems of the run, with calls that survive restarts."""

    system: System
    http: httpx.AsyncClient
    feed: OrderFeed
    calls: Calls = field(default_factory=Calls)
    journeys: list[Journey] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.retrying = Retrying(self.calls)
        self.practice = Practice(self.http, self.system.urls, "A81001")
        self.clinician = VettingClinician(self.http, self.system.urls)
        self.clerk = BookingClerk(self.http, self.system.urls)

    # ------------------------------------------------------------------ the clock

    def at_least(self, moment: datetime) -> datetime:
        """Move the shared clock on to `moment`, never back (other journeys share it)."""
        if moment > self.system.now():
            self.system.set_time(moment)
        return self.system.now()

    # ------------------------------------------------------------------ journeys

    async def run(self, journey: Journey, examination_code: str) -> Journey:
        """Drive a journey to the end; a failure is kept on the journey."""
        kind = journey.kind
        key = f"fault-{uuid.uuid4().hex}"
        details = {
            "nhs_number": synthetic_nhs_number(),
            "referrer_id": REFERRER,
            "examination_code": examination_code,
            "clinical_question": "Persistent symptoms for six weeks, please assess",
            "priority": "routine",
        }
        self.journeys.append(journey)
        try:
            created: Json = await self.retrying(
                lambda: self.practice.submit(details, idempotency_key=key), "submit"
            )
            journey.referral_id = created["referral_id"]
            if kind == "walk_in":
                provider, site = await self._walk_in(journey)
            else:
                provider, site = await self._vetted_and_booked(journey)
            journey.provider = provider.ods
            await self._examined(journey, provider, site)
            await self._reported_and_acknowledged(journey, provider)
            journey.finished = True
        except Exception as error:  # kept for the figures: a journey that did not end is lost
            journey.error = f"{type(error).__name__}: {error}"
        return journey

    async def _walk_in(self, journey: Journey) -> tuple[ProviderSystem, str]:
        provider, order = await self.feed.wait_for(journey.referral_id, WALK_IN)
        assert isinstance(order.event, ProviderWalkInAuthorised)
        return provider, order.event.site_id

    async def _vetted_and_booked(self, journey: Journey) -> tuple[ProviderSystem, str]:
        rid = journey.referral_id

        async def waiting() -> Json | None:
            item: Json = await self.clinician.item(rid)
            return item if item["state"] == "waiting" else None

        await self.retrying.until(waiting, f"{rid} on the vetting worklist")
        try:
            await self.retrying(
                lambda: self.clinician.api.call(
                    "POST",
                    f"/worklist/{rid}/accept",
                    json={"protocol": "Abdomen and pelvis, routine views"},
                    idempotency_key=f"accept-{rid}",
                ),
                "accept",
            )
        except ApiError as error:
            # Decided already: the first answer of a retry whose response was lost.
            if error.status != 409 or '"accepted"' not in error.body:
                raise
        booking = await self._book(rid)
        journey.slot_id = booking["appointment"]["slot_id"]
        provider, order = await self.feed.wait_for(rid, ORDER_BOOKED)
        assert isinstance(order.event, ProviderOrderBooked)
        return provider, order.event.appointment.site_id

    async def _book(self, rid: str) -> Json:
        """Choose the first offer; if someone took it, or time moved past it, take another."""

        async def current() -> Json | None:
            booking: Json = await self.clerk.booking(rid)
            return booking if booking["state"] in {"offered", "booked"} else None

        deadline = time.monotonic() + 150
        attempt = 0
        while True:
            booking = await self.retrying.until(current, f"{rid} offered")
            if booking["state"] == "booked":
                return booking
            candidates = [offer["slot_id"] for offer in booking["offers"]]
            if attempt:
                free = await self.retrying(
                    lambda: self.clerk.api.call("GET", f"/bookings/{rid}/availability"),
                    "availability",
                )
                candidates = [slot["slot_id"] for slot in free]
            attempt += 1
            for slot_id in candidates[:3]:
                try:
                    return await self._choose(rid, slot_id)
                except ApiError as error:
                    if error.status not in {409, 422}:
                        raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{rid}: no slot could be booked")

    async def _choose(self, rid: str, slot_id: str) -> Json:
        async def choose() -> Json:
            result: Json = await self.clerk.api.call(
                "POST",
                f"/bookings/{rid}/choose",
                json={"slot_id": slot_id, "chosen_by": "patient"},
                idempotency_key=f"choose-{rid}-{slot_id}",
            )
            return result

        booking = await self.retrying(choose, "choose")
        if booking["state"] != "booked":
            raise ApiError("POST", "choose", 409, f"state {booking['state']}")
        return booking

    async def _send(self, provider: ProviderSystem, event: ReferralEvent, step: str) -> None:
        # A fixed id per step: were the RIS to send it twice, it is one event.
        await provider.send(event, event_id=str(uuid.uuid5(_IDS, f"{event.referral_id}/{step}")))

    async def _examined(self, journey: Journey, provider: ProviderSystem, site: str) -> None:
        rid = journey.referral_id
        if journey.kind == "booked":
            booking: Json = await self.retrying(lambda: self.clerk.booking(rid), "booking")
            self.at_least(datetime.fromisoformat(booking["appointment"]["start"]))
        else:
            self.at_least(self.system.now() + timedelta(minutes=5))
        now = self.system.now()
        await self._send(
            provider,
            ProviderPatientArrived(referral_id=rid, occurred_at=now, site_id=site),
            "arrived",
        )
        study = StudyReference(
            study_instance_uid=f"1.2.826.0.1.3680043.{uuid.uuid4().int % 10**12}",
            accession_number=f"{provider.ods}{uuid.uuid4().int % 10**6:06d}",
        )
        completed = self.at_least(now + timedelta(minutes=10))
        await self._send(
            provider,
            ProviderExaminationCompleted(
                referral_id=rid, occurred_at=completed, site_id=site, study=study
            ),
            "completed",
        )
        await self._state(rid, {"examined"}, "examined")

    async def _reported_and_acknowledged(self, journey: Journey, provider: ProviderSystem) -> None:
        rid = journey.referral_id
        await self._send(
            provider,
            ProviderReportIssued(
                referral_id=rid,
                occurred_at=self.system.now(),
                report_id=f"RPT-{uuid.uuid5(_IDS, rid).hex[:12]}",
                status="final",
                text="No abnormality is seen.",
                conclusion="Normal examination.",
                finding_flag="routine",
                reported_by="GMC-7654321",
            ),
            "reported",
        )
        # Families travel on their own topics: the delivery may reach the timeline before
        # the report it delivers, so wait for both. Reporting names the report.
        delivered = await self._state(
            rid, {"delivered", "acknowledged"}, "delivered", having="report.issued.v1"
        )
        journey.report_id = next(
            entry["detail"]["report_id"]
            for entry in delivered["timeline"]
            if entry["event_type"].endswith("report.issued.v1")
        )
        await self.retrying(
            lambda: self.practice.acknowledge(journey.report_id, by=REFERRER), "acknowledge"
        )
        await self._state(rid, {"acknowledged"}, "acknowledged")

    async def _state(
        self, rid: str, states: set[str], what: str, having: str | None = None
    ) -> Json:
        async def probe() -> Json | None:
            referral: Json = await self.practice.referral(rid)
            if referral["state"] not in states:
                return None
            if having and not any(e["event_type"].endswith(having) for e in referral["timeline"]):
                return None
            return referral

        return await self.retrying.until(probe, f"{rid} {what}", timeout=180)

    # ------------------------------------------------------------------ reading back

    async def referral(self, rid: str) -> Json:
        result: Json = await self.retrying(lambda: self.practice.referral(rid), "referral")
        return result

    async def booking(self, rid: str) -> Json:
        result: Json = await self.retrying(lambda: self.clerk.booking(rid), "booking")
        return result


async def steady_load(
    load: Load,
    plan: list[tuple[str, str]],
    *,
    spacing: float,
    started: asyncio.Event | None = None,
    deadline: float = 240.0,
) -> list[Journey]:
    """Start one journey every `spacing` seconds (the load stays steady), and await them all.

    A journey still going `deadline` seconds after the first began is stopped and counted
    as not finished, so that a stuck run still reports its figures.
    """
    ends = time.monotonic() + deadline
    journeys = [Journey("", kind) for kind, _ in plan]
    tasks: list[asyncio.Task[Journey]] = []
    for index, (journey, (_, code)) in enumerate(zip(journeys, plan, strict=True)):
        tasks.append(asyncio.create_task(load.run(journey, code)))
        if index == 0 and started is not None:
            started.set()
        # Pacing the load, not waiting for anything: the journeys overlap.
        await asyncio.sleep(spacing)
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, ends - time.monotonic()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for journey in journeys:
        if not journey.finished and journey.error is None:
            journey.error = f"not finished within {deadline:.0f}s"
    return journeys


def mixed_plan(count: int, booked_every: int = 5) -> list[tuple[str, str]]:
    """Mostly open-access plain X-ray walk-ins, every `booked_every`-th vetted and booked."""
    walk_in_codes = ("XCHES", "XKNEL", "XKNER", "XHANL", "XFOOR", "XSHOL")
    plan: list[tuple[str, str]] = []
    for index in range(count):
        if index % booked_every == booked_every - 1:
            plan.append(("booked", "UABDO"))
        else:
            plan.append(("walk_in", walk_in_codes[index % len(walk_in_codes)]))
    return plan
