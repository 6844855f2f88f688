"""The scheduling service on the real embedded broker and store: from VettingAccepted to
offers, choice, the automatic default, walk-in, provider orders on their own topics, provider
events (did-not-attend), cancellation, deferral, and the HTTP API's roles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pathway_schemas import topics
from pathway_schemas.base import ReferralEvent
from pathway_schemas.envelope import from_record
from pathway_schemas.events import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentMissed,
    AppointmentRebooked,
    AppointmentsOffered,
    ProviderOrderBooked,
    ProviderOrderCancelled,
    ProviderPatientDidNotAttend,
    ProviderWalkInAuthorised,
    ReferralCancelled,
    ReferralReturnedAfterDna,
    WalkInAuthorised,
)
from services.common.clock import FixedClock, london_date
from services.scheduling.main import create_app
from services.scheduling.settings import Settings
from tests.harness import TopicReader, publish, running_service
from tests.helpers import wait_until
from tests.unit.scheduling.builders import T0, accepted

CLERK = {"X-API-Key": "dev-booking-clerk"}
OPERATOR = {"X-API-Key": "dev-operator"}
PRACTICE = {"X-API-Key": "dev-practice-a81001"}
PROVIDERS = ("RXA01", "NWX02")
OUTBOUND = {topics.provider_outbound(ods): ods for ods in PROVIDERS}


def fast(service_settings: Any, **overrides: Any) -> Settings:
    settings: Settings = service_settings(
        Settings, "scheduling", deadline_check_interval_s=0.1, at_risk_refresh_s=0.1, **overrides
    )
    return settings


class Timeline:
    """What the service published, decoded, with the topic each event went to."""

    def __init__(self, reader: TopicReader) -> None:
        self.reader = reader

    def all(self) -> list[tuple[str, ReferralEvent]]:
        decoded = []
        seen: set[str] = set()
        for record in self.reader.records:
            if record.topic == topics.dead_letter("scheduling"):
                continue
            received = from_record(record.headers, record.value, topic=record.topic)
            # Publication is at-least-once (the outbox relay may repeat an event under load);
            # consumers drop repeats by event id, and so does this reader.
            if received.envelope.id in seen:
                continue
            seen.add(received.envelope.id)
            assert isinstance(received.event, ReferralEvent)
            decoded.append((record.topic, received.event))
        return decoded

    def of(self, kind: type[Any], referral_id: str) -> list[Any]:
        return [e for _, e in self.all() if isinstance(e, kind) and e.referral_id == referral_id]

    def traces(self, kind: type[Any], referral_id: str) -> list[str | None]:
        """The trace id (W3C `traceparent`) of each event of a type for a referral."""
        found = []
        for record in self.reader.records:
            if record.topic == topics.dead_letter("scheduling"):
                continue
            received = from_record(record.headers, record.value, topic=record.topic)
            event = received.event
            if isinstance(event, kind) and getattr(event, "referral_id", None) == referral_id:
                parts = received.envelope.trace.get("traceparent", "").split("-")
                found.append(parts[1] if len(parts) == 4 else None)
        return found

    async def wait(self, kind: type[Any], referral_id: str, count: int = 1) -> list[Any]:
        await self.reader.wait_for(
            lambda _: len(self.of(kind, referral_id)) >= count, what=f"{count} {kind.__name__}"
        )
        return self.of(kind, referral_id)


async def test_offers_choice_default_and_walk_in_reach_only_the_assigned_providers_topic(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0 + timedelta(hours=1))
    chooses, waits, walks = (
        accepted("XCHES"),
        accepted("UABDO"),
        accepted("XKNEL", walk_in_allowed=True),
    )
    app = create_app(fast(service_settings), clock=clock)
    async with (
        running_service(app) as svc,
        TopicReader(kafka, topics.BOOKING, *OUTBOUND) as reader,
    ):
        timeline = Timeline(reader)
        await publish(kafka, [(e, topics.VETTING) for e in (chooses, waits, walks)])
        [offered] = await timeline.wait(AppointmentsOffered, chooses.referral_id)
        await timeline.wait(AppointmentsOffered, waits.referral_id)
        [walk_in] = await timeline.wait(WalkInAuthorised, walks.referral_id)

        url = f"/bookings/{chooses.referral_id}"
        assert (await svc.client.get(url)).status_code == 401
        assert (await svc.client.get(url, headers=PRACTICE)).status_code == 403
        assert (await svc.client.get("/bookings/ref_nope", headers=CLERK)).status_code == 422
        view = (await svc.client.get(url, headers=CLERK)).json()
        assert view["state"] == "offered"
        assert [o["slot_id"] for o in view["offers"]] == [o.slot_id for o in offered.offers]
        assert "nhs_number" not in view

        chosen = next(o for o in offered.offers if o.provider_ods == "NWX02")
        response = await svc.client.post(
            f"{url}/choose", json={"slot_id": chosen.slot_id, "chosen_by": "patient"}, headers=CLERK
        )
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "booked"
        assert response.json()["booked_by"] == "patient"
        assert response.json()["within_target"] is True
        assert response.json()["within_desirable"] is True  # two days after receipt

        # No choice by the deadline: the background job books the earliest offer for them.
        clock.advance(timedelta(hours=48))
        [default] = await timeline.wait(AppointmentBooked, waits.referral_id)
        assert default.booked_by.value == "automatic"
        assert (
            default.appointment == timeline.of(AppointmentsOffered, waits.referral_id)[0].offers[0]
        )
        await reader.wait_for(
            lambda _: len(timeline.of(ProviderOrderBooked, waits.referral_id)) == 1,
            what="the default's order",
        )
        # The deadline job booked in the trace of the acceptance that made the offers.
        [offers_trace] = set(timeline.traces(AppointmentsOffered, waits.referral_id))
        assert offers_trace is not None
        assert offers_trace not in timeline.traces(AppointmentsOffered, chooses.referral_id)
        assert set(timeline.traces(AppointmentBooked, waits.referral_id)) == {offers_trace}
        assert set(timeline.traces(ProviderOrderBooked, waits.referral_id)) == {offers_trace}

        orders = [(t, e) for t, e in timeline.all() if t in OUTBOUND]
        assigned = {
            chooses.referral_id: "NWX02",
            waits.referral_id: default.appointment.provider_ods,
            walks.referral_id: walk_in.provider_ods,
        }
        assert {(type(e), e.referral_id) for _, e in orders} == {
            (ProviderOrderBooked, chooses.referral_id),
            (ProviderOrderBooked, waits.referral_id),
            (ProviderWalkInAuthorised, walks.referral_id),
        }
        for topic, event in orders:
            assert OUTBOUND[topic] == assigned[event.referral_id], (
                "an order reached another provider"
            )
        assert all(
            t == topics.BOOKING
            for t, e in timeline.all()
            if not isinstance(e, (ProviderOrderBooked, ProviderWalkInAuthorised))
        )

        async def at_risk_recounted() -> bool:
            text = (await svc.client.get("/metrics")).text
            return 'pathway_referrals_at_risk{priority="routine"} 0.0' in text

        recounted: Callable[[], bool | Awaitable[bool]] = at_risk_recounted
        await wait_until(recounted, message="the at-risk gauge recounted")
        metrics = (await svc.client.get("/metrics")).text
        assert 'pathway_bookings_total{priority="routine",within_target="true"} 2.0' in metrics
        assert 'pathway_slots_booked_total{modality="XR",provider="NWX02"} 1.0' in metrics


async def test_provider_events_are_checked_against_the_assignment_and_the_api_moves_and_frees_slots(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0 + timedelta(hours=1))
    misses, cancelled, defers, urgent = (
        accepted("XCHES"),
        accepted("XCHES"),
        accepted("XCHES"),
        accepted("XCHES", priority="urgent"),
    )
    app = create_app(fast(service_settings), clock=clock)
    async with (
        running_service(app) as svc,
        TopicReader(kafka, topics.BOOKING, *OUTBOUND, topics.dead_letter("scheduling")) as reader,
    ):
        timeline = Timeline(reader)
        await publish(kafka, [(e, topics.VETTING) for e in (misses, cancelled, defers, urgent)])
        for event in (misses, cancelled, defers, urgent):
            await timeline.wait(AppointmentsOffered, event.referral_id)

        async def book(referral_id: str, provider: str, nth: int = 0) -> Any:
            offers = timeline.of(AppointmentsOffered, referral_id)[0].offers
            slot = [o for o in offers if o.provider_ods == provider][nth]
            response = await svc.client.post(
                f"/bookings/{referral_id}/choose", json={"slot_id": slot.slot_id}, headers=CLERK
            )
            assert response.status_code == 200, response.text
            return slot

        missed_slot = await book(misses.referral_id, "RXA01")
        cancelled_slot = await book(cancelled.referral_id, "NWX02")
        await book(defers.referral_id, "RXA01", nth=1)  # the first is taken by now

        # A provider reporting on a referral booked elsewhere is denied and dead-lettered.
        dna = ProviderPatientDidNotAttend(
            referral_id=misses.referral_id, occurred_at=clock.now(), slot_id=missed_slot.slot_id
        )
        await publish(kafka, [(dna, topics.provider_inbound("NWX02"))], source="/providers/NWX02")
        await reader.wait_for(
            lambda records: any(r.topic == topics.dead_letter("scheduling") for r in records),
            what="a dead letter",
        )
        [letter] = [r for r in reader.records if r.topic == topics.dead_letter("scheduling")]
        assert dict(letter.headers)["dlq_reason"] == b"denied"

        clock.set(missed_slot.start + timedelta(minutes=20))
        await publish(kafka, [(dna, topics.provider_inbound("RXA01"))], source="/providers/RXA01")
        [rebooked] = await timeline.wait(AppointmentRebooked, misses.referral_id)
        assert timeline.of(AppointmentMissed, misses.referral_id)[0].next_step == "rebook"
        clock.set(rebooked.appointment.start + timedelta(minutes=20))
        second = ProviderPatientDidNotAttend(
            referral_id=misses.referral_id,
            occurred_at=clock.now(),
            slot_id=rebooked.appointment.slot_id,
        )
        await publish(
            kafka, [(second, topics.provider_inbound("RXA01"))], source="/providers/RXA01"
        )
        await timeline.wait(ReferralReturnedAfterDna, misses.referral_id)
        assert (await svc.client.get(f"/bookings/{misses.referral_id}", headers=CLERK)).json()[
            "state"
        ] == "returned"

        # The referrer cancels: the slot is freed and only its provider is told.
        cancel = ReferralCancelled(
            referral_id=cancelled.referral_id,
            occurred_at=clock.now(),
            reason="no_longer_needed",
            cancelled_by="G1234567",
        )
        await publish(kafka, [(cancel, topics.REFERRAL)])
        [freed] = await timeline.wait(AppointmentCancelled, cancelled.referral_id)
        assert freed.appointment == cancelled_slot
        await timeline.wait(ProviderOrderCancelled, cancelled.referral_id)
        assert [
            t
            for t, e in timeline.all()
            if isinstance(e, ProviderOrderCancelled) and e.referral_id == cancelled.referral_id
        ] == [topics.provider_outbound("NWX02")]
        assert (
            await svc.runtime.store.db["bookings"].find_one({"_id": cancelled_slot.slot_id}) is None
        )

        # The patient elects to delay (routine only), then rebooks and cancels through the API.
        available = (london_date(clock.now()) + timedelta(days=10)).isoformat()
        refused = await svc.client.post(
            f"/bookings/{urgent.referral_id}/defer",
            json={"reason": "holiday", "available_from": available},
            headers=CLERK,
        )
        assert refused.status_code == 409
        assert "urgent" in refused.json()["detail"]
        deferred = await svc.client.post(
            f"/bookings/{defers.referral_id}/defer",
            json={"reason": "holiday", "available_from": available},
            headers={**CLERK, "Idempotency-Key": "defer-1"},
        )
        assert deferred.status_code == 200, deferred.text
        body = deferred.json()
        assert body["state"] == "offered"
        assert body["available_from"] == available
        assert body["excluded_delay_seconds"] > 0
        assert all(o["start"] >= available for o in body["offers"])
        chosen = await svc.client.post(
            f"/bookings/{defers.referral_id}/choose",
            json={"slot_id": body["offers"][0]["slot_id"]},
            headers=CLERK,
        )
        assert chosen.status_code == 200
        assert chosen.json()["wait_seconds"] < (
            timedelta(days=10).total_seconds()
            + (clock.now() - defers.referral_received_at).total_seconds()
        )
        moved = await svc.client.post(
            f"/bookings/{defers.referral_id}/rebook", json={}, headers=CLERK
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["appointment"]["slot_id"] != chosen.json()["appointment"]["slot_id"]
        off = await svc.client.post(
            f"/bookings/{defers.referral_id}/cancel",
            json={"reason": "patient_request"},
            headers=CLERK,
        )
        assert off.status_code == 200
        assert off.json()["state"] == "unbooked"
        again = await svc.client.post(
            f"/bookings/{defers.referral_id}/cancel",
            json={"reason": "patient_request"},
            headers=CLERK,
        )
        assert again.status_code == 409
        assert (
            await svc.client.post(
                f"/bookings/{defers.referral_id}/cancel", json={"reason": "bored"}, headers=CLERK
            )
        ).status_code == 422
