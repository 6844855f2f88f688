"""The scheduling rules: offers, choice and the automatic default, rebook, cancel, deferral,
did-not-attend, walk-in, and the wait clock on every booking.

Every change runs as one unit of work (state, held slots and outbox in one transaction).
A unit of work that loses a race (the slot was held by another replica meanwhile, or the
referral changed under it) is run again from fresh state, so it picks the next free slot.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Literal, Protocol

from opentelemetry import trace
from opentelemetry.trace import Tracer
from pymongo.errors import DuplicateKeyError

from pathway_schemas import topics
from pathway_schemas.events import (
    Appointment,
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
    VettingAccepted,
    WaitTargetBreached,
    WalkInAuthorised,
)
from pathway_schemas.values import FieldError, Modality, Priority
from services.common.clock import Clock, WorkingCalendar, london_date
from services.common.errors import Denied, Invalid, NotFound, PathwayError, Rejected
from services.common.store import Outcome, Tx
from services.common.tracing import continued_trace
from services.scheduling.metrics import Effects, SchedulingMetrics
from services.scheduling.model import OPEN_STATES, Deferral, ReferralRecord, State, WalkIn
from services.scheduling.registry import Provider
from services.scheduling.repository import BookingRepository, StaleRecord
from services.scheduling.settings import SchedulingPolicy
from services.scheduling.slots import (
    Slot,
    choose_offers,
    earliest,
    find_free,
    parse_slot_id,
    templates,
)
from services.scheduling.waits import (
    desirable_days,
    start_of_day,
    target_days,
    target_deadline,
    wait_seconds,
)

log = logging.getLogger("pathway.scheduling")

Work = Callable[[Tx, Effects], Awaitable[None]]
RebookReason = Literal["patient_request", "provider_change", "did_not_attend"]
CancelReason = Literal["patient_request", "provider_request"]


class Commit(Protocol):
    async def __call__(
        self, work: Callable[[Tx], Awaitable[Effects]], *, cause_id: str | None = ...
    ) -> Outcome[Effects]: ...


class BookingContention(RuntimeError):
    """Every attempt lost its slot to another booking; the caller may try again."""


class Scheduler:
    def __init__(
        self,
        *,
        commit: Commit,
        clock: Clock,
        policy: SchedulingPolicy,
        repository: BookingRepository,
        metrics: SchedulingMetrics,
        attempts: int = 10,
        tracer: Tracer | None = None,
    ) -> None:
        self.commit = commit
        self.tracer = tracer or trace.get_tracer("pathway.scheduling.jobs")
        self.clock = clock
        self.policy = policy
        self.repository = repository
        self.metrics = metrics
        self.attempts = attempts
        self.calendar = WorkingCalendar(policy.bank_holiday_nation)

    # ------------------------------------------------------------------ running units of work

    async def run(self, work: Work, *, cause_id: str | None) -> Outcome[Effects]:
        async def unit(tx: Tx) -> Effects:
            effects = Effects()
            await work(tx, effects)
            return effects

        for _ in range(self.attempts):
            try:
                outcome = await self.commit(unit, cause_id=cause_id)
            except (DuplicateKeyError, StaleRecord):
                continue  # lost a race for a slot or the record: run again on fresh state
            if outcome.value is not None:
                self.metrics.record(outcome.value)
            return outcome
        raise BookingContention(
            f"gave up after {self.attempts} attempts: slots kept being taken meanwhile"
        )

    async def _load(self, tx: Tx, referral_id: str) -> ReferralRecord:
        record = await self.repository.get(referral_id, tx)
        if record is None:
            raise NotFound(f"no booking is known for referral {referral_id}")
        return record

    # ------------------------------------------------------------------ from vetting

    async def accept(self, event: VettingAccepted, *, cause_id: str) -> Outcome[Effects]:
        """An accepted referral gets a walk-in authorisation or appointment offers."""

        async def work(tx: Tx, effects: Effects) -> None:
            if await self.repository.was_cancelled(tx, event.referral_id):
                return  # the cancellation overtook the acceptance
            existing = await self.repository.get(event.referral_id, tx)
            if existing is not None and existing.state is not State.RETURNED:
                return  # already being scheduled; only a referral returned after DNA starts again
            record = ReferralRecord(
                referral_id=event.referral_id,
                version=existing.version if existing else 0,
                state=State.OFFERED,
                priority=event.priority,
                modality=event.modality,
                examination_code=event.examination_code,
                nhs_number=event.nhs_number,
                practice_ods=event.practice_ods,
                protocol=event.protocol,
                clinical_question=event.clinical_question,
                received_at=event.referral_received_at,
                target_days=target_days(event.priority, self.policy),
            )
            providers = await self.repository.all_providers(tx)
            if (
                event.walk_in_allowed
                and event.modality is Modality.XR
                and self._authorise_walk_in(tx, record, providers)
            ):
                await self.repository.save(tx, record)
                return
            await self._offer(tx, record, providers)
            await self.repository.save(tx, record)

        return await self.run(work, cause_id=cause_id)

    def _authorise_walk_in(self, tx: Tx, record: ReferralRecord, providers: list[Provider]) -> bool:
        sites = [
            (p, s)
            for p in providers
            if p.active
            for s in p.sites
            if s.walk_in and Modality.XR in s.modalities
        ]
        if not sites:
            return False
        # The referral id is random: spreading walk-ins by it needs no shared counter.
        provider, site = sites[int(record.referral_id[4:], 16) % len(sites)]
        days = min(self.policy.walk_in_validity_days, record.target_days)
        valid_until = self.calendar.end_of_day(london_date(tx.now) + timedelta(days=days))
        record.state = State.WALK_IN
        record.provider_ods = provider.ods
        record.walk_in = WalkIn(
            provider_ods=provider.ods, site_id=site.id, valid_from=tx.now, valid_until=valid_until
        )
        tx.emit(
            WalkInAuthorised(
                referral_id=record.referral_id,
                occurred_at=tx.now,
                provider_ods=provider.ods,
                site_id=site.id,
                valid_from=tx.now,
                valid_until=valid_until,
                modality=record.modality,
                examination_code=record.examination_code,
            )
        )
        tx.emit(
            ProviderWalkInAuthorised(
                referral_id=record.referral_id,
                occurred_at=tx.now,
                nhs_number=record.nhs_number,
                examination_code=record.examination_code,
                modality=record.modality,
                protocol=record.protocol,
                clinical_question=record.clinical_question,
                site_id=site.id,
                valid_from=tx.now,
                valid_until=valid_until,
            ),
            topic=topics.provider_outbound(provider.ods),
        )
        return True

    # ------------------------------------------------------------------ search

    def _earliest_start(self, record: ReferralRecord, now: datetime) -> datetime:
        soonest = now + timedelta(minutes=self.policy.min_notice_minutes)
        return max(soonest, record.available_from) if record.available_from else soonest

    def _deadline(self, record: ReferralRecord) -> datetime:
        return record.target_deadline

    async def _search(
        self,
        tx: Tx | None,
        record: ReferralRecord,
        providers: list[Provider],
        start: datetime,
        per_site: int,
        end: datetime | None = None,
    ) -> dict[tuple[str, str], list[Slot]]:
        candidates = templates(providers, record.modality, self.policy.slot_minutes, self.calendar)

        async def booked(
            modality: Modality, window_start: datetime, window_end: datetime
        ) -> set[str]:
            return await self.repository.booked_in_window(tx, modality, window_start, window_end)

        return await find_free(
            candidates,
            start,
            end or start + timedelta(days=self.policy.search_horizon_days),
            per_site=per_site,
            chunk=timedelta(days=self.policy.search_chunk_days),
            booked=booked,
        )

    async def _offer(self, tx: Tx, record: ReferralRecord, providers: list[Provider]) -> None:
        """Offer the earliest free slots across providers and sites; record a breach when none meets the target.

        Offers start the usual notice after the choose-by deadline, so that none has lapsed
        when the default books the earliest of them; the patient may still choose any earlier
        free slot.
        """
        hours = (
            self.policy.choose_by_hours_urgent
            if record.priority is Priority.URGENT
            else self.policy.choose_by_hours_routine
        )
        choose_by = tx.now + timedelta(hours=hours)
        soonest = self._earliest_start(record, tx.now)
        found = await self._search(
            tx,
            record,
            providers,
            self._earliest_start(record, choose_by),
            self.policy.offers_per_site,
        )
        offers = choose_offers(found, self.policy.offer_count)
        record.state = State.OFFERED
        record.appointment = None
        record.offers = [slot.appointment() for slot in offers]
        if offers:
            record.choose_by = choose_by
            tx.emit(
                AppointmentsOffered(
                    referral_id=record.referral_id,
                    occurred_at=tx.now,
                    offers=tuple(record.offers),
                    choose_by=choose_by,
                    target_days=record.target_days,
                )
            )
        else:
            record.choose_by = tx.now + timedelta(minutes=self.policy.capacity_retry_minutes)
        deadline = self._deadline(record)
        if offers and offers[0].start <= deadline:
            return
        if soonest < choose_by:
            # A slot before the deadline still meets the target if one is free.
            sooner = earliest(
                await self._search(tx, record, providers, soonest, 1, end=min(choose_by, deadline))
            )
            if sooner is not None:
                return
        self._breach(tx, record, offers[0].start if offers else None)

    def _breach(self, tx: Tx, record: ReferralRecord, earliest_available: datetime | None) -> None:
        if record.breach_recorded:
            return
        record.breach_recorded = True
        tx.emit(
            WaitTargetBreached(
                referral_id=record.referral_id,
                occurred_at=tx.now,
                priority=record.priority,
                target_days=record.target_days,
                earliest_available=earliest_available,
            )
        )
        log.warning("no appointment within target", extra={"referral_id": record.referral_id})

    async def _validated_slot(self, tx: Tx, record: ReferralRecord, slot_id: str) -> Slot:
        try:
            ref = parse_slot_id(slot_id)
        except ValueError as error:
            raise Invalid(str(error), [FieldError(field="slot_id", message=str(error))]) from None
        if ref.modality is not record.modality:
            message = (
                f"the slot is for {ref.modality.value}; the referral needs {record.modality.value}"
            )
            raise Invalid(message, [FieldError(field="slot_id", message=message)])
        providers = await self.repository.all_providers(tx)
        candidates = templates(providers, record.modality, self.policy.slot_minutes, self.calendar)
        template = next((t for t in candidates if t.holds(ref)), None)
        if template is None:
            message = "no such slot: the provider, site, room or time is not bookable"
            raise Invalid(message, [FieldError(field="slot_id", message=message)])
        soonest = self._earliest_start(record, tx.now)
        if ref.start < soonest:
            raise Rejected(
                "the slot starts too soon, or before the patient is available: choose a later one"
            )
        if ref.start >= soonest + timedelta(days=self.policy.search_horizon_days):
            raise Rejected(
                f"the slot is beyond the {self.policy.search_horizon_days}-day booking horizon"
            )
        if await self.repository.held_ids(tx, [slot_id]):
            raise Rejected("the slot was just taken: choose another (GET .../availability)")
        return Slot(
            ref.start,
            ref.start + template.length,
            ref.provider_ods,
            ref.site_id,
            ref.modality,
            ref.room,
        )

    # ------------------------------------------------------------------ booking, moving, freeing

    async def _book(
        self, tx: Tx, record: ReferralRecord, slot: Slot, booked_by: BookedBy, effects: Effects
    ) -> None:
        await self.repository.hold(tx, slot, record.referral_id)
        if record.state is State.WALK_IN and record.walk_in is not None:
            self._order_cancelled(
                tx,
                record,
                record.walk_in.provider_ods,
                "booked an appointment instead of a walk-in",
            )
            record.walk_in = None
        appointment = slot.appointment()
        wait = wait_seconds(record.received_at, slot.start, record.paused_seconds)
        within = slot.start <= self._deadline(record)
        record.state = State.BOOKED
        record.appointment = appointment
        record.provider_ods = slot.provider_ods
        record.offers = []
        record.choose_by = None
        record.booked_by = booked_by
        record.within_target = within
        tx.emit(
            AppointmentBooked(
                referral_id=record.referral_id,
                occurred_at=tx.now,
                appointment=appointment,
                booked_by=booked_by,
                priority=record.priority,
                modality=record.modality,
                examination_code=record.examination_code,
                wait_seconds=wait,
                within_target=within,
            )
        )
        self._order_booked(tx, record, appointment)
        if not record.ever_booked:
            record.ever_booked = True
            effects.waits.append((record.priority, wait, within))
        effects.slots_booked.append((slot.provider_ods, slot.modality))

    async def _move(
        self, tx: Tx, record: ReferralRecord, slot: Slot, reason: RebookReason, effects: Effects
    ) -> None:
        previous = record.appointment
        if previous is None:
            raise Rejected("the referral has no appointment to move")
        if reason != "did_not_attend":
            await self.repository.release(tx, previous.slot_id)
        await self.repository.hold(tx, slot, record.referral_id)
        appointment = slot.appointment()
        wait = wait_seconds(record.received_at, slot.start, record.paused_seconds)
        within = slot.start <= self._deadline(record)
        record.state = State.BOOKED
        record.appointment = appointment
        record.provider_ods = slot.provider_ods
        record.within_target = within
        tx.emit(
            AppointmentRebooked(
                referral_id=record.referral_id,
                occurred_at=tx.now,
                previous=previous,
                appointment=appointment,
                reason=reason,
                wait_seconds=wait,
                within_target=within,
            )
        )
        if slot.provider_ods == previous.provider_ods:
            tx.emit(
                ProviderOrderRebooked(
                    referral_id=record.referral_id,
                    occurred_at=tx.now,
                    appointment=appointment,
                    previous=previous,
                ),
                topic=topics.provider_outbound(previous.provider_ods),
            )
        else:
            self._order_cancelled(tx, record, previous.provider_ods, "moved to another provider")
            self._order_booked(tx, record, appointment)
        effects.slots_booked.append((slot.provider_ods, slot.modality))

    async def _free(self, tx: Tx, record: ReferralRecord, reason: str) -> Appointment | None:
        """Release the held slot (or the walk-in) and tell the provider the order is off."""
        previous = record.appointment
        if previous is not None:
            await self.repository.release(tx, previous.slot_id)
            self._order_cancelled(tx, record, previous.provider_ods, reason)
        elif record.walk_in is not None:
            self._order_cancelled(tx, record, record.walk_in.provider_ods, reason)
        record.appointment = None
        record.walk_in = None
        record.within_target = None
        return previous

    def _order_booked(self, tx: Tx, record: ReferralRecord, appointment: Appointment) -> None:
        tx.emit(
            ProviderOrderBooked(
                referral_id=record.referral_id,
                occurred_at=tx.now,
                nhs_number=record.nhs_number,
                examination_code=record.examination_code,
                modality=record.modality,
                protocol=record.protocol,
                priority=record.priority,
                clinical_question=record.clinical_question,
                appointment=appointment,
            ),
            topic=topics.provider_outbound(appointment.provider_ods),
        )

    def _order_cancelled(
        self, tx: Tx, record: ReferralRecord, provider_ods: str, reason: str
    ) -> None:
        tx.emit(
            ProviderOrderCancelled(
                referral_id=record.referral_id, occurred_at=tx.now, reason=reason
            ),
            topic=topics.provider_outbound(provider_ods),
        )

    # ------------------------------------------------------------------ commands (HTTP API)

    async def choose(
        self, referral_id: str, slot_id: str, *, booked_by: BookedBy, idempotency_key: str | None
    ) -> Outcome[Effects]:
        """The patient (or a clerk for them) picks a slot: one of the offers or any free one."""

        async def work(tx: Tx, effects: Effects) -> None:
            record = await self._load(tx, referral_id)
            if record.state not in (State.OFFERED, State.UNBOOKED, State.WALK_IN):
                raise Rejected(
                    f"the referral is {record.state.value}: use rebook to move a booked appointment"
                )
            slot = await self._validated_slot(tx, record, slot_id)
            await self._book(tx, record, slot, booked_by, effects)
            await self.repository.save(tx, record)

        return await self.run(work, cause_id=_command("choose", referral_id, idempotency_key))

    async def rebook(
        self, referral_id: str, slot_id: str | None, *, idempotency_key: str | None
    ) -> Outcome[Effects]:
        """Move a booked appointment to the chosen slot, or to the earliest free one."""

        async def work(tx: Tx, effects: Effects) -> None:
            record = await self._load(tx, referral_id)
            if record.state is not State.BOOKED:
                raise Rejected(
                    f"the referral is {record.state.value}, not booked: choose a slot instead"
                )
            if slot_id is not None:
                slot = await self._validated_slot(tx, record, slot_id)
            else:
                providers = await self.repository.all_providers(tx)
                found = await self._search(
                    tx, record, providers, self._earliest_start(record, tx.now), 1
                )
                picked = earliest(found)
                if picked is None:
                    raise Rejected("no free slot within the booking horizon")
                slot = picked
            await self._move(tx, record, slot, "patient_request", effects)
            await self.repository.save(tx, record)

        return await self.run(work, cause_id=_command("rebook", referral_id, idempotency_key))

    async def cancel(
        self, referral_id: str, reason: CancelReason, *, idempotency_key: str | None
    ) -> Outcome[Effects]:
        """Cancel the appointment (the referral stays open): the slot is freed, the provider told."""

        async def work(tx: Tx, effects: Effects) -> None:
            record = await self._load(tx, referral_id)
            if record.state is not State.BOOKED:
                raise Rejected(
                    f"the referral is {record.state.value}: there is no appointment to cancel"
                )
            previous = await self._free(
                tx, record, f"appointment cancelled ({reason.replace('_', ' ')})"
            )
            assert previous is not None
            record.state = State.UNBOOKED
            tx.emit(
                AppointmentCancelled(
                    referral_id=record.referral_id,
                    occurred_at=tx.now,
                    appointment=previous,
                    reason=reason,
                )
            )
            await self.repository.save(tx, record)

        return await self.run(work, cause_id=_command("cancel", referral_id, idempotency_key))

    async def defer(
        self, referral_id: str, reason: str, available_from: date, *, idempotency_key: str | None
    ) -> Outcome[Effects]:
        """Patient-elected delay (non-urgent only): the delay is excluded from the wait; new offers follow."""

        async def work(tx: Tx, effects: Effects) -> None:
            record = await self._load(tx, referral_id)
            if record.priority is Priority.URGENT:
                raise Rejected(
                    "an urgent referral cannot be deferred for social reasons: its wait must not exceed the target"
                )
            if record.state not in (State.OFFERED, State.BOOKED, State.UNBOOKED):
                raise Rejected(f"the referral is {record.state.value}: nothing to defer")
            today = london_date(tx.now)
            latest = today + timedelta(days=self.policy.max_deferral_days)
            if not today < available_from <= latest:
                message = (
                    f"available_from must be after today and no later than {latest.isoformat()}"
                )
                raise Invalid(message, [FieldError(field="available_from", message=message)])
            previous = await self._free(tx, record, "the patient elected to delay")
            before = record.paused_seconds
            record.set_pause(record.pause.extend(tx.now, available_from))
            record.available_from = start_of_day(available_from)
            record.deferrals.append(
                Deferral(
                    reason=reason,
                    available_from=available_from.isoformat(),
                    requested_at=tx.now,
                    excluded_seconds=record.paused_seconds - before,
                )
            )
            tx.emit(
                AppointmentDeferred(
                    referral_id=record.referral_id,
                    occurred_at=tx.now,
                    reason=reason,
                    available_from=available_from,
                    previous=previous,
                )
            )
            await self._offer(tx, record, await self.repository.all_providers(tx))
            await self.repository.save(tx, record)

        return await self.run(work, cause_id=_command("defer", referral_id, idempotency_key))

    # ------------------------------------------------------------------ from the referral and providers

    async def referral_cancelled(self, referral_id: str, *, cause_id: str) -> Outcome[Effects]:
        """The referrer cancelled: free the slot (or the walk-in) and tell the provider."""

        async def work(tx: Tx, effects: Effects) -> None:
            record = await self.repository.get(referral_id, tx)
            if record is None:
                await self.repository.remember_cancelled(tx, referral_id)
                return
            if record.state not in OPEN_STATES:
                return
            previous = await self._free(tx, record, "referral cancelled")
            if previous is not None:
                tx.emit(
                    AppointmentCancelled(
                        referral_id=referral_id,
                        occurred_at=tx.now,
                        appointment=previous,
                        reason="referral_cancelled",
                    )
                )
            record.state = State.CANCELLED
            record.offers = []
            record.choose_by = None
            await self.repository.save(tx, record)

        return await self.run(work, cause_id=cause_id)

    async def _assigned(self, tx: Tx, referral_id: str, provider: str | None) -> ReferralRecord:
        """The referral, if it is assigned to this provider; Denied otherwise (never says more)."""
        record = await self.repository.get(referral_id, tx)
        if provider is None or record is None or record.provider_ods != provider:
            raise Denied(f"referral {referral_id} is not assigned to this provider")
        return record

    async def did_not_attend(
        self, event: ProviderPatientDidNotAttend, provider: str | None, *, cause_id: str
    ) -> Outcome[Effects]:
        """Rebook after a did-not-attend, until the local limit; then return to the referrer."""

        async def work(tx: Tx, effects: Effects) -> None:
            record = await self._assigned(tx, event.referral_id, provider)
            missed = record.appointment
            if record.state is not State.BOOKED or missed is None:
                raise Rejected(
                    f"the referral is {record.state.value}: there is no booked appointment to miss"
                )
            if event.slot_id != missed.slot_id:
                raise Rejected("the slot is not the referral's booked appointment")
            if tx.now < missed.start:
                raise Rejected("the appointment has not started yet")
            record.dna_count += 1
            await self.repository.mark(tx, missed.slot_id, "did_not_attend")
            returning = record.dna_count >= self.policy.dna_limit
            tx.emit(
                AppointmentMissed(
                    referral_id=record.referral_id,
                    occurred_at=tx.now,
                    appointment=missed,
                    dna_count=record.dna_count,
                    next_step="return_to_referrer" if returning else "rebook",
                )
            )
            if returning:
                effects.dna.append("return_to_referrer")
                self._order_cancelled(
                    tx, record, missed.provider_ods, "returned to the referrer after did-not-attend"
                )
                tx.emit(
                    ReferralReturnedAfterDna(
                        referral_id=record.referral_id,
                        occurred_at=tx.now,
                        dna_count=record.dna_count,
                    )
                )
                record.state = State.RETURNED
                record.appointment = None
                record.within_target = None
            else:
                effects.dna.append("rebook")
                await self._rebook_after_dna(tx, record, effects)
            await self.repository.save(tx, record)

        return await self.run(work, cause_id=cause_id)

    async def _rebook_after_dna(self, tx: Tx, record: ReferralRecord, effects: Effects) -> None:
        """The earliest slot at the same provider, else anywhere; offers again when there is none."""
        providers = await self.repository.all_providers(tx)
        start = self._earliest_start(record, tx.now)
        same = [p for p in providers if p.ods == record.provider_ods]
        slot = earliest(await self._search(tx, record, same, start, 1)) if same else None
        if slot is None:
            slot = earliest(await self._search(tx, record, providers, start, 1))
        if slot is not None:
            await self._move(tx, record, slot, "did_not_attend", effects)
            return
        missed = record.appointment
        assert missed is not None
        self._order_cancelled(
            tx, record, missed.provider_ods, "no slot to rebook after did-not-attend"
        )
        await self._offer(tx, record, providers)

    async def arrived(
        self, event: ProviderPatientArrived, provider: str | None, *, cause_id: str
    ) -> Outcome[Effects]:
        """The patient arrived at the assigned provider: the appointment (or walk-in) is attended."""

        async def work(tx: Tx, effects: Effects) -> None:
            record = await self._assigned(tx, event.referral_id, provider)
            if record.state is State.BOOKED and record.appointment is not None:
                await self.repository.mark(tx, record.appointment.slot_id, "attended")
            elif record.state is State.WALK_IN:
                effects.walk_in_waits.append(
                    (
                        record.priority,
                        wait_seconds(record.received_at, tx.now, record.paused_seconds),
                    )
                )
            else:
                raise Rejected(
                    f"the referral is {record.state.value}: no appointment or walk-in to arrive for"
                )
            record.state = State.ATTENDED
            await self.repository.save(tx, record)

        return await self.run(work, cause_id=cause_id)

    # ------------------------------------------------------------------ deadlines (background job)

    async def run_due(self, limit: int = 100) -> int:
        """Book the default for offers past their deadline; re-offer expired walk-ins."""
        due = await self.repository.due(self.clock.now(), limit)
        for record in due:
            cause_id = (
                f"due:{record.referral_id}:{record.due_at.isoformat() if record.due_at else ''}"
            )
            kind = "walk_in_expiry" if record.state is State.WALK_IN else "choose_by_deadline"
            try:
                # In the trace of the work that set the deadline (the offers, the walk-in).
                with continued_trace(
                    self.tracer, "act on deadline", record.due_trace, attributes={"job.kind": kind}
                ):
                    await self.run(
                        self._due_work(record.referral_id, record.state, record.due_at),
                        cause_id=cause_id,
                    )
            except (PathwayError, BookingContention) as error:
                log.warning(
                    "deadline work not done: %s", error, extra={"referral_id": record.referral_id}
                )
        return len(due)

    def _due_work(self, referral_id: str, state: State, due_at: datetime | None) -> Work:
        async def work(tx: Tx, effects: Effects) -> None:
            record = await self._load(tx, referral_id)
            if record.state is not state or record.due_at != due_at:
                return  # someone acted first
            if record.state is State.WALK_IN:
                self._free_walk_in_expired(tx, record)
                await self._offer(tx, record, await self.repository.all_providers(tx))
            else:
                await self._default_booking(tx, record, effects)
            await self.repository.save(tx, record)

        return work

    def _free_walk_in_expired(self, tx: Tx, record: ReferralRecord) -> None:
        if record.walk_in is not None:
            self._order_cancelled(
                tx, record, record.walk_in.provider_ods, "walk-in authorisation expired"
            )
        record.walk_in = None

    async def _default_booking(self, tx: Tx, record: ReferralRecord, effects: Effects) -> None:
        """No choice by the deadline: book the earliest offer meeting the target, re-searching if taken."""
        providers = await self.repository.all_providers(tx)
        candidates = templates(providers, record.modality, self.policy.slot_minutes, self.calendar)
        soonest = self._earliest_start(record, tx.now)
        deadline = self._deadline(record)
        # The patient was told these offers hold to the deadline: one keeps unless it is taken,
        # beyond the target, or about to start (the job ran late).
        keeps_from = tx.now + timedelta(minutes=self.policy.default_booking_notice_minutes)
        held = await self.repository.held_ids(tx, [o.slot_id for o in record.offers])
        still_open = [
            o
            for o in record.offers
            if o.slot_id not in held
            and keeps_from <= o.start <= deadline
            and any(t.holds(parse_slot_id(o.slot_id)) for t in candidates)
        ]
        slot: Slot | None
        if still_open:
            offer = min(still_open, key=lambda o: o.start)
            ref = parse_slot_id(offer.slot_id)
            slot = Slot(
                offer.start, offer.end, ref.provider_ods, ref.site_id, ref.modality, ref.room
            )
        else:
            slot = earliest(await self._search(tx, record, providers, soonest, 1))
        if slot is None:
            self._breach(tx, record, None)
            record.choose_by = tx.now + timedelta(minutes=self.policy.capacity_retry_minutes)
            return
        if slot.start > deadline:
            self._breach(tx, record, slot.start)
        await self._book(tx, record, slot, BookedBy.AUTOMATIC, effects)

    async def refresh_at_risk(self) -> None:
        self.metrics.set_at_risk(await self.repository.count_at_risk())

    # ------------------------------------------------------------------ queries

    async def get(self, referral_id: str) -> ReferralRecord:
        record = await self.repository.get(referral_id)
        if record is None:
            raise NotFound(f"no booking is known for referral {referral_id}")
        return record

    async def availability(self, referral_id: str, count: int) -> list[Appointment]:
        """Free slots the clerk can offer now (nothing is held)."""
        record = await self.get(referral_id)
        providers = await self.repository.all_providers()
        start = self._earliest_start(record, self.clock.now())
        found = await self._search(None, record, providers, start, self.policy.offers_per_site)
        return [slot.appointment() for slot in choose_offers(found, count)]

    def within_desirable(self, record: ReferralRecord) -> bool | None:
        """Whether the appointment also meets the desirable target (routine 7 days)."""
        if record.appointment is None:
            return None
        days = desirable_days(record.priority, self.policy)
        return record.appointment.start <= target_deadline(
            record.received_at, days, record.paused_seconds
        )


def _command(verb: str, referral_id: str, idempotency_key: str | None) -> str | None:
    return f"{verb}:{referral_id}:{idempotency_key}" if idempotency_key else None
