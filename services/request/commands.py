"""The request service's use cases: each is one unit of work through `runtime.commit`.

Shared by the HTTP API and the Kafka handlers, so that a referral submitted either way
meets the same validation, guidance and duplicate check. Events this service emits are
put on the referral's timeline in the same unit of work (read-your-writes for the caller);
when they come back through the service's own subscription, their event id is already
there and nothing changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from pathway_schemas.base import PathwayEvent, ReferralEvent
from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.envelope import from_record, validation_errors
from pathway_schemas.events import (
    CancellationReason,
    ReferralAmended,
    ReferralCancelled,
    ReferralDetails,
    ReferralQueryAnswered,
    ReferralRequestAccepted,
    ReferralRequestRejected,
    ReferralSubmitted,
)
from pathway_schemas.values import FieldError, GuidanceAdvice, Priority, new_referral_id
from services.common.app import Runtime
from services.common.errors import Invalid, NotFound, Rejected
from services.common.messaging import Delivery
from services.common.store import Outcome, Tx
from services.common.tracing import continued_trace, current_trace
from services.request import service
from services.request.guidance import GuidanceRules
from services.request.metrics import RequestMetrics
from services.request.registry import PracticeRegistry
from services.request.repository import (
    TRACE,
    Document,
    ReferralRepository,
    projection_fields,
    trace_context,
)
from services.request.timeline import ReferralState, TimelineEntry, append, project, to_millis

Channel = Literal["api", "kafka", "fhir"]
Command = Literal["cancel", "answer", "amend"]


@dataclass(frozen=True)
class Submission:
    referral: Document
    created: bool


M = TypeVar("M")


def contract(build: Callable[[], M]) -> M:
    """Build a contract model from API input; a mismatch is the caller's 422, never a 500."""
    try:
        return build()
    except ValidationError as error:
        raise Invalid(
            "the request does not meet the event contract", validation_errors(error)
        ) from None


