"""Subscribers of the reporting service: news of referrals and bookings, and each provider's events."""

from __future__ import annotations

from pathway_schemas.events import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentRebooked,
    ReferralAmended,
    ReferralCancelled,
    ReferralSubmitted,
    VettingAccepted,
    WalkInAuthorised,
)
from services.common.app import Runtime
from services.common.messaging import Delivery
from services.common.store import Outcome, Tx
from services.reporting.commands import Applied, Reporting
from services.reporting.intake import PROVIDER_EVENTS, ProviderEvent, ProviderIntake
from services.reporting.service import Referral


def register(runtime: Runtime, reporting: Reporting, intake: ProviderIntake) -> None:
    async def then_release(outcome: Outcome[Referral | None]) -> Outcome[Referral | None]:
        if not outcome.duplicate:
            await intake.after_news(outcome.value)
        return outcome

    @runtime.consumer.on(ReferralSubmitted, ReferralAmended)
    async def on_referral_requested(
        event: ReferralSubmitted | ReferralAmended, delivery: Delivery
    ) -> Outcome[Referral | None]:
        async def work(tx: Tx) -> Referral | None:
            return await reporting.record_requested(tx, event)

        return await then_release(await runtime.commit(work, cause_id=delivery.event_id))

    @runtime.consumer.on(ReferralCancelled)
    async def on_referral_cancelled(
        event: ReferralCancelled, delivery: Delivery
    ) -> Outcome[Referral | None]:
        async def work(tx: Tx) -> Referral | None:
            return await reporting.record_cancelled(tx, event.referral_id)

        return await then_release(await runtime.commit(work, cause_id=delivery.event_id))

    @runtime.consumer.on(VettingAccepted)
    async def on_vetting_accepted(
        event: VettingAccepted, delivery: Delivery
    ) -> Outcome[Referral | None]:
        async def work(tx: Tx) -> Referral | None:
            return await reporting.record_accepted(tx, event)

        return await then_release(await runtime.commit(work, cause_id=delivery.event_id))

    @runtime.consumer.on(AppointmentBooked, AppointmentRebooked)
    async def on_appointment_booked(
        event: AppointmentBooked | AppointmentRebooked, delivery: Delivery
    ) -> Outcome[Referral | None]:
        appointment = event.appointment

        async def work(tx: Tx) -> Referral | None:
            return await reporting.assign(
                tx,
                event.referral_id,
                appointment.provider_ods,
                appointment.site_id,
                appointment.slot_id,
            )

        return await then_release(await runtime.commit(work, cause_id=delivery.event_id))

    @runtime.consumer.on(WalkInAuthorised)
    async def on_walk_in_authorised(
        event: WalkInAuthorised, delivery: Delivery
    ) -> Outcome[Referral | None]:
        async def work(tx: Tx) -> Referral | None:
            return await reporting.assign(
                tx, event.referral_id, event.provider_ods, event.site_id, None
            )

        return await then_release(await runtime.commit(work, cause_id=delivery.event_id))

    @runtime.consumer.on(AppointmentCancelled)
    async def on_appointment_cancelled(
        event: AppointmentCancelled, delivery: Delivery
    ) -> Outcome[None]:
        appointment = event.appointment

        async def work(tx: Tx) -> None:
            await reporting.release(
                tx, event.referral_id, appointment.provider_ods, appointment.slot_id
            )

        return await runtime.commit(work, cause_id=delivery.event_id)

    @runtime.consumer.on(*PROVIDER_EVENTS)
    async def on_provider_event(event: ProviderEvent, delivery: Delivery) -> Outcome[Applied]:
        return await intake.receive(event, delivery)
