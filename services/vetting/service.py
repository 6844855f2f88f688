"""The vetting rules: open access, the worklist item's life, and the clinician's decisions.

Plain functions over plain models: no FastStream, no driver. Each rule takes the stored
worklist item (or None) and what happened, and returns a `Step`: the item to store and the
events to emit, or None when there is nothing to do (a repeat).

Life of an item:
    submitted ─► triage ─┬─► accepted (open access: automatic)
                         └─► waiting ─┬─► accepted (clinician)
                                      ├─► returned ──(amended)──► triage again
                                      └─► queried ──(answered)──► waiting
    any state ──(cancelled)──► cancelled (off the worklist; decisions get 409)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pathway_schemas.base import PathwayEvent
from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.events import (
    ReferralAmended,
    ReferralCancelled,
    ReferralQueryAnswered,
    ReferralSubmitted,
    ReturnReason,
    VettingAccepted,
    VettingQueried,
    VettingQueued,
    VettingReturned,
)
from pathway_schemas.values import (
    CareSetting,
    FieldError,
    FreeText,
    GuidanceAdvice,
    GuidanceOutcome,
    Modality,
    PersonId,
    Priority,
)
from services.common.errors import Invalid, Rejected

# The name the service writes in the audit trail for what it did itself (queueing).
SERVICE_ACTOR = "vetting-service"

RANK: dict[Priority, int] = {Priority.URGENT: 0, Priority.ROUTINE: 1}


# --------------------------------------------------------------------------- policy


class OpenAccessPolicy(BaseModel):
    """Which plain X-ray examinations pass without a person (local policy; see config/vetting.json)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    examination_codes: tuple[str, ...] = ()
    # Not indicated is never allowed (checked below). Specialist-only and more-information-needed
    # stay out by default: the first says a GP should not order it directly, the second that the
    # request is incomplete; both need a clinician who can query or return.
    guidance_outcomes: tuple[GuidanceOutcome, ...] = (
        GuidanceOutcome.INDICATED,
        GuidanceOutcome.NO_RULE,
    )
    protocol: Annotated[str, Field(min_length=1, max_length=500)] = (
        "Standard projections (open access)"
    )
    decided_by: PersonId = "open-access-rule"
    # IR(ME)R allows justification under written guidelines issued by a practitioner: name them here.
    justified_under_guidelines_of: PersonId | None = None
    walk_in_allowed: bool = True

    @field_validator("examination_codes")
    @classmethod
    def _plain_xray_from_catalogue(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        normalised = tuple(code.strip().upper() for code in codes)
        for code in normalised:
            entry = CATALOGUE.get(code)
            if entry is None:
                raise ValueError(f"{code!r} is not in the examination catalogue")
            if entry.modality != Modality.XR.value:
                raise ValueError(
                    f"{code!r} is {entry.modality}, and open access is for plain X-ray (XR) only"
                )
        return normalised

    @field_validator("guidance_outcomes")
    @classmethod
    def _never_not_indicated(
        cls, outcomes: tuple[GuidanceOutcome, ...]
    ) -> tuple[GuidanceOutcome, ...]:
        if GuidanceOutcome.NOT_INDICATED in outcomes:
            raise ValueError(
                "open access may never accept a referral the guidance says is not indicated"
            )
        return outcomes

    def lists(self, examination_code: str) -> bool:
        return self.enabled and examination_code in self.examination_codes


class VettingPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    note: str = Field(default="", alias="_note")
    open_access: OpenAccessPolicy = OpenAccessPolicy()


def load_policy(path: Path) -> VettingPolicy:
    """Read the operator's policy once at start; a bad file stops the service with a reason."""
    if not path.exists():
        raise FileNotFoundError(
            f"vetting policy {path} is missing: copy config/vetting.json or set VETTING_CONFIG_DIR"
        )
    try:
        return VettingPolicy.model_validate(json.loads(path.read_text("utf-8")))
    except json.JSONDecodeError as error:
        raise ValueError(f"vetting policy {path} is not JSON: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise ValueError(f"vetting policy {path} is not valid: {problems}") from None


# --------------------------------------------------------------------------- the worklist item


class State(StrEnum):
    WAITING = "waiting"  # on the worklist, for a clinician
    QUERIED = "queried"  # off the worklist until the referrer answers
    RETURNED = "returned"  # off the worklist until the referrer amends
    ACCEPTED = "accepted"
    CANCELLED = "cancelled"


class DecisionOutcome(StrEnum):
    ACCEPTED = "accepted"
    RETURNED = "returned"
    QUERIED = "queried"


class HistoryKind(StrEnum):
    SUBMITTED = "submitted"
    AMENDED = "amended"
    QUEUED = "queued"
    ACCEPTED = "accepted"
    RETURNED = "returned"
    QUERIED = "queried"
    ANSWERED = "answered"
    CANCELLED = "cancelled"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ReferralFacts(_Model):
    """The referral as the referrer last sent it."""

    nhs_number: str
    practice_ods: str
    referrer_id: str
    examination_code: str
    modality: Modality
    ionising: bool
    clinical_question: str
    care_setting: CareSetting
    priority: Priority
    guidance: GuidanceAdvice
    duplicate_of: tuple[str, ...] = ()

    @classmethod
    def of(cls, event: ReferralSubmitted | ReferralAmended) -> ReferralFacts:
        return cls(
            nhs_number=event.nhs_number,
            practice_ods=event.practice_ods,
            referrer_id=event.referrer_id,
            examination_code=event.examination_code,
            modality=event.modality,
            ionising=event.ionising,
            clinical_question=event.clinical_question,
            care_setting=event.care_setting,
            priority=event.priority,
            guidance=event.guidance,
            duplicate_of=tuple(event.duplicate_of),
        )


class Decision(_Model):
    outcome: DecisionOutcome
    decided_by: str
    decided_at: datetime
    automatic: bool = False
    protocol: str | None = None
    priority: Priority | None = None
    justified_by: str | None = None
    walk_in_allowed: bool = False
    reason: ReturnReason | None = None
    advice: str | None = None
    query_id: str | None = None
    question: str | None = None
    idempotency_key: str | None = None


class HistoryEntry(_Model):
    """One line of the audit trail: who, when, what."""

    kind: HistoryKind
    at: datetime
    by: str
    note: str = ""
    query_id: str | None = None
    decision: Decision | None = None


class WorklistItem(_Model):
    referral_id: str
    state: State
    referral: ReferralFacts
    received_at: datetime = Field(description="The original submission: the wait clock starts here")
    entered_at: datetime = Field(
        description="When it last entered vetting: worklist age and vetting time"
    )
    rank: int = Field(description="Sort rank of the priority: urgent first")
    why: str = ""
    open_query_id: str | None = None
    decision: Decision | None = None
    history: tuple[HistoryEntry, ...] = ()
    # W3C trace context of the event that brought the referral to vetting: a clinician's
    # decision, made later in an HTTP call of its own, continues the referral's trace.
    trace: dict[str, str] = Field(default_factory=dict)
    version: int = 0

    @property
    def on_worklist(self) -> bool:
        return self.state is State.WAITING

    @property
    def seen_by_clinician(self) -> bool:
        return any(e.kind in (HistoryKind.RETURNED, HistoryKind.QUERIED) for e in self.history)

    def decision_under_key(self, key: str) -> Decision | None:
        for entry in self.history:
            if entry.decision is not None and entry.decision.idempotency_key == key:
                return entry.decision
        return None

    def _with(self, *entries: HistoryEntry, **changes: object) -> WorklistItem:
        return self.model_copy(update={**changes, "history": (*self.history, *entries)})


@dataclass(frozen=True)
class Step:
    """What a rule decided: the item to store, the events to emit, and any decision made."""

    item: WorklistItem
    events: tuple[PathwayEvent, ...] = ()
    decision: Decision | None = None


def worklist_order(item: WorklistItem) -> tuple[int, datetime, str]:
    """Urgent first, then the longest waiting; the referral id makes the order total."""
    return (item.rank, item.entered_at, item.referral_id)


def age_seconds(since: datetime, now: datetime) -> float:
    """Elapsed time between two instants (so a daylight-saving change adds or loses nothing)."""
    return max(0.0, (now - since).total_seconds())


# --------------------------------------------------------------------------- triage


@dataclass(frozen=True)
class Triage:
    automatic: bool
    why: str


def triage(
    facts: ReferralFacts, policy: OpenAccessPolicy, *, seen_by_clinician: bool = False
) -> Triage:
    """Open access, or why a person must vet it (every reason that applies, for the clinician)."""
    reasons: list[str] = []
    if not policy.enabled:
        reasons.append("open access is off")
    elif facts.examination_code not in policy.examination_codes:
        reasons.append("not an open-access examination")
    if facts.guidance.outcome not in policy.guidance_outcomes:
        reasons.append(f"guidance: {facts.guidance.outcome.value.replace('_', ' ')}")
    if facts.duplicate_of:
        reasons.append("possible duplicate of an earlier referral")
    if seen_by_clinician:
        reasons.append("returned or queried before: a clinician vets it again")
    if reasons:
        return Triage(automatic=False, why="; ".join(reasons))
    return Triage(automatic=True, why="open access")


def enter_vetting(
    existing: WorklistItem | None,
    event: ReferralSubmitted | ReferralAmended,
    policy: OpenAccessPolicy,
    now: datetime,
) -> Step | None:
    """A submitted or amended referral: triage it, then accept it or put it on the worklist."""
    facts = ReferralFacts.of(event)
    if isinstance(event, ReferralSubmitted):
        if existing is not None:
            return None  # the same referral again under another event id: already here
        entry = HistoryEntry(kind=HistoryKind.SUBMITTED, at=event.occurred_at, by=event.referrer_id)
        item = _new_item(event, facts, entry)
        return _triaged(item, triage(facts, policy), policy, now)

    amended = HistoryEntry(
        kind=HistoryKind.AMENDED, at=event.occurred_at, by=event.amended_by, note=event.note
    )
    if existing is None:
        # Its submission never reached us (replayed from a dead letter, say): keep it, and
        # let a person look, since its history is unknown here.
        item = _new_item(event, facts, amended)
        return _queued(item, "amended referral whose submission vetting has not seen", now)
    if existing.state in (State.ACCEPTED, State.CANCELLED):
        raise Rejected(f"an amendment cannot reopen a referral that is {existing.state.value}")
    item = existing._with(
        amended,
        referral=facts,
        rank=RANK[facts.priority],
        # Still waiting: keep its place in the queue; coming back: it enters now.
        entered_at=existing.entered_at if existing.on_worklist else event.occurred_at,
        open_query_id=None,
        decision=None,
    )
    verdict = triage(facts, policy, seen_by_clinician=existing.seen_by_clinician)
    if not verdict.automatic and existing.on_worklist:
        return Step(item=item.model_copy(update={"why": verdict.why}))
    return _triaged(item, verdict, policy, now)


def _new_item(
    event: ReferralSubmitted | ReferralAmended, facts: ReferralFacts, entry: HistoryEntry
) -> WorklistItem:
    return WorklistItem(
        referral_id=event.referral_id,
        state=State.WAITING,
        referral=facts,
        received_at=event.occurred_at,
        entered_at=event.occurred_at,
        rank=RANK[facts.priority],
        history=(entry,),
    )


def _triaged(item: WorklistItem, verdict: Triage, policy: OpenAccessPolicy, now: datetime) -> Step:
    if not verdict.automatic:
        return _queued(item, verdict.why, now)
    decision = Decision(
        outcome=DecisionOutcome.ACCEPTED,
        decided_by=policy.decided_by,
        decided_at=now,
        automatic=True,
        protocol=policy.protocol,
        priority=item.referral.priority,
        justified_by=policy.justified_under_guidelines_of,
        walk_in_allowed=policy.walk_in_allowed,
    )
    return _accepted(item, decision, now)


def _queued(item: WorklistItem, why: str, now: datetime) -> Step:
    queued = item._with(
        HistoryEntry(kind=HistoryKind.QUEUED, at=now, by=SERVICE_ACTOR, note=why),
        state=State.WAITING,
        why=why,
    )
    event = VettingQueued(
        referral_id=item.referral_id,
        occurred_at=now,
        priority=item.referral.priority,
        modality=item.referral.modality,
        why=why[:500],
    )
    return Step(item=queued, events=(event,))


def answer_query(
    existing: WorklistItem | None, event: ReferralQueryAnswered, now: datetime
) -> Step | None:
    """The referrer answered: back onto the worklist, with the question and answer in its history."""
    if existing is None:
        raise Rejected("an answer arrived for a referral that vetting does not hold")
    if any(
        e.kind is HistoryKind.ANSWERED and e.query_id == event.query_id for e in existing.history
    ):
        return None  # this query was answered already
    if existing.state is not State.QUERIED or existing.open_query_id != event.query_id:
        raise Rejected(
            f"no open query {event.query_id} on a referral that is {existing.state.value}"
        )
    answered = existing._with(
        HistoryEntry(
            kind=HistoryKind.ANSWERED,
            at=event.occurred_at,
            by=event.answered_by,
            note=event.answer,
            query_id=event.query_id,
        ),
        entered_at=event.occurred_at,
        open_query_id=None,
        decision=None,
    )
    # A clinician asked, so a clinician decides: no open access after a query.
    return _queued(answered, "the referrer answered a query", now)


def cancel(existing: WorklistItem | None, event: ReferralCancelled) -> Step | None:
    """The referrer cancelled: the item leaves the worklist and takes no more decisions."""
    if existing is None or existing.state is State.CANCELLED:
        return None
    note = event.reason.value + (f": {event.note}" if event.note else "")
    entry = HistoryEntry(
        kind=HistoryKind.CANCELLED, at=event.occurred_at, by=event.cancelled_by, note=note
    )
    return Step(item=existing._with(entry, state=State.CANCELLED, open_query_id=None))


# --------------------------------------------------------------------------- decisions


class AcceptCommand(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    protocol: Annotated[str, Field(min_length=1, max_length=500)]
    priority: Priority | None = Field(
        default=None, description="Confirmed or changed priority; empty confirms the referrer's"
    )
    justified_by: PersonId | None = Field(
        default=None,
        description="IR(ME)R justifying practitioner: required for ionising examinations",
    )
    walk_in_allowed: bool | None = Field(
        default=None,
        description="Plain X-ray only; empty: as the open-access policy says for this examination",
    )


class ReturnCommand(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    reason: ReturnReason
    advice: FreeText = Field(description="Advice for the referrer")


class QueryCommand(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    question: FreeText


class NotWaiting(Rejected):
    """A decision on an item that is no longer waiting: says what happened to it instead."""

    def __init__(self, item: WorklistItem) -> None:
        verb = "was cancelled" if item.state is State.CANCELLED else f"is {item.state.value}"
        super().__init__(f"this referral {verb}; it takes no decision now")
        self.state = item.state
        self.decision = item.decision


def _must_be_waiting(item: WorklistItem) -> None:
    if not item.on_worklist:
        raise NotWaiting(item)


def accept(
    item: WorklistItem,
    command: AcceptCommand,
    *,
    by: str,
    now: datetime,
    policy: OpenAccessPolicy,
    idempotency_key: str | None = None,
) -> Step:
    _must_be_waiting(item)
    facts = item.referral
    errors = []
    if facts.ionising and command.justified_by is None:
        errors.append(
            FieldError(
                field="justified_by",
                message="an ionising examination needs a justifying practitioner (IR(ME)R): name them",
            )
        )
    if command.walk_in_allowed and facts.modality is not Modality.XR:
        errors.append(
            FieldError(field="walk_in_allowed", message="walk-in is for plain X-ray (XR) only")
        )
    if errors:
        raise Invalid("the acceptance is incomplete", errors)
    walk_in = command.walk_in_allowed
    if walk_in is None:
        walk_in = policy.walk_in_allowed and policy.lists(facts.examination_code)
    decision = Decision(
        outcome=DecisionOutcome.ACCEPTED,
        decided_by=by,
        decided_at=now,
        protocol=command.protocol,
        priority=command.priority or facts.priority,
        justified_by=command.justified_by,
        walk_in_allowed=walk_in,
        idempotency_key=idempotency_key,
    )
    return _accepted(item, decision, now)


def _accepted(item: WorklistItem, decision: Decision, now: datetime) -> Step:
    facts = item.referral
    assert decision.protocol is not None
    assert decision.priority is not None
    event = VettingAccepted(
        referral_id=item.referral_id,
        occurred_at=now,
        nhs_number=facts.nhs_number,
        practice_ods=facts.practice_ods,
        referrer_id=facts.referrer_id,
        examination_code=facts.examination_code,
        modality=facts.modality,
        ionising=facts.ionising,
        clinical_question=facts.clinical_question,
        care_setting=facts.care_setting,
        priority=decision.priority,
        protocol=decision.protocol,
        referral_received_at=item.received_at,
        justified_by=decision.justified_by,
        decided_by=decision.decided_by,
        automatic=decision.automatic,
        walk_in_allowed=decision.walk_in_allowed,
    )
    entry = HistoryEntry(
        kind=HistoryKind.ACCEPTED, at=now, by=decision.decided_by, decision=decision
    )
    return Step(
        item=item._with(entry, state=State.ACCEPTED, decision=decision),
        events=(event,),
        decision=decision,
    )


def return_to_referrer(
    item: WorklistItem,
    command: ReturnCommand,
    *,
    by: str,
    now: datetime,
    idempotency_key: str | None = None,
) -> Step:
    _must_be_waiting(item)
    decision = Decision(
        outcome=DecisionOutcome.RETURNED,
        decided_by=by,
        decided_at=now,
        priority=item.referral.priority,
        reason=command.reason,
        advice=command.advice,
        idempotency_key=idempotency_key,
    )
    event = VettingReturned(
        referral_id=item.referral_id,
        occurred_at=now,
        reason=command.reason,
        advice=command.advice,
        decided_by=by,
    )
    entry = HistoryEntry(
        kind=HistoryKind.RETURNED, at=now, by=by, note=command.advice, decision=decision
    )
    return Step(
        item=item._with(entry, state=State.RETURNED, decision=decision),
        events=(event,),
        decision=decision,
    )


def query_referrer(
    item: WorklistItem,
    command: QueryCommand,
    *,
    by: str,
    now: datetime,
    query_id: str,
    idempotency_key: str | None = None,
) -> Step:
    _must_be_waiting(item)
    decision = Decision(
        outcome=DecisionOutcome.QUERIED,
        decided_by=by,
        decided_at=now,
        priority=item.referral.priority,
        query_id=query_id,
        question=command.question,
        idempotency_key=idempotency_key,
    )
    event = VettingQueried(
        referral_id=item.referral_id,
        occurred_at=now,
        query_id=query_id,
        question=command.question,
        decided_by=by,
    )
    entry = HistoryEntry(
        kind=HistoryKind.QUERIED,
        at=now,
        by=by,
        note=command.question,
        query_id=query_id,
        decision=decision,
    )
    queried = item._with(entry, state=State.QUERIED, decision=decision, open_query_id=query_id)
    return Step(item=queried, events=(event,), decision=decision)