class Referrals:
    def __init__(
        self,
        runtime: Runtime,
        repository: ReferralRepository,
        registry: PracticeRegistry,
        rules: GuidanceRules,
        metrics: RequestMetrics,
        *,
        duplicate_window_days: int,
    ) -> None:
        self.runtime = runtime
        self.repository = repository
        self.registry = registry
        self.rules = rules
        self.metrics = metrics
        self.duplicate_window_days = duplicate_window_days
        self.tracer = runtime.tracer_provider.get_tracer("pathway.request.command")

    # ------------------------------------------------------------------ advice and submission

    def advise(
        self, examination_code: str, clinical_question: str, priority: Priority
    ) -> GuidanceAdvice:
        return self.rules.advise(examination_code, clinical_question, priority)

    async def submit(
        self,
        details: ReferralDetails,
        *,
        key: str,
        channel: Channel,
        reply_to_request: bool = False,
    ) -> Submission:
        """Record a referral once per (practice, key); a repeat returns the first.

        Raises ReferralRefused (unknown practice or referrer) or IdempotencyConflict.
        """
        exam = CATALOGUE[details.examination_code]
        fingerprint = service.request_fingerprint(details)
        # A repeat answers with the first referral even if the registry changed since.
        first = await self.repository.by_idempotency_key(details.practice_ods, key)
        if first is not None:
            return self._repeat(first, fingerprint, details, channel)
        errors = self.registry.check(details.practice_ods, details.referrer_id)
        if errors:
            refusal = service.registry_refusal(errors)
            self.metrics.rejected(channel, refusal.cause, details.priority.value, exam.modality)
            raise refusal
        advice = self.advise(details.examination_code, details.clinical_question, details.priority)

        async def work(tx: Tx) -> Document:
            earlier = await self.repository.earlier_referrals(
                tx, details.nhs_number, details.examination_code
            )
            duplicate_of = service.duplicates_of(
                earlier, now=tx.now, window_days=self.duplicate_window_days
            )
            referral_id = new_referral_id()
            event = ReferralSubmitted(
                referral_id=referral_id,
                occurred_at=tx.now,
                **details.model_dump(),
                modality=exam.modality,
                ionising=exam.ionising,
                guidance=advice,
                duplicate_of=duplicate_of,
                channel=channel,
            )
            timeline = self._emit(tx, event, ())
            document: Document = {
                "_id": referral_id,
                **details.model_dump(mode="json"),
                "modality": exam.modality,
                "ionising": exam.ionising,
                "guidance": advice.model_dump(mode="json"),
                "duplicate_of": list(duplicate_of),
                "channel": channel,
                "idempotency_key": key,
                "request_fingerprint": fingerprint,
                "submitted_at": to_millis(tx.now),
                TRACE: trace_context(current_trace()),
                "updated_at": to_millis(tx.now),
                **projection_fields(timeline, project(timeline)),
            }
            await self.repository.insert(tx, document)
            if reply_to_request:
                tx.emit(self._accepted_reply(document, key, tx))
            return document

        outcome = await self.runtime.commit(work, cause_id=f"submit:{details.practice_ods}:{key}")
        if outcome.duplicate or outcome.value is None:
            # Raced with the same request: the other one recorded it.
            first = await self.repository.by_idempotency_key(details.practice_ods, key)
            if first is None:
                raise Rejected(
                    "a referral with this idempotency key is being recorded: retry shortly"
                )
            return self._repeat(first, fingerprint, details, channel)
        document = outcome.value
        self.metrics.received.labels(details.priority.value, exam.modality, "accepted").inc()
        self.metrics.guidance.labels(advice.outcome.value).inc()
        if document["duplicate_of"]:
            self.metrics.duplicates.labels(exam.modality).inc()
        return Submission(referral=document, created=True)

    def _repeat(
        self, first: Document, fingerprint: str, details: ReferralDetails, channel: Channel
    ) -> Submission:
        if first.get("request_fingerprint") != fingerprint:
            modality = CATALOGUE[details.examination_code].modality
            self.metrics.rejected(
                channel, service.IdempotencyConflict.cause, details.priority.value, modality
            )
            field = "header:Idempotency-Key" if channel == "api" else "request_id"
            raise service.IdempotencyConflict(
                "this idempotency key was already used by your practice for a different referral",
                [
                    FieldError(
                        field=field, message="already used for a different referral; use a new key"
                    )
                ],
            )
        return Submission(referral=first, created=False)

    # ------------------------------------------------------------------ Kafka intake replies

    def _accepted_reply(
        self, document: Document, request_id: str, tx: Tx
    ) -> ReferralRequestAccepted:
        return ReferralRequestAccepted(
            referral_id=document["_id"],
            occurred_at=tx.now,
            request_id=request_id,
            guidance=GuidanceAdvice.model_validate(document["guidance"]),
            duplicate_of=tuple(document["duplicate_of"]),
        )

    async def reply_accepted(
        self, document: Document, request_id: str, *, cause_id: str
    ) -> Outcome[None]:
        """Tell a sender who asked again which referral its request became."""

        async def work(tx: Tx) -> None:
            tx.emit(self._accepted_reply(document, request_id, tx))

        return await self.runtime.commit(work, cause_id=f"reply:{cause_id}")

    async def reply_rejected(
        self, request_id: str, errors: tuple[FieldError, ...], *, cause_id: str | None
    ) -> Outcome[None]:
        """Tell the sender why its request was refused (no cause id: a record without an id)."""

        async def work(tx: Tx) -> None:
            tx.emit(
                ReferralRequestRejected(occurred_at=tx.now, request_id=request_id, errors=errors)
            )

        return await self.runtime.commit(work, cause_id=f"reject:{cause_id}" if cause_id else None)

    # ------------------------------------------------------------------ the timeline

    async def record(self, event: ReferralEvent, delivery: Delivery) -> Outcome[bool]:
        """Put any pathway event on its referral's timeline, once, and derive the state again.

        Not a transaction, and no processed mark: the timeline is one document that already
        knows its event ids (a repeat finds its entry and changes nothing), and it is written
        only if nobody wrote it since it was read (its revision), else read again. One read
        and one write per event instead of four round trips, for the busiest consumer.
        """
        while True:
            now = self.runtime.clock.now()
            document = await self.repository.get(event.referral_id)
            timeline, added = append(
                _timeline(document), TimelineEntry.of(event, delivery.envelope, now)
            )
            if not added:
                return Outcome(value=False, duplicate=True, records=())
            if await self.repository.save_timeline(
                event.referral_id, document, timeline, project(timeline), now
            ):
                return Outcome(value=True, duplicate=False, records=())

    def _emit(
        self, tx: Tx, event: PathwayEvent, timeline: tuple[TimelineEntry, ...]
    ) -> tuple[TimelineEntry, ...]:
        """Emit one of our events and put it on the timeline exactly as a consumer would see it."""
        tx.emit(event)
        received = from_record(tx.records[-1].headers, tx.records[-1].value)
        entries, _ = append(timeline, TimelineEntry.of(received.event, received.envelope, tx.now))
        return entries

    # ------------------------------------------------------------------ commands on one referral

    async def readable(self, referral_id: str, may: Callable[[Document], bool]) -> Document:
        document = await self.repository.get(referral_id)
        if document is None or "practice_ods" not in document or not may(document):
            raise NotFound(f"no referral {referral_id} that you may see")
        return document

    async def cancel(
        self, referral_id: str, *, reason: CancellationReason, cancelled_by: str, note: str
    ) -> Document:
        async def work(tx: Tx) -> Document:
            document = await self._current(tx, referral_id)
            service.check_cancellable(ReferralState(document["state"]))
            event = contract(
                lambda: ReferralCancelled(
                    referral_id=referral_id,
                    occurred_at=tx.now,
                    reason=reason,
                    cancelled_by=cancelled_by,
                    note=note,
                )
            )
            return await self._save_with(tx, document, event, {})

        document, _ = await self._run(
            referral_id,
            work,
            f"cancel:{referral_id}",
            command="cancel",
            trace=await self.repository.trace_of(referral_id),
        )
        return document

    async def answer(
        self, referral_id: str, *, query_id: str, answer: str, answered_by: str, practice: str
    ) -> Document:
        refused = self.registry.check(practice, answered_by, referrer_field="answered_by")
        if refused:
            raise service.registry_refusal(refused)

        async def work(tx: Tx) -> Document:
            document = await self._current(tx, referral_id)
            service.check_answerable(
                ReferralState(document["state"]), document.get("open_query_id"), query_id
            )
            event = contract(
                lambda: ReferralQueryAnswered(
                    referral_id=referral_id,
                    occurred_at=tx.now,
                    query_id=query_id,
                    answer=answer,
                    answered_by=answered_by,
                )
            )
            return await self._save_with(tx, document, event, {})

        document, _ = await self._run(
            referral_id,
            work,
            f"answer:{referral_id}:{query_id}",
            command="answer",
            trace=await self.repository.trace_of(referral_id),
        )
        return document

    async def amend(
        self, referral_id: str, changes: dict[str, Any], *, amended_by: str, note: str
    ) -> Document:
        """Change a returned referral; guidance and the duplicate check run again."""
        current = await self.repository.get(referral_id)
        if current is None:
            raise NotFound(f"no referral {referral_id} that you may see")
        service.check_amendable(ReferralState(current["state"]))
        return_id = current.get("return_event_id")
        fields = ReferralDetails.model_fields
        details: ReferralDetails = contract(
            lambda: ReferralDetails.model_validate(
                {**{name: current[name] for name in fields}, **changes}
            )
        )
        refused = self.registry.check(details.practice_ods, details.referrer_id)
        refused += self.registry.check(
            details.practice_ods, amended_by, referrer_field="amended_by"
        )
        if refused:
            raise service.registry_refusal(refused)
        exam = CATALOGUE[details.examination_code]
        advice = self.advise(details.examination_code, details.clinical_question, details.priority)

        async def work(tx: Tx) -> Document:
            document = await self._current(tx, referral_id)
            service.check_amendable(ReferralState(document["state"]))
            if document.get("return_event_id") != return_id:
                raise Rejected(
                    "the referral was returned again while you amended it: read it and retry"
                )
            earlier = await self.repository.earlier_referrals(
                tx, details.nhs_number, details.examination_code
            )
            duplicate_of = service.duplicates_of(
                earlier, now=tx.now, window_days=self.duplicate_window_days, exclude=referral_id
            )
            event = contract(
                lambda: ReferralAmended(
                    referral_id=referral_id,
                    occurred_at=tx.now,
                    **details.model_dump(),
                    modality=exam.modality,
                    ionising=exam.ionising,
                    guidance=advice,
                    duplicate_of=duplicate_of,
                    amended_by=amended_by,
                    note=note,
                )
            )
            fields_changed = {
                **details.model_dump(mode="json"),
                "modality": exam.modality,
                "ionising": exam.ionising,
                "guidance": advice.model_dump(mode="json"),
                "duplicate_of": list(duplicate_of),
            }
            return await self._save_with(tx, document, event, fields_changed)

        document, applied = await self._run(
            referral_id,
            work,
            f"amend:{referral_id}:{return_id}",
            command="amend",
            trace=trace_context(current.get(TRACE)),
        )
        if applied:
            self.metrics.guidance.labels(advice.outcome.value).inc()
            if document.get("duplicate_of"):
                self.metrics.duplicates.labels(exam.modality).inc()
        return document

    async def _current(self, tx: Tx, referral_id: str) -> Document:
        document = await self.repository.get(referral_id, tx.session)
        if document is None or "practice_ods" not in document:
            raise NotFound(f"no referral {referral_id} that you may see")
        return document

    async def _save_with(
        self, tx: Tx, document: Document, event: PathwayEvent, fields: Document
    ) -> Document:
        timeline = self._emit(tx, event, _timeline(document))
        updated = {
            **fields,
            **projection_fields(timeline, project(timeline)),
            "updated_at": to_millis(tx.now),
        }
        await self.repository.update(tx, document["_id"], updated)
        return {**document, **updated}

    async def _run(
        self,
        referral_id: str,
        work: Callable[[Tx], Awaitable[Document]],
        cause_id: str,
        *,
        command: Command,
        trace: Mapping[str, str],
    ) -> tuple[Document, bool]:
        """The referral after the command, and whether this call applied it.

        The command, and the event it emits, join the trace of the referral's submission (a
        practice system's later call usually starts a trace of its own, which is linked);
        a referral kept without one continues the call's trace.
        """
        with continued_trace(
            self.tracer,
            "referral command",
            trace,
            attributes={"job.kind": "referral_command", "referral.command": command},
        ):
            outcome = await self.runtime.commit(work, cause_id=cause_id)
        if outcome.duplicate or outcome.value is None:
            # The same command was applied before: answer with the referral as it is now.
            document = await self.repository.get(referral_id)
            if document is None:
                raise NotFound(f"no referral {referral_id} that you may see")
            return document, False
        return outcome.value, True


def _timeline(document: Document | None) -> tuple[TimelineEntry, ...]:
    if document is None:
        return ()
    return tuple(TimelineEntry.from_document(d) for d in document.get("timeline", ()))


def refusal_errors(error: Invalid | Rejected) -> tuple[FieldError, ...]:
    return error.errors or (FieldError(field="(request)", message=error.message),)
