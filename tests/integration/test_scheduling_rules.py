"""The scheduling rules on the real embedded store: offers, choice, the default, deferral,
did-not-attend, cancellation, walk-in, breaches, and two instances booking at once.

These drive the service layer directly (no broker): each unit of work commits to MongoDB
with its outbox, and the test reads the events it committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pathway_schemas import topics
from pathway_schemas.base import ReferralEvent
from pathway_schemas.envelope import from_record
from pathway_schemas.events import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentDeferred,
    AppointmentMissed,
    AppointmentRebooked,
    AppointmentsOffered,
    BookedBy,
    ProviderOrderBooked,
    ProviderOrderCancelled,
    ProviderOrderRebooked,
    ProviderPatientArrived,
    ProviderPatientDidNotAttend,
    ProviderWalkInAuthorised,
    ReferralReturnedAfterDna,
    WaitTargetBreached,
    WalkInAuthorised,
)
from pathway_schemas.values import Modality
from services.common.clock import LONDON, FixedClock, WorkingCalendar, london_date
from services.common.errors import Denied, Invalid, Rejected
from services.common.settings import MongoSettings
from services.common.store import Outcome, Store, Tx, make_client
from services.scheduling.metrics import Effects, SchedulingMetrics
from services.scheduling.model import State
from services.scheduling.registry import Provider
from services.scheduling.repository import BookingRepository
from services.scheduling.service import BookingContention, Scheduler
from services.scheduling.settings import DEFAULT_SLOT_MINUTES, SchedulingPolicy
from services.scheduling.slots import Slot, parse_slot_id, templates
from services.scheduling.waits import start_of_day, target_deadline
from tests.unit.scheduling.builders import T0, accepted, hours, provider, site

E = TypeVar("E", bound=ReferralEvent)
DAY = 86_400.0


@dataclass
class Rig:
    scheduler: Scheduler
    repository: BookingRepository
    store: Store
    clock: FixedClock
    registry: CollectorRegistry
    emitted: list[tuple[str, ReferralEvent]] = field(default_factory=list)

    def events(self, kind: type[E], referral_id: str | None = None) -> list[E]:
        return [
            e
            for _, e in self.emitted
            if isinstance(e, kind) and (referral_id is None or e.referral_id == referral_id)
        ]

    def topics_of(self, kind: type[ReferralEvent], referral_id: str) -> list[str]:
        return [t for t, e in self.emitted if isinstance(e, kind) and e.referral_id == referral_id]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def state(self, referral_id: str) -> Any:
        record = await self.repository.get(referral_id)
        assert record is not None
        return record


@contextlib.asynccontextmanager
async def rig(
    mongo_url: str,
    providers: Iterable[Provider],
    *,
    clock: FixedClock | None = None,
    policy: SchedulingPolicy | None = None,
    database: str | None = None,
) -> AsyncIterator[Rig]:
    """A scheduler on its own client (one per service instance) over a fresh or shared database."""
    clock = clock or FixedClock(T0 + timedelta(hours=1))
    client = make_client(MongoSettings(url=mongo_url))
    name = database or f"imaging_scheduling_{uuid.uuid4().hex[:10]}"
    store = Store(client, name, "scheduling")
    repository = BookingRepository(store.db)
    await store.ensure_kit_indexes()
    await repository.ensure_indexes()
    await repository.seed(providers, clock.now())
    registry = CollectorRegistry()
    emitted: list[tuple[str, ReferralEvent]] = []

    async def commit(work: Any, *, cause_id: str | None = None) -> Outcome[Effects]:
        outcome: Outcome[Effects] = await store.transact(work, cause_id=cause_id, now=clock.now())
        for record in outcome.records:
            event = from_record(record.headers, record.value, topic=record.topic).event
            assert isinstance(event, ReferralEvent)
            emitted.append((record.topic, event))
        return outcome

    scheduler = Scheduler(
        commit=commit,
        clock=clock,
        policy=policy or SchedulingPolicy(),
        repository=repository,
        metrics=SchedulingMetrics(registry),
    )
    try:
        yield Rig(
            scheduler=scheduler,
            repository=repository,
            store=store,
            clock=clock,
            registry=registry,
            emitted=emitted,
        )
    finally:
        if database is None:
            await client.drop_database(name)
        await client.close()


def two_xr_providers(**extra: Any) -> list[Provider]:
    return [
        provider("RXA01", site("A1", {"XR": {"rooms": 1}}, **extra)),
        provider("NWX02", site("B1", {"XR": {"rooms": 1}}, **extra)),
    ]


def local(moment: datetime) -> datetime:
    return moment.astimezone(LONDON)


# ---------------------------------------------------------------------------- choice and default


async def test_patient_choice_books_the_chosen_offer_and_only_that_provider_gets_the_order(
    mongo_url: str,
) -> None:
    async with rig(mongo_url, two_xr_providers()) as r:
        event = accepted("XCHES")
        await r.scheduler.accept(event, cause_id="e1")

        [offered] = r.events(AppointmentsOffered)
        assert {o.provider_ods for o in offered.offers} == {"RXA01", "NWX02"}
        assert offered.offers == tuple(sorted(offered.offers, key=lambda o: o.start))
        assert offered.choose_by == r.clock.now() + timedelta(hours=48)
        assert offered.target_days == 14
        # Offers start after the deadline, so the default can still book the first of them.
        assert all(o.start >= offered.choose_by for o in offered.offers)
        assert (await r.state(event.referral_id)).state is State.OFFERED
        assert r.events(WaitTargetBreached) == []
        await r.scheduler.refresh_at_risk()
        # Offered with an offer meeting the target: on course, not at risk.
        assert r.metric("pathway_referrals_at_risk", priority="routine") == 0

        chosen = next(o for o in offered.offers if o.provider_ods == "NWX02")
        first = await r.scheduler.choose(
            event.referral_id, chosen.slot_id, booked_by=BookedBy.PATIENT, idempotency_key="k1"
        )
        again = await r.scheduler.choose(
            event.referral_id, chosen.slot_id, booked_by=BookedBy.PATIENT, idempotency_key="k1"
        )
        assert not first.duplicate
        assert again.duplicate

        [booked] = r.events(AppointmentBooked)
        assert booked.appointment == chosen
        assert booked.booked_by is BookedBy.PATIENT
        assert booked.wait_seconds == (chosen.start - event.referral_received_at).total_seconds()
        assert booked.within_target is True
        assert r.topics_of(ProviderOrderBooked, event.referral_id) == [
            topics.provider_outbound("NWX02")
        ]
        [order] = r.events(ProviderOrderBooked)
        assert (order.nhs_number, order.protocol, order.appointment) == (
            event.nhs_number,
            event.protocol,
            chosen,
        )
        assert await r.repository.holder(chosen.slot_id) == event.referral_id

        with pytest.raises(Rejected, match="use rebook"):
            await r.scheduler.choose(
                event.referral_id,
                offered.offers[0].slot_id,
                booked_by=BookedBy.CLERK,
                idempotency_key="k2",
            )
        assert r.metric("pathway_bookings_total", priority="routine", within_target="true") == 1
        assert r.metric("pathway_slots_booked_total", provider="NWX02", modality="XR") == 1
        assert r.metric("pathway_wait_to_appointment_seconds_count", priority="routine") == 1


async def test_a_chosen_slot_must_be_a_real_free_future_slot_of_the_referrals_modality(
    mongo_url: str,
) -> None:
    async with rig(mongo_url, two_xr_providers()) as r:
        event = accepted("XCHES")
        await r.scheduler.accept(event, cause_id="e1")
        [offered] = r.events(AppointmentsOffered)
        slot = parse_slot_id(offered.offers[0].slot_id)

        def another(**change: Any) -> str:
            fields = {
                "ods": slot.provider_ods,
                "site": slot.site_id,
                "mod": "XR",
                "room": 1,
                "start": slot.start,
            }
            fields.update(change)
            return f"{fields['ods']}.{fields['site']}.{fields['mod']}.{fields['room']}.{fields['start']:%Y%m%dT%H%MZ}"

        cases = {
            "not-a-slot": (Invalid, "slot id looks like"),
            another(mod="US"): (Invalid, "the referral needs XR"),
            another(room=2): (Invalid, "not bookable"),
            another(start=slot.start + timedelta(minutes=3)): (Invalid, "not bookable"),
            another(ods="ZZZ99"): (Invalid, "not bookable"),
            another(start=T0.astimezone(UTC)): (Rejected, "too soon"),
            another(start=slot.start + timedelta(days=60)): (Rejected, "horizon"),
        }
        for slot_id, (error, message) in cases.items():
            with pytest.raises(error, match=message):
                await r.scheduler.choose(
                    event.referral_id, slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
                )
        assert r.events(AppointmentBooked) == []


async def test_without_a_choice_the_deadline_books_the_earliest_offer_and_re_searches_when_offers_were_taken(
    mongo_url: str,
) -> None:
    policy = SchedulingPolicy(offer_count=2, offers_per_site=1)
    async with rig(mongo_url, two_xr_providers(), policy=policy) as r:
        waiting, chooser_a, chooser_b, patient = (accepted("XCHES") for _ in range(4))
        for index, event in enumerate((waiting, chooser_a, chooser_b, patient)):
            await r.scheduler.accept(event, cause_id=f"e{index}")
        offers = r.events(AppointmentsOffered, waiting.referral_id)[0].offers
        # Others take both of the waiting referral's offers.
        await r.scheduler.choose(
            chooser_a.referral_id, offers[0].slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
        )
        await r.scheduler.choose(
            chooser_b.referral_id, offers[1].slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
        )

        r.clock.advance(timedelta(hours=47))
        assert await r.scheduler.run_due() == 0  # before the deadline nothing is booked for them
        r.clock.advance(timedelta(hours=2))
        assert await r.scheduler.run_due() == 2

        [booked] = r.events(AppointmentBooked, waiting.referral_id)
        assert booked.booked_by is BookedBy.AUTOMATIC
        assert booked.within_target
        assert booked.appointment.slot_id not in {o.slot_id for o in offers}
        assert booked.appointment.start >= r.clock.now() + timedelta(
            minutes=policy.min_notice_minutes
        )
        [default] = r.events(AppointmentBooked, patient.referral_id)
        earliest_offer = r.events(AppointmentsOffered, patient.referral_id)[0].offers[0]
        assert default.booked_by is BookedBy.AUTOMATIC
        assert default.appointment.start >= earliest_offer.start
        assert len({e.appointment.slot_id for e in r.events(AppointmentBooked)}) == 4
        assert await r.scheduler.run_due() == 0


async def test_an_urgent_referral_without_capacity_in_7_days_records_a_breach_and_counts_at_risk(
    mongo_url: str,
) -> None:
    # Closed for the next ten days: the earliest slot is beyond the urgent target.
    closed = {
        "closures": [
            {"from": T0.date().isoformat(), "to": (T0.date() + timedelta(days=9)).isoformat()}
        ]
    }
    async with rig(mongo_url, two_xr_providers(**closed)) as r:
        event = accepted("XCHES", priority="urgent")
        await r.scheduler.accept(event, cause_id="e1")

        [offered] = r.events(AppointmentsOffered)
        assert offered.choose_by == r.clock.now() + timedelta(hours=12)
        assert offered.target_days == 7
        [breach] = r.events(WaitTargetBreached)
        assert breach.earliest_available == offered.offers[0].start
        assert london_date(offered.offers[0].start) == T0.date() + timedelta(days=10)
        await r.scheduler.refresh_at_risk()
        assert r.metric("pathway_referrals_at_risk", priority="urgent") == 1

        r.clock.advance(timedelta(hours=13))
        await r.scheduler.run_due()
        [booked] = r.events(AppointmentBooked)
        assert booked.within_target is False
        assert booked.booked_by is BookedBy.AUTOMATIC
        assert len(r.events(WaitTargetBreached)) == 1  # recorded once per referral
        await r.scheduler.refresh_at_risk()
        assert r.metric("pathway_referrals_at_risk", priority="urgent") == 1  # booked beyond target
        assert r.metric("pathway_bookings_total", priority="urgent", within_target="false") == 1


async def test_with_no_capacity_at_all_the_breach_has_no_date_and_booking_is_retried_later(
    mongo_url: str,
) -> None:
    async with rig(mongo_url, [provider("RXA01", site("A1", {"US": {"rooms": 1}}))]) as r:
        event = accepted("XCHES", priority="urgent")
        await r.scheduler.accept(event, cause_id="e1")
        assert r.events(AppointmentsOffered) == []
        [breach] = r.events(WaitTargetBreached)
        assert breach.earliest_available is None
        record = await r.state(event.referral_id)
        assert record.state is State.OFFERED
        assert record.choose_by == r.clock.now() + timedelta(minutes=60)

        r.clock.advance(timedelta(minutes=61))
        await r.scheduler.run_due()
        assert r.events(AppointmentBooked) == []
        assert (await r.state(event.referral_id)).choose_by == r.clock.now() + timedelta(minutes=60)


# ---------------------------------------------------------------------------- urgent property

SMALL_SITE = [
    provider(
        "RXA01",
        site(
            "A1",
            {"XR": {"rooms": 1}},
            opening_hours=hours("09:00", "10:00", weekend=("10:00", "10:30")),
        ),
    )
]
CALENDAR = WorkingCalendar("ENG")
XR_TEMPLATE = templates(SMALL_SITE, Modality.XR, DEFAULT_SLOT_MINUTES, CALENDAR)[0]
PROPERTY_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(
    received_minute=st.integers(min_value=0, max_value=60 * 24 * 9),
    start=st.sampled_from(
        [
            datetime(2026, 3, 24, tzinfo=UTC),
            datetime(2026, 10, 20, tzinfo=UTC),
            datetime(2026, 6, 1, tzinfo=UTC),
        ]
    ),
    booked_share=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    seed=st.randoms(use_true_random=False),
)
async def test_an_urgent_referral_is_booked_within_7_days_whenever_capacity_exists_else_a_breach_is_recorded(
    mongo_url: str, received_minute: int, start: datetime, booked_share: float, seed: Any
) -> None:
    received = start + timedelta(minutes=received_minute)
    clock = FixedClock(received + timedelta(minutes=30))
    async with rig(mongo_url, SMALL_SITE, clock=clock) as r:
        # Other patients already hold some of the slots of the next weeks.
        window = list(XR_TEMPLATE.slots(received, received + timedelta(days=20)))
        taken = [s for s in window if seed.random() < booked_share]
        for index, slot in enumerate(taken):
            await hold(r, slot, f"other-{index}")
        event = accepted("XCHES", priority="urgent", received_at=received, occurred_at=clock.now())
        await r.scheduler.accept(event, cause_id="e1")
        clock.advance(timedelta(hours=12, minutes=1))
        await r.scheduler.run_due()

        deadline = target_deadline(received, 7)
        soonest = clock.now() + timedelta(minutes=120)
        taken_ids = {s.id for s in taken}
        capacity = [s for s in window if s.id not in taken_ids and soonest <= s.start <= deadline]
        booked = r.events(AppointmentBooked)
        if capacity:
            assert booked
            assert booked[0].appointment.start <= deadline
            assert booked[0].within_target
            assert booked[0].appointment.start == capacity[0].start  # the earliest
        else:
            assert r.events(WaitTargetBreached), "no capacity within 7 days, and no breach recorded"
            assert all(not b.within_target for b in booked)


async def hold(r: Rig, slot: Slot, referral_id: str) -> None:
    async def work(tx: Tx) -> None:
        await r.repository.hold(tx, slot, referral_id)

    await r.store.transact(work)


# ---------------------------------------------------------------------------- deferral


async def test_a_patients_deferral_frees_the_slot_pauses_the_wait_and_new_offers_start_when_they_are_available(
    mongo_url: str,
) -> None:
    async with rig(mongo_url, two_xr_providers()) as r:
        event = accepted("XCHES")
        await r.scheduler.accept(event, cause_id="e1")
        first = r.events(AppointmentsOffered)[0].offers[0]
        await r.scheduler.choose(
            event.referral_id, first.slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
        )

        r.clock.advance(timedelta(hours=3))
        deferred_at = r.clock.now()
        available = london_date(deferred_at) + timedelta(days=20)
        await r.scheduler.defer(
            event.referral_id, "caring for a relative", available, idempotency_key="d1"
        )

        [deferred] = r.events(AppointmentDeferred)
        assert (deferred.reason, deferred.available_from, deferred.previous) == (
            "caring for a relative",
            available,
            first,
        )
        assert r.topics_of(ProviderOrderCancelled, event.referral_id) == [
            topics.provider_outbound(first.provider_ods)
        ]
        assert await r.repository.holder(first.slot_id) is None  # the slot is free again
        reoffered = r.events(AppointmentsOffered)[1]
        assert all(o.start >= start_of_day(available) for o in reoffered.offers)

        excluded = (start_of_day(available) - deferred_at).total_seconds()
        record = await r.state(event.referral_id)
        assert record.paused_seconds == excluded
        chosen = reoffered.offers[0]
        await r.scheduler.choose(
            event.referral_id, chosen.slot_id, booked_by=BookedBy.PATIENT, idempotency_key=None
        )
        booked = r.events(AppointmentBooked)[-1]
        assert (
            booked.wait_seconds
            == (chosen.start - event.referral_received_at).total_seconds() - excluded
        )
        assert (
            booked.wait_seconds
            < 14 * DAY
            < (chosen.start - event.referral_received_at).total_seconds()
        )
        assert (
            booked.within_target
        )  # beyond 14 days from receipt, but not counting the patient's delay
        # Only the first booking feeds the wait histogram and the within-target SLI.
        assert r.metric("pathway_bookings_total", priority="routine", within_target="true") == 1


async def test_an_urgent_referral_cannot_be_deferred_and_a_bad_date_is_refused(
    mongo_url: str,
) -> None:
    async with rig(mongo_url, two_xr_providers()) as r:
        urgent, routine = accepted("XCHES", priority="urgent"), accepted("XCHES")
        await r.scheduler.accept(urgent, cause_id="e1")
        await r.scheduler.accept(routine, cause_id="e2")
        today = london_date(r.clock.now())
        with pytest.raises(Rejected, match="urgent referral cannot be deferred"):
            await r.scheduler.defer(
                urgent.referral_id, "holiday", today + timedelta(days=5), idempotency_key=None
            )
        for bad in (today, today + timedelta(days=91)):
            with pytest.raises(Invalid, match="available_from"):
                await r.scheduler.defer(routine.referral_id, "holiday", bad, idempotency_key=None)
        assert r.events(AppointmentDeferred) == []
        assert (await r.state(urgent.referral_id)).paused_seconds == 0


# ---------------------------------------------------------------------------- did not attend


@pytest.mark.parametrize("dna_limit", [2, 3])
async def test_did_not_attend_rebooks_until_the_limit_then_returns_to_the_referrer(
    mongo_url: str, dna_limit: int
) -> None:
    async with rig(
        mongo_url, two_xr_providers(), policy=SchedulingPolicy(dna_limit=dna_limit)
    ) as r:
        event = accepted("XCHES")
        await r.scheduler.accept(event, cause_id="e1")
        offer = next(
            o for o in r.events(AppointmentsOffered)[0].offers if o.provider_ods == "RXA01"
        )
        await r.scheduler.choose(
            event.referral_id, offer.slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
        )
        dna = ProviderPatientDidNotAttend(
            referral_id=event.referral_id, occurred_at=r.clock.now(), slot_id=offer.slot_id
        )

        with pytest.raises(Denied):
            await r.scheduler.did_not_attend(dna, "NWX02", cause_id="wrong-provider")
        with pytest.raises(Rejected, match="not started"):
            await r.scheduler.did_not_attend(dna, "RXA01", cause_id="too-early")

        appointment = offer
        for count in range(1, dna_limit):
            r.clock.set(appointment.start + timedelta(minutes=30))
            missed = ProviderPatientDidNotAttend(
                referral_id=event.referral_id,
                occurred_at=r.clock.now(),
                slot_id=appointment.slot_id,
            )
            await r.scheduler.did_not_attend(missed, "RXA01", cause_id=f"dna{count}")
            assert r.events(AppointmentMissed)[-1].next_step == "rebook"
            assert r.events(AppointmentMissed)[-1].dna_count == count
            rebooked = r.events(AppointmentRebooked)[-1]
            assert (rebooked.previous, rebooked.reason) == (appointment, "did_not_attend")
            assert rebooked.appointment.provider_ods == "RXA01"  # kept at the same provider
            assert rebooked.appointment.start >= r.clock.now() + timedelta(minutes=120)
            assert r.topics_of(ProviderOrderRebooked, event.referral_id)[
                -1
            ] == topics.provider_outbound("RXA01")
            with pytest.raises(Rejected, match="not the referral's booked appointment"):
                await r.scheduler.did_not_attend(missed, "RXA01", cause_id=f"old-slot{count}")
            appointment = rebooked.appointment

        r.clock.set(appointment.start + timedelta(minutes=30))
        last = ProviderPatientDidNotAttend(
            referral_id=event.referral_id, occurred_at=r.clock.now(), slot_id=appointment.slot_id
        )
        await r.scheduler.did_not_attend(last, "RXA01", cause_id="dna-last")

        assert r.events(AppointmentMissed)[-1].next_step == "return_to_referrer"
        [returned] = r.events(ReferralReturnedAfterDna)
        assert returned.dna_count == dna_limit
        assert r.topics_of(ProviderOrderCancelled, event.referral_id) == [
            topics.provider_outbound("RXA01")
        ]
        assert (await r.state(event.referral_id)).state is State.RETURNED
        assert r.metric("pathway_dna_total", next_step="rebook") == dna_limit - 1
        assert r.metric("pathway_dna_total", next_step="return_to_referrer") == 1
        # A replayed DNA changes nothing.
        assert (await r.scheduler.did_not_attend(last, "RXA01", cause_id="dna-last")).duplicate


# ---------------------------------------------------------------------------- cancellation


async def test_cancellation_frees_the_slot_for_the_next_patient_and_tells_the_provider(
    mongo_url: str,
) -> None:
    one_slot = [
        provider("RXA01", site("A1", {"XR": {"rooms": 1}}, opening_hours=hours("09:00", "09:10")))
    ]
    async with rig(
        mongo_url, one_slot, policy=SchedulingPolicy(offer_count=1, offers_per_site=1)
    ) as r:
        first, second = accepted("XCHES"), accepted("XCHES")
        await r.scheduler.accept(first, cause_id="e1")
        slot = r.events(AppointmentsOffered, first.referral_id)[0].offers[0]
        await r.scheduler.choose(
            first.referral_id, slot.slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
        )
        await r.scheduler.accept(second, cause_id="e2")
        assert r.events(AppointmentsOffered, second.referral_id)[0].offers[0].start > slot.start
        with pytest.raises(Rejected, match="just taken"):
            await r.scheduler.choose(
                second.referral_id, slot.slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
            )

        await r.scheduler.referral_cancelled(first.referral_id, cause_id="c1")

        [cancelled] = r.events(AppointmentCancelled)
        assert (cancelled.appointment, cancelled.reason) == (slot, "referral_cancelled")
        assert r.topics_of(ProviderOrderCancelled, first.referral_id) == [
            topics.provider_outbound("RXA01")
        ]
        assert (await r.state(first.referral_id)).state is State.CANCELLED
        await r.scheduler.choose(
            second.referral_id, slot.slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
        )
        assert await r.repository.holder(slot.slot_id) == second.referral_id

        # The patient cancels the appointment: the slot is freed, the referral stays open to book again.
        await r.scheduler.cancel(second.referral_id, "patient_request", idempotency_key=None)
        assert r.events(AppointmentCancelled)[-1].reason == "patient_request"
        assert await r.repository.holder(slot.slot_id) is None
        assert (await r.state(second.referral_id)).state is State.UNBOOKED
        await r.scheduler.refresh_at_risk()
        assert r.metric("pathway_referrals_at_risk", priority="routine") == 1  # nobody books it now
        await r.scheduler.choose(
            second.referral_id, slot.slot_id, booked_by=BookedBy.CLERK, idempotency_key=None
        )


async def test_a_cancellation_that_overtakes_the_acceptance_means_nothing_is_booked(
    mongo_url: str,
) -> None:
    async with rig(mongo_url, two_xr_providers()) as r:
        event = accepted("XCHES")
        await r.scheduler.referral_cancelled(event.referral_id, cause_id="c1")
        await r.scheduler.accept(event, cause_id="e1")
        assert r.emitted == []
        assert await r.repository.get(event.referral_id) is None


# ---------------------------------------------------------------------------- walk-in and arrival


async def test_plain_xray_walk_in_tells_one_provider_to_expect_the_patient_without_a_slot(
    mongo_url: str,
) -> None:
    providers = [
        provider("RXA01", site("A1", {"XR": {"rooms": 1}, "US": {"rooms": 1}}, walk_in=True)),
        provider("NWX02", site("B1", {"XR": {"rooms": 1}})),
    ]
    async with rig(mongo_url, providers) as r:
        walk_in, not_allowed, ultrasound = (
            accepted("XCHES", walk_in_allowed=True),
            accepted("XCHES"),
            accepted("UABDO", walk_in_allowed=True),
        )
        for index, event in enumerate((walk_in, not_allowed, ultrasound)):
            await r.scheduler.accept(event, cause_id=f"e{index}")

        [authorised] = r.events(WalkInAuthorised)
        assert authorised.referral_id == walk_in.referral_id
        assert (authorised.provider_ods, authorised.site_id, authorised.valid_from) == (
            "RXA01",
            "A1",
            r.clock.now(),
        )
        assert local(authorised.valid_until).date() == london_date(r.clock.now()) + timedelta(
            days=14
        )
        assert r.topics_of(ProviderWalkInAuthorised, walk_in.referral_id) == [
            topics.provider_outbound("RXA01")
        ]
        assert r.events(AppointmentsOffered, walk_in.referral_id) == []
        assert await r.repository.bookings.count_documents({}) == 0
        assert len(r.events(AppointmentsOffered)) == 2  # the others are offered appointments

        arrived = ProviderPatientArrived(
            referral_id=walk_in.referral_id, occurred_at=r.clock.now(), site_id="A1"
        )
        with pytest.raises(Denied):
            await r.scheduler.arrived(arrived, "NWX02", cause_id="a0")
        r.clock.advance(timedelta(days=2))
        await r.scheduler.arrived(arrived, "RXA01", cause_id="a1")
        assert (await r.state(walk_in.referral_id)).state is State.ATTENDED
        assert r.metric("pathway_wait_to_appointment_seconds_count", priority="routine") == 1


async def test_an_expired_walk_in_is_withdrawn_and_appointments_are_offered(mongo_url: str) -> None:
    providers = [provider("RXA01", site("A1", {"XR": {"rooms": 1}}, walk_in=True))]
    async with rig(mongo_url, providers, policy=SchedulingPolicy(walk_in_validity_days=3)) as r:
        event = accepted("XCHES", walk_in_allowed=True)
        await r.scheduler.accept(event, cause_id="e1")
        r.clock.advance(timedelta(days=4))
        await r.scheduler.run_due()
        assert [e.reason for e in r.events(ProviderOrderCancelled)] == [
            "walk-in authorisation expired"
        ]
        assert len(r.events(AppointmentsOffered, event.referral_id)) == 1
        assert (await r.state(event.referral_id)).state is State.OFFERED


# ---------------------------------------------------------------------------- two instances


@PROPERTY_SETTINGS
@given(
    referrals=st.integers(min_value=2, max_value=7),
    rooms=st.integers(min_value=1, max_value=2),
    instances=st.lists(st.integers(min_value=0, max_value=1), min_size=7, max_size=7),
)
async def test_two_instances_booking_at_once_never_double_book_a_slot(
    mongo_url: str, referrals: int, rooms: int, instances: list[int]
) -> None:
    scarce = [
        provider(
            "RXA01", site("A1", {"XR": {"rooms": rooms}}, opening_hours=hours("09:00", "09:30"))
        )
    ]
    database = f"imaging_scheduling_{uuid.uuid4().hex[:10]}"
    clock = FixedClock(T0 + timedelta(hours=1))
    async with (
        rig(mongo_url, scarce, clock=clock, database=database) as one,
        rig(mongo_url, scarce, clock=clock, database=database) as two,
    ):
        replicas = (one, two)
        events = [accepted("XCHES") for _ in range(referrals)]
        for index, event in enumerate(events):
            await replicas[instances[index]].scheduler.accept(event, cause_id=f"e{index}")
        contested = (
            one.events(AppointmentsOffered)[0].offers[0]
            if one.events(AppointmentsOffered)
            else two.events(AppointmentsOffered)[0].offers[0]
        )

        async def choose(index: int, event: Any) -> bool:
            try:
                await replicas[instances[index]].scheduler.choose(
                    event.referral_id,
                    contested.slot_id,
                    booked_by=BookedBy.CLERK,
                    idempotency_key=None,
                )
            except (Rejected, BookingContention):
                return False
            return True

        # Everyone tries the same slot at once, then both replicas book the defaults at once.
        wins = await asyncio.gather(*(choose(i, e) for i, e in enumerate(events)))
        assert sum(wins) == 1
        clock.advance(timedelta(hours=49))
        await asyncio.gather(one.scheduler.run_due(), two.scheduler.run_due())

        holders = {d["_id"]: d["referral_id"] async for d in one.repository.bookings.find({})}
        booked = [await one.state(e.referral_id) for e in events]
        slots = [b.appointment.slot_id for b in booked]
        assert all(b.state is State.BOOKED for b in booked)
        assert len(set(slots)) == len(slots) == referrals, "two referrals hold the same slot"
        assert holders == {b.appointment.slot_id: b.referral_id for b in booked}
        booked_events = one.events(AppointmentBooked) + two.events(AppointmentBooked)
        assert sorted(e.referral_id for e in booked_events) == sorted(e.referral_id for e in events)
