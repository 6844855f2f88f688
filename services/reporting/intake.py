"""Provider inbound events: identity from the topic, assignment checked, parked while not yet known.

A provider's own topic and the booking topic are read by one consumer in no fixed order
across topics, so a provider's completion can be read before the booking that assigned the
referral to it (a replay, a lagging partition). Such an event is not refused at once: it is
parked (stored, with its origin, in the same transaction that marks it processed) and
applied, in its original order, as soon as the referral's details and booking are known
here. A parked event still not applicable after `park_timeout` is refused as "not assigned
to this provider": dead-lettered with its origin and counted in pathway_authz_denied_total.
An event for a referral known to be assigned to another provider is refused at once.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pathway_schemas.base import event_model
from pathway_schemas.envelope import Envelope, to_record
from pathway_schemas.events import (
    ProviderExaminationAbandoned,
    ProviderExaminationCompleted,
    ProviderPatientArrived,
    ProviderReportAddended,
    ProviderReportDelayed,
    ProviderReportIssued,
)
from services.common.app import Runtime
from services.common.errors import Denied, Invalid, PathwayError
from services.common.messaging import OUTAGE_ERRORS, Delivery
from services.common.store import Outcome, Tx
from services.reporting import service
from services.reporting.commands import (
    AddendumContent,
    Applied,
    ReportContent,
    Reporting,
    addendum_id_from_provider,
    report_id_from_provider,
)
from services.reporting.metrics import ReportingMetrics
from services.reporting.repository import Document, ReportingRepository
from services.reporting.service import Referral

log = logging.getLogger("pathway.reporting.intake")

PROVIDER_EVENTS = (
    ProviderPatientArrived,
    ProviderExaminationCompleted,
    ProviderExaminationAbandoned,
    ProviderReportIssued,
    ProviderReportAddended,
    ProviderReportDelayed,
)
ProviderEvent = (
    ProviderPatientArrived
    | ProviderExaminationCompleted
    | ProviderExaminationAbandoned
    | ProviderReportIssued
    | ProviderReportAddended
    | ProviderReportDelayed
)

SWEEP_BATCH = 200


class _ParkedFirst(Exception):
    """Earlier events of this referral are parked: apply them first, in order."""


class _ClaimedForRefusal(Exception):
    """The sweep is refusing this parked event: it must not be applied."""


class _StillWaiting(Exception):
    """A parked event is still not applicable: abort without marking it processed."""


class ProviderIntake:
    def __init__(
        self,
        runtime: Runtime,
        repository: ReportingRepository,
        reporting: Reporting,
        metrics: ReportingMetrics,
        park_timeout: timedelta,
        claim_lease: timedelta = timedelta(seconds=60),
    ) -> None:
        self.runtime = runtime
        self.repository = repository
        self.reporting = reporting
        self.metrics = metrics
        self.park_timeout = park_timeout
        self.claim_lease = claim_lease
        # Names this replica's claims: its sweep may take its own claim again at once.
        self.claimant = uuid.uuid4().hex

    async def receive(self, event: ProviderEvent, delivery: Delivery) -> Outcome[Applied]:
        provider = delivery.provider
        if provider is None:
            raise Invalid("a provider event must come from the provider's own inbound topic")

        async def work(tx: Tx, *, parked_first: bool) -> Applied:
            referral = service.authorise_provider(
                await self.repository.referral(event.referral_id, tx), provider
            )
            if referral is None:
                await self.repository.park(tx, _parked_document(event, delivery, provider, tx))
                return Applied(changed=False)
            if parked_first and referral.has_parked:
                raise _ParkedFirst
            return await self.apply(tx, referral, event, provider)

        try:
            outcome = await self.runtime.commit(
                lambda tx: work(tx, parked_first=True), cause_id=delivery.event_id
            )
        except _ParkedFirst:
            await self.release_parked(event.referral_id)
            outcome = await self.runtime.commit(
                lambda tx: work(tx, parked_first=False), cause_id=delivery.event_id
            )
        self.observe(outcome)
        return outcome

    async def apply(
        self, tx: Tx, referral: Referral, event: ProviderEvent, provider: str
    ) -> Applied:
        reporting = self.reporting
        match event:
            case ProviderPatientArrived():
                return await reporting.arrive(tx, referral, event.site_id, event.occurred_at)
            case ProviderExaminationCompleted():
                return await reporting.complete(
                    tx, referral, event.site_id, event.study, event.performed_by, event.occurred_at
                )
            case ProviderExaminationAbandoned():
                return await reporting.abandon(tx, referral, event.reason, event.occurred_at)
            case ProviderReportIssued():
                content = ReportContent(
                    status=event.status,
                    text=event.text,
                    conclusion=event.conclusion,
                    finding_flag=event.finding_flag,
                    reported_by=event.reported_by,
                    key_images=event.key_images,
                    signed_at=event.occurred_at,
                )
                report_id = report_id_from_provider(referral.referral_id, provider, event.report_id)
                return await reporting.issue_report(
                    tx,
                    referral,
                    report_id,
                    content,
                    source="provider",
                    source_report_id=event.report_id,
                )
            case ProviderReportAddended():
                report_id = report_id_from_provider(referral.referral_id, provider, event.report_id)
                addendum = AddendumContent(
                    text=event.text, finding_flag=event.finding_flag, reported_by=event.reported_by
                )
                return await reporting.addend(
                    tx,
                    referral,
                    report_id,
                    addendum_id_from_provider(report_id, event.addendum_id),
                    addendum,
                    source="provider",
                    source_addendum_id=event.addendum_id,
                )
            case ProviderReportDelayed():
                return await reporting.delay(
                    tx, referral, event.reason, event.note, event.occurred_at
                )
        raise Invalid(f"{type(event).__name__} is not a provider event this service applies")

    def observe(self, outcome: Outcome[Any]) -> None:
        if (
            not outcome.duplicate
            and isinstance(outcome.value, Applied)
            and outcome.value.final is not None
        ):
            self.metrics.final_report(outcome.value.final)

    async def after_news(self, referral: Referral | None) -> None:
        """Called after news of a referral (details, booking): apply what was parked for it."""
        if referral is not None and referral.has_parked:
            await self.release_parked(referral.referral_id)

    async def release_parked(self, referral_id: str) -> None:
        """Apply a referral's parked events in their original order, up to the first still waiting."""
        known = await self.repository.referral(referral_id)
        if known is not None and not known.ready_for_provider and not known.cancelled:
            return  # still waiting: spare the sweep a transaction per parked referral
        for parked in await self.repository.parked_for(referral_id):
            event, delivery = _restore(parked)

            async def work(
                tx: Tx, parked: Document = parked, event: ProviderEvent = event
            ) -> Applied:
                referral = service.authorise_provider(
                    await self.repository.referral(referral_id, tx), parked["provider"]
                )
                if referral is None:
                    raise _StillWaiting
                if not await self.repository.take_parked(parked["_id"], tx):
                    raise _ClaimedForRefusal
                return await self.apply(tx, referral, event, parked["provider"])

            try:
                outcome = await self.runtime.commit(work, cause_id=f"unpark:{parked['_id']}")
            except _StillWaiting:
                break
            except _ClaimedForRefusal:
                continue
            except PathwayError as refused:
                await self.refuse(parked, event, delivery, refused, refused.reason)
                continue
            except OUTAGE_ERRORS:
                raise
            except Exception as error:
                # A parked event must never poison the booking event that released it.
                log.exception(
                    "parked provider event failed",
                    extra={"referral_id": referral_id, "event_type": event.event_type},
                )
                await self.refuse(parked, event, delivery, error, "failed")
                continue
            if outcome.duplicate:
                # Applied before a crash could delete it.
                await self.repository.delete_parked(parked["_id"])
            self.observe(outcome)
        await self.repository.clear_parked_flag(referral_id)

    async def sweep(self) -> None:
        """Apply parked events whose booking has arrived; refuse those that waited too long."""
        for referral_id in await self.repository.parked_referrals(SWEEP_BATCH):
            await self.release_parked(referral_id)
        expired = await self.repository.parked_before(
            self.runtime.clock.now() - self.park_timeout, SWEEP_BATCH
        )
        for parked in expired:
            event, delivery = _restore(parked)
            error = await self.claim_for_refusal(parked)
            if error is None:
                continue  # applicable after all (a release applies it), or another sweep's
            await self.refuse(parked, event, delivery, error, error.reason)
            await self.repository.clear_parked_flag(parked["referral_id"])
        self.metrics.parked.set(await self.repository.parked.estimated_document_count())

    async def claim_for_refusal(self, parked: Document) -> PathwayError | None:
        """In one transaction, check the referral once more and claim the event to refuse it.

        The claim stops a concurrent release from applying it (a refused event is never also
        applied) and another replica's sweep from refusing it too (never dead-lettered twice).
        A crash after the claim leaves it claimed: a sweep takes the claim over once it is
        older than the lease, and dead-letters it rather than losing it. The lease is in wall
        time, as it asks whether the claiming sweep is still alive, and a simulated clock
        may jump.
        """

        async def work(tx: Tx) -> PathwayError | None:
            error: PathwayError
            try:
                referral = service.authorise_provider(
                    await self.repository.referral(parked["referral_id"], tx), parked["provider"]
                )
            except PathwayError as refused:
                error = refused
            else:
                if referral is not None and not parked.get("refusing"):
                    return None
                error = Denied("no booking of the referral with this provider is known")
            wall = datetime.now(UTC)
            claimed = await self.repository.claim_for_refusal(
                parked["_id"], tx, by=self.claimant, at=wall, stale_before=wall - self.claim_lease
            )
            return error if claimed else None

        return (await self.runtime.commit(work)).value

    async def refuse(
        self,
        parked: Document,
        event: ProviderEvent,
        delivery: Delivery,
        error: BaseException,
        reason: str,
    ) -> None:
        """Dead-letter a parked event with its origin, as the consumer does for one refused at once."""
        envelope = delivery.envelope
        record = to_record(
            event,
            topic=delivery.topic,
            source=envelope.source,
            event_id=envelope.id,
            emitted_at=envelope.time,
            trace=envelope.trace,
        )
        if isinstance(error, Denied):
            self.runtime.metrics.authz_denied.labels(self.runtime.service, "kafka").inc()
        await self.runtime.consumer.dead_letter(
            delivery.topic,
            delivery.partition,
            delivery.offset,
            record.key,
            record.value,
            record.headers,
            envelope,
            error,
            reason,
            1,
        )
        await self.repository.delete_parked(parked["_id"])
        log.warning(
            "parked provider event refused",
            extra={
                "referral_id": event.referral_id,
                "event_type": event.event_type,
                "reason": reason,
            },
        )


