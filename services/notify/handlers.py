"""Subscribers of the notify service: each event is one unit of work, applied once.

Handlers only record what is owed (a delivery, a message, an alert) in the store; the
workers do the slow part, so a slow practice endpoint never holds up a partition.
"""

from __future__ import annotations

from collections.abc import Callable

from pathway_schemas.base import PathwayEvent
from pathway_schemas.events import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentRebooked,
    ReferralAmended,
    ReferralCancelled,
    ReferralReturnedAfterDna,
    ReferralSubmitted,
    ReportAddended,
    ReportDelayed,
    ReportIssued,
    VettingQueried,
    VettingReturned,
    WaitTargetBreached,
    WalkInAuthorised,
)
from services.common.app import Runtime
from services.common.messaging import Delivery
from services.common.store import Outcome
from services.notify.service import NotifyService

NOTICE_EVENTS = (
    AppointmentBooked,
    AppointmentRebooked,
    AppointmentCancelled,
    WalkInAuthorised,
    ReportDelayed,
    VettingReturned,
    VettingQueried,
    ReferralCancelled,
    ReferralReturnedAfterDna,
    WaitTargetBreached,
)


def register(runtime: Runtime, service: NotifyService, wake: Callable[[], None]) -> None:
    """`wake` tells this replica's workers that new work was just committed."""

    @runtime.consumer.on(ReferralSubmitted, ReferralAmended)
    async def on_referral(
        event: ReferralSubmitted | ReferralAmended, delivery: Delivery
    ) -> Outcome[None]:
        return await runtime.commit(
            lambda tx: service.remember_referral(tx, event), cause_id=delivery.event_id
        )

    @runtime.consumer.on(ReportIssued)
    async def on_report_issued(event: ReportIssued, delivery: Delivery) -> Outcome[None]:
        outcome = await runtime.commit(
            lambda tx: service.report_issued(tx, event), cause_id=delivery.event_id
        )
        wake()
        return outcome

    @runtime.consumer.on(ReportAddended)
    async def on_report_addended(event: ReportAddended, delivery: Delivery) -> Outcome[None]:
        outcome = await runtime.commit(
            lambda tx: service.report_addended(tx, event), cause_id=delivery.event_id
        )
        wake()
        return outcome

    @runtime.consumer.on(*NOTICE_EVENTS)
    async def on_notice_event(event: PathwayEvent, delivery: Delivery) -> Outcome[int]:
        outcome = await runtime.commit(
            lambda tx: service.notify_people(tx, event, delivery.event_id),
            cause_id=delivery.event_id,
        )
        wake()
        return outcome
