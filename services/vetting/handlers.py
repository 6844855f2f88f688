"""Subscribers of the vetting service: decode, call one rule, emit the next event."""

from __future__ import annotations

from pathway_schemas.events import ReferralSubmitted, VettingQueued
from services.common.app import Runtime
from services.common.messaging import Delivery
from services.common.store import Outcome, Tx
from services.vetting.repository import WorklistRepository


def register(runtime: Runtime, repository: WorklistRepository) -> None:
    @runtime.consumer.on(ReferralSubmitted)
    async def on_referral_submitted(event: ReferralSubmitted, delivery: Delivery) -> Outcome[None]:
        async def work(tx: Tx) -> None:
            await repository.put(
                tx,
                {
                    "_id": event.referral_id,
                    "state": "waiting",
                    "priority": event.priority.value,
                    "modality": event.modality.value,
                    "received_at": event.occurred_at,
                },
            )
            tx.emit(
                VettingQueued(
                    referral_id=event.referral_id,
                    occurred_at=tx.now,
                    priority=event.priority,
                    modality=event.modality,
                    why="awaiting a vetting clinician",
                )
            )

        return await runtime.commit(work, cause_id=delivery.event_id)