def _parked_document(event: ProviderEvent, delivery: Delivery, provider: str, tx: Tx) -> Document:
    envelope = delivery.envelope
    return {
        "_id": delivery.event_id,
        "referral_id": event.referral_id,
        "provider": provider,
        "topic": delivery.topic,
        "partition": delivery.partition,
        "offset": delivery.offset,
        "event_type": event.event_type,
        "event": event.model_dump(mode="json"),
        "source": envelope.source,
        "emitted_at": envelope.time,
        "trace": dict(envelope.trace),
        "parked_at": tx.now,
    }


def _restore(parked: Document) -> tuple[ProviderEvent, Delivery]:
    event: Any = event_model(parked["event_type"]).model_validate(parked["event"])
    if not isinstance(event, PROVIDER_EVENTS):
        raise TypeError(f"parked event {parked['_id']} is not a provider event")
    envelope = Envelope(
        id=parked["_id"],
        source=parked["source"],
        type=parked["event_type"],
        time=parked["emitted_at"],
        subject=event.referral_id,
        occurredat=event.occurred_at,
        trace=parked.get("trace") or {},
    )
    delivery = Delivery(
        envelope=envelope,
        topic=parked["topic"],
        partition=parked["partition"],
        offset=parked["offset"],
    )
    return event, delivery
