"""What the scheduling service knows about one accepted referral."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pathway_schemas.events import Appointment, BookedBy
from pathway_schemas.values import Modality, Priority
from services.common.clock import LONDON
from services.scheduling.waits import Pause, target_deadline


class State(StrEnum):
    OFFERED = "offered"  # offers out: the patient chooses, or the deadline books the earliest
    BOOKED = "booked"
    UNBOOKED = "unbooked"  # the appointment was cancelled on request; a clerk books again
    WALK_IN = "walk_in"  # plain X-ray open access: the provider expects the patient
    ATTENDED = "attended"
    RETURNED = "returned"  # back to the referrer after repeated did-not-attend
    CANCELLED = "cancelled"  # the referral itself was cancelled


OPEN_STATES = frozenset({State.OFFERED, State.BOOKED, State.UNBOOKED, State.WALK_IN})


class WalkIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    provider_ods: str
    site_id: str
    valid_from: AwareDatetime
    valid_until: AwareDatetime


class Deferral(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: str
    available_from: str = Field(description="ISO date")
    requested_at: AwareDatetime
    excluded_seconds: float


class ReferralRecord(BaseModel):
    """One document in `referrals`; `version` guards against lost updates between replicas."""

    model_config = ConfigDict(extra="ignore")

    referral_id: str
    version: int = 0
    state: State
    priority: Priority
    modality: Modality
    examination_code: str
    nhs_number: str
    practice_ods: str
    protocol: str
    clinical_question: str
    received_at: AwareDatetime
    target_days: int
    pauses: list[tuple[AwareDatetime, AwareDatetime]] = Field(
        default_factory=list, description="Patient-elected delays, excluded from the wait"
    )
    available_from: AwareDatetime | None = None
    offers: list[Appointment] = Field(default_factory=list)
    choose_by: AwareDatetime | None = None
    appointment: Appointment | None = None
    booked_by: BookedBy | None = None
    within_target: bool | None = None
    provider_ods: str | None = Field(default=None, description="The provider assigned now or last")
    walk_in: WalkIn | None = None
    dna_count: int = 0
    deferrals: list[Deferral] = Field(default_factory=list)
    breach_recorded: bool = False
    ever_booked: bool = False
    # W3C trace context of the unit of work that set `due_at` (`due_trace_at`): the deadline
    # job continues that trace, so an automatic booking stays in the referral's trace.
    due_trace: dict[str, str] = Field(default_factory=dict)
    due_trace_at: AwareDatetime | None = None

    @property
    def pause(self) -> Pause:
        return Pause(intervals=tuple(self.pauses))

    @property
    def paused_seconds(self) -> float:
        return self.pause.seconds

    def set_pause(self, value: Pause) -> None:
        self.pauses = list(value.intervals)

    @property
    def target_deadline(self) -> datetime:
        return target_deadline(self.received_at, self.target_days, self.paused_seconds)

    @property
    def at_risk(self) -> bool:
        """Not booked with a way to meet the target, or booked beyond it.

        An offered referral whose earliest offer meets the target is on course (the default
        books it); one with no such offer, or whose appointment was cancelled and waits for a
        clerk, is at risk.
        """
        if self.state is State.UNBOOKED:
            return True
        if self.state is State.OFFERED:
            return not self.offers or self.offers[0].start > self.target_deadline
        return self.state is State.BOOKED and self.within_target is False

    @property
    def due_at(self) -> datetime | None:
        """When the background job must act: the choose-by deadline, or a walk-in's expiry."""
        if self.state is State.OFFERED:
            return self.choose_by
        if self.state is State.WALK_IN and self.walk_in is not None:
            return self.walk_in.valid_until
        return None

    def available_day(self) -> date | None:
        return self.available_from.astimezone(LONDON).date() if self.available_from else None

    def to_document(self) -> dict[str, Any]:
        document = self.model_dump(mode="python", exclude={"referral_id", "version"})
        # BSON wants plain strings for the enums.
        for name in ("state", "priority", "modality", "booked_by"):
            if document[name] is not None:
                document[name] = str(document[name].value)
        document["_id"] = self.referral_id
        document["at_risk"] = self.at_risk
        document["due_at"] = self.due_at
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ReferralRecord:
        return cls.model_validate({**document, "referral_id": document["_id"]})
