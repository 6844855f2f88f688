"""Subscribers of the scheduling service: decode, call one rule, let it emit the next events.

Provider events take the provider's identity from the topic (`delivery.provider`), never
from the payload; a provider acting on a referral not assigned to it is Denied.
"""

from __future__ import annotations

from pathway_schemas.events import (
    ProviderPatientArrived,
    ProviderPatientDidNotAttend,
    ReferralCancelled,
    VettingAccepted,
)
from services.common.app import Runtime
from services.common.messaging import Delivery
from services.common.store import Outcome
from services.scheduling.metrics import Effects
from services.scheduling.service import Scheduler


def register(runtime: Runtime, scheduler: Scheduler) -> None:
    @runtime.consumer.on(VettingAccepted)
    async def on_vetting_accepted(event: VettingAccepted, delivery: Delivery) -> Outcome[Effects]:
        return await scheduler.accept(event, cause_id=delivery.event_id)

    @runtime.consumer.on(ReferralCancelled)
    async def on_referral_cancelled(
        event: ReferralCancelled, delivery: Delivery
    ) -> Outcome[Effects]:
        return await scheduler.referral_cancelled(event.referral_id, cause_id=delivery.event_id)

    @runtime.consumer.on(ProviderPatientDidNotAttend)
    async def on_patient_did_not_attend(
        event: ProviderPatientDidNotAttend, delivery: Delivery
    ) -> Outcome[Effects]:
        return await scheduler.did_not_attend(event, delivery.provider, cause_id=delivery.event_id)

    @runtime.consumer.on(ProviderPatientArrived)
    async def on_patient_arrived(
        event: ProviderPatientArrived, delivery: Delivery
    ) -> Outcome[Effects]:
        return await scheduler.arrived(event, delivery.provider, cause_id=delivery.event_id)
