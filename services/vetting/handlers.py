"""Subscribers of the vetting service: decode, call one rule, store the item, emit its events."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pathway_schemas.events import (
    ReferralAmended,
    ReferralCancelled,
    ReferralQueryAnswered,
    ReferralSubmitted,
)
from services.common.app import Runtime
from services.common.messaging import Delivery
from services.common.store import Outcome, Tx
from services.vetting import service
from services.vetting.metrics import VettingMetrics
from services.vetting.repository import WorklistRepository
from services.vetting.service import Step, VettingPolicy, WorklistItem

log = logging.getLogger("pathway.vetting")

Rule = Callable[[WorklistItem | None, Tx], Step | None]


def register(
    runtime: Runtime, repository: WorklistRepository, policy: VettingPolicy, metrics: VettingMetrics
) -> None:
    async def apply(referral_id: str, delivery: Delivery, rule: Rule) -> Outcome[Step | None]:
        async def work(tx: Tx) -> Step | None:
            existing = await repository.load(referral_id, tx)
            step = rule(existing, tx)
            return None if step is None else await repository.record(tx, step, previous=existing)

        outcome = await runtime.commit(work, cause_id=delivery.event_id)
        if not outcome.duplicate and outcome.value is not None:
            metrics.record(outcome.value)
            log.info(
                "vetting item %s",
                outcome.value.item.state.value,
                extra={"referral_id": referral_id},
            )
        return outcome

    @runtime.consumer.on(ReferralSubmitted)
    async def on_referral_submitted(
        event: ReferralSubmitted, delivery: Delivery
    ) -> Outcome[Step | None]:
        return await apply(
            event.referral_id,
            delivery,
            lambda item, tx: service.enter_vetting(item, event, policy.open_access, tx.now),
        )

    @runtime.consumer.on(ReferralAmended)
    async def on_referral_amended(
        event: ReferralAmended, delivery: Delivery
    ) -> Outcome[Step | None]:
        return await apply(
            event.referral_id,
            delivery,
            lambda item, tx: service.enter_vetting(item, event, policy.open_access, tx.now),
        )

    @runtime.consumer.on(ReferralQueryAnswered)
    async def on_query_answered(
        event: ReferralQueryAnswered, delivery: Delivery
    ) -> Outcome[Step | None]:
        return await apply(
            event.referral_id, delivery, lambda item, tx: service.answer_query(item, event, tx.now)
        )

    @runtime.consumer.on(ReferralCancelled)
    async def on_referral_cancelled(
        event: ReferralCancelled, delivery: Delivery
    ) -> Outcome[Step | None]:
        return await apply(
            event.referral_id, delivery, lambda item, tx: service.cancel(item, event)
        )
