"""Subscribers of the request service: the Kafka intake, and every family topic for the timeline."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from pathway_schemas import topics
from pathway_schemas.base import ReferralEvent
from pathway_schemas.envelope import InvalidEvent
from pathway_schemas.events import FAMILIES, ReferralDetails, ReferralRequested
from pathway_schemas.values import FieldError
from services.common.app import Runtime
from services.common.messaging import OUTAGE_ERRORS, Delivery
from services.common.store import Outcome
from services.request import service
from services.request.commands import Referrals, refusal_errors
from services.request.metrics import RequestMetrics

log = logging.getLogger("pathway.request.handlers")

TIMELINE_EVENTS = tuple(cls for topic in topics.CANONICAL for cls in FAMILIES[topic])
TOPICS = (topics.REFERRAL_INTAKE, *topics.CANONICAL)

# The intake contract's request id, so that a reply never echoes anything else.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
# Stands for a request id we could not read; never a valid id, so it cannot be mistaken for one.
UNKNOWN_REQUEST = "(unknown)"
# The contract's own words for a record that decoded but failed its fields.
_SCHEMA_REASON = "invalid event data"


def register(runtime: Runtime, referrals: Referrals, metrics: RequestMetrics) -> None:
    @runtime.consumer.on(ReferralRequested)
    async def on_referral_requested(
        event: ReferralRequested, delivery: Delivery
    ) -> Outcome[None] | None:
        details = ReferralDetails.model_validate(
            event.model_dump(include=set(ReferralDetails.model_fields))
        )
        try:
            submission = await referrals.submit(
                details, key=event.request_id, channel="kafka", reply_to_request=True
            )
        except (service.ReferralRefused, service.IdempotencyConflict) as refused:
            return await referrals.reply_rejected(
                event.request_id, refusal_errors(refused), cause_id=delivery.event_id
            )
        if not submission.created:
            # Asked again (a new record with the same request id): say again what it became.
            return await referrals.reply_accepted(
                submission.referral, event.request_id, cause_id=delivery.event_id
            )
        return None

    for event_class in TIMELINE_EVENTS:
        if not issubclass(event_class, ReferralEvent):  # pragma: no cover - every family event is
            raise TypeError(f"{event_class.__name__} carries no referral id")

    @runtime.consumer.on(*TIMELINE_EVENTS)
    async def on_pathway_event(event: ReferralEvent, delivery: Delivery) -> Outcome[bool]:
        return await referrals.record(event, delivery)

    async def on_undecodable(
        topic: str, headers: Sequence[tuple[str, bytes]], invalid: InvalidEvent
    ) -> None:
        """A sender on the intake topic hears why its record was refused, as well as the dead letter."""
        if topic != topics.REFERRAL_INTAKE:
            return
        try:
            attributes = {
                name: raw.decode("utf-8", "replace")
                for name, raw in headers
                if isinstance(raw, bytes)
            }
            subject = attributes.get("ce_subject", "")
            request_id = subject if _REQUEST_ID.fullmatch(subject) else UNKNOWN_REQUEST
            reason = "schema" if invalid.reason == _SCHEMA_REASON else "undecodable"
            metrics.rejected("kafka", reason)
            errors = invalid.errors or (FieldError(field="(record)", message=invalid.reason),)
            event_id = attributes.get("ce_id", "")
            if event_id and len(event_id) <= 128:
                await referrals.reply_rejected(request_id, errors, cause_id=f"invalid:{event_id}")
            else:
                await referrals.reply_rejected(request_id, errors, cause_id=None)
        except OUTAGE_ERRORS:
            raise  # the record stays uncommitted and comes back once the outage is over
        except Exception:
            # The dead letter still records it; a reply we could not build must not block the partition.
            log.exception("could not reply to an undecodable intake record", extra={"topic": topic})

    runtime.consumer.on_invalid = on_undecodable
