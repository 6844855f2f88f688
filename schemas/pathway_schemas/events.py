"""One frozen model per event of the pathway, family by family.

Each family has its own topic (see `topics`), keyed by referral id. A family's topic
carries a discriminated union: the CloudEvents `type` header says which model to read.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from pathway_schemas import topics
from pathway_schemas.base import PathwayEvent, ReferralEvent
from pathway_schemas.values import (
    CareSetting,
    ExaminationCode,
    FieldError,
    FindingFlag,
    FreeText,
    GuidanceAdvice,
    Modality,
    NhsNumber,
    OdsCode,
    PersonId,
    Priority,
    ReferralId,
    ShortText,
    StudyReference,
)

_V = "uk.nhs.imaging."


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)


# --------------------------------------------------------------------------- referral


class ReferralDetails(_Value):
    """What a referrer asks for. Shared by the intake request, submission and amendment."""

    nhs_number: NhsNumber
    practice_ods: OdsCode
    referrer_id: PersonId
    examination_code: ExaminationCode
    clinical_question: Annotated[str, Field(min_length=3, max_length=4000)]
    priority: Priority
    care_setting: CareSetting = CareSetting.GP


class ReferralSubmitted(ReferralEvent, ReferralDetails):
    """A referral was received and recorded (the wait-to-appointment clock starts here)."""

    event_type = _V + "referral.submitted.v1"
    topic = topics.REFERRAL

    modality: Modality
    ionising: bool
    guidance: GuidanceAdvice
    duplicate_of: tuple[ReferralId, ...] = Field(
        default=(),
        description="Earlier referrals for the same patient and examination (flag, not block)",
    )
    channel: Literal["api", "kafka", "fhir"] = "api"


class ReferralAmended(ReferralEvent, ReferralDetails):
    """The referrer changed a returned referral; it re-enters vetting with its history."""

    event_type = _V + "referral.amended.v1"
    topic = topics.REFERRAL

    modality: Modality
    ionising: bool
    guidance: GuidanceAdvice
    duplicate_of: tuple[ReferralId, ...] = ()
    amended_by: PersonId
    note: str = Field(default="", max_length=2000)


class ReferralQueryAnswered(ReferralEvent):
    """The referrer answered a vetting query; the referral re-enters vetting."""

    event_type = _V + "referral.query_answered.v1"
    topic = topics.REFERRAL

    query_id: Annotated[str, Field(min_length=1, max_length=64)]
    answer: FreeText
    answered_by: PersonId


class CancellationReason(StrEnum):
    NO_LONGER_NEEDED = "no_longer_needed"
    PATIENT_REQUEST = "patient_request"
    DUPLICATE = "duplicate"
    ENTERED_IN_ERROR = "entered_in_error"
    OTHER = "other"


class ReferralCancelled(ReferralEvent):
    """The referrer cancelled before the examination."""

    event_type = _V + "referral.cancelled.v1"
    topic = topics.REFERRAL

    reason: CancellationReason
    cancelled_by: PersonId
    note: str = Field(default="", max_length=2000)


class ReferralRequested(PathwayEvent, ReferralDetails):
    """What a practice system publishes on the intake topic; the request service validates it.

    `request_id` is the idempotency key: the same id always yields the same referral.
    """

    event_type = _V + "referral.requested.v1"
    topic = topics.REFERRAL_INTAKE

    request_id: Annotated[str, Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]

    @property
    def subject(self) -> str:
        return self.request_id


class ReferralRequestRejected(PathwayEvent):
    """Answer on the intake reply topic: why a published request was not accepted."""

    event_type = _V + "referral.request_rejected.v1"
    topic = topics.REFERRAL_INTAKE_REPLIES

    request_id: str = Field(max_length=128)
    errors: tuple[FieldError, ...]

    @property
    def subject(self) -> str:
        return self.request_id


class ReferralRequestAccepted(ReferralEvent):
    """Answer on the intake reply topic: the request became this referral."""

    event_type = _V + "referral.request_accepted.v1"
    topic = topics.REFERRAL_INTAKE_REPLIES

    request_id: str = Field(max_length=128)
    guidance: GuidanceAdvice
    duplicate_of: tuple[ReferralId, ...] = ()


# --------------------------------------------------------------------------- vetting


class VettingQueued(ReferralEvent):
    """The referral waits on the vetting worklist for a clinician."""

    event_type = _V + "vetting.queued.v1"
    topic = topics.VETTING

    priority: Priority
    modality: Modality
    why: ShortText = Field(
        description="Why a person must vet it (not open access, guidance, duplicate)"
    )


class VettingAccepted(ReferralEvent):
    """Justified (IR(ME)R) and accepted, with protocol and confirmed priority.

    Carries what scheduling and the provider need, so that no service reads another's store.
    """

    event_type = _V + "vetting.accepted.v1"
    topic = topics.VETTING

    nhs_number: NhsNumber
    practice_ods: OdsCode
    referrer_id: PersonId
    examination_code: ExaminationCode
    modality: Modality
    ionising: bool
    clinical_question: Annotated[str, Field(min_length=3, max_length=4000)]
    care_setting: CareSetting
    priority: Priority
    protocol: Annotated[str, Field(min_length=1, max_length=500)]
    referral_received_at: AwareDatetime
    justified_by: PersonId | None = Field(
        default=None, description="IR(ME)R practitioner; required when the examination is ionising"
    )
    decided_by: PersonId
    automatic: bool = Field(default=False, description="Accepted by an open-access rule, no person")
    walk_in_allowed: bool = Field(default=False, description="Plain X-ray open access: may walk in")

    @model_validator(mode="after")
    def _ionising_needs_practitioner(self) -> VettingAccepted:
        if self.ionising and not self.automatic and self.justified_by is None:
            raise ValueError(
                "justified_by: an ionising examination needs a justifying practitioner (IR(ME)R)"
            )
        return self


class ReturnReason(StrEnum):
    NOT_INDICATED = "not_indicated"
    INSUFFICIENT_INFORMATION = "insufficient_information"
    DUPLICATE = "duplicate"
    OTHER = "other"


class VettingReturned(ReferralEvent):
    """Returned to the referrer with a reason and advice; an amendment re-enters vetting."""

    event_type = _V + "vetting.returned.v1"
    topic = topics.VETTING

    reason: ReturnReason
    advice: FreeText
    decided_by: PersonId


class VettingQueried(ReferralEvent):
    """The vetting clinician asked the referrer a question; the answer re-enters vetting."""

    event_type = _V + "vetting.queried.v1"
    topic = topics.VETTING

    query_id: Annotated[str, Field(min_length=1, max_length=64)]
    question: FreeText
    decided_by: PersonId


# --------------------------------------------------------------------------- booking


class Appointment(_Value):
    provider_ods: OdsCode
    site_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    slot_id: Annotated[str, Field(min_length=1, max_length=128)]
    start: AwareDatetime
    end: AwareDatetime


class AppointmentsOffered(ReferralEvent):
    """Offers across providers and sites for the patient to choose from by a deadline."""

    event_type = _V + "booking.offered.v1"
    topic = topics.BOOKING

    offers: tuple[Appointment, ...]
    choose_by: AwareDatetime
    target_days: int = Field(ge=1, le=90)


class BookedBy(StrEnum):
    PATIENT = "patient"
    CLERK = "clerk"
    AUTOMATIC = "automatic"


class AppointmentBooked(ReferralEvent):
    """A slot is held for this referral at one provider's site."""

    event_type = _V + "booking.booked.v1"
    topic = topics.BOOKING

    appointment: Appointment
    booked_by: BookedBy
    priority: Priority
    modality: Modality
    examination_code: ExaminationCode
    wait_seconds: float = Field(
        ge=0, description="Received → appointment, less patient-elected delay"
    )
    within_target: bool


class AppointmentRebooked(ReferralEvent):
    """Moved to another slot (patient request, provider change, or after a did-not-attend)."""

    event_type = _V + "booking.rebooked.v1"
    topic = topics.BOOKING

    previous: Appointment
    appointment: Appointment
    reason: Literal["patient_request", "provider_change", "did_not_attend"]
    wait_seconds: float = Field(ge=0)
    within_target: bool


class AppointmentDeferred(ReferralEvent):
    """The patient elected to delay for social reasons (non-urgent only): the clock pauses."""

    event_type = _V + "booking.deferred.v1"
    topic = topics.BOOKING

    reason: ShortText
    available_from: date
    previous: Appointment | None = None


class AppointmentCancelled(ReferralEvent):
    """The slot is freed."""

    event_type = _V + "booking.cancelled.v1"
    topic = topics.BOOKING

    appointment: Appointment
    reason: Literal[
        "referral_cancelled", "patient_request", "provider_request", "returned_to_referrer"
    ]


class AppointmentMissed(ReferralEvent):
    """The patient did not attend (from the provider's event)."""

    event_type = _V + "booking.did_not_attend.v1"
    topic = topics.BOOKING

    appointment: Appointment
    dna_count: int = Field(ge=1)
    next_step: Literal["rebook", "return_to_referrer"]


class ReferralReturnedAfterDna(ReferralEvent):
    """After repeated did-not-attend (local policy: two), the referral goes back to the referrer."""

    event_type = _V + "booking.returned_after_dna.v1"
    topic = topics.BOOKING

    dna_count: int = Field(ge=1)


class WalkInAuthorised(ReferralEvent):
    """Plain X-ray open access: the provider expects the patient within the validity period."""

    event_type = _V + "booking.walk_in_authorised.v1"
    topic = topics.BOOKING

    provider_ods: OdsCode
    site_id: Annotated[str, Field(min_length=1, max_length=64)]
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    modality: Modality
    examination_code: ExaminationCode


class WaitTargetBreached(ReferralEvent):
    """No appointment within the priority's target could be found (capacity shortfall)."""

    event_type = _V + "booking.wait_target_breached.v1"
    topic = topics.BOOKING

    priority: Priority
    target_days: int
    earliest_available: AwareDatetime | None


# --------------------------------------------------------------------------- examination


class PatientArrived(ReferralEvent):
    event_type = _V + "examination.arrived.v1"
    topic = topics.EXAMINATION

    provider_ods: OdsCode
    site_id: Annotated[str, Field(min_length=1, max_length=64)]


class ExaminationCompleted(ReferralEvent):
    """The examination was done; the reporting clock starts at occurred_at."""

    event_type = _V + "examination.completed.v1"
    topic = topics.EXAMINATION

    provider_ods: OdsCode
    site_id: Annotated[str, Field(min_length=1, max_length=64)]
    study: StudyReference
    modality: Modality
    examination_code: ExaminationCode
    performed_by: PersonId | None = None


class ExaminationAbandoned(ReferralEvent):
    event_type = _V + "examination.abandoned.v1"
    topic = topics.EXAMINATION

    provider_ods: OdsCode
    reason: ShortText


# --------------------------------------------------------------------------- report


class ReportStatus(StrEnum):
    PRELIMINARY = "preliminary"
    FINAL = "final"


class ReportingScheduled(ReferralEvent):
    """The examination is on the reporting worklist with its turnaround deadline."""

    event_type = _V + "report.scheduled.v1"
    topic = topics.REPORT

    due_at: AwareDatetime
    rule: Literal["urgent", "same_working_day", "next_working_day", "mdt"]
    provider_ods: OdsCode


class ReportIssued(ReferralEvent):
    """A report, preliminary or final; reports are never overwritten."""

    event_type = _V + "report.issued.v1"
    topic = topics.REPORT

    report_id: Annotated[str, Field(min_length=1, max_length=64)]
    status: ReportStatus
    provider_ods: OdsCode
    practice_ods: OdsCode
    text: Annotated[str, Field(min_length=1, max_length=20000)]
    conclusion: Annotated[str, Field(min_length=1, max_length=4000)]
    finding_flag: FindingFlag
    reported_by: PersonId
    key_images: tuple[StudyReference, ...] = ()
    examination_completed_at: AwareDatetime
    due_at: AwareDatetime
    within_target: bool


class ReportAddended(ReferralEvent):
    """An addendum to an issued report; the original stays as it was."""

    event_type = _V + "report.addended.v1"
    topic = topics.REPORT

    report_id: Annotated[str, Field(min_length=1, max_length=64)]
    addendum_id: Annotated[str, Field(min_length=1, max_length=64)]
    provider_ods: OdsCode
    practice_ods: OdsCode
    text: Annotated[str, Field(min_length=1, max_length=20000)]
    finding_flag: FindingFlag
    reported_by: PersonId


class DelayReason(StrEnum):
    MDT = "mdt"
    SPECIALIST_OPINION = "specialist_opinion"
    OTHER = "other"


class ReportDelayed(ReferralEvent):
    """The report will be late (MDT or specialist opinion): referrer and patient are told."""

    event_type = _V + "report.delayed.v1"
    topic = topics.REPORT

    reason: DelayReason
    new_due_at: AwareDatetime
    provider_ods: OdsCode
    practice_ods: OdsCode


# --------------------------------------------------------------------------- notification


class ReportDelivered(ReferralEvent):
    """The report is in the GP's system: the receipt is the proof."""

    event_type = _V + "notification.delivered.v1"
    topic = topics.NOTIFICATION

    report_id: str = Field(max_length=64)
    addendum_id: str | None = Field(default=None, max_length=64)
    practice_ods: OdsCode
    receipt_id: Annotated[str, Field(min_length=1, max_length=128)]
    attempts: int = Field(ge=1)
    transport: str = Field(max_length=32)


class ReportDeliveryFailed(ReferralEvent):
    event_type = _V + "notification.delivery_failed.v1"
    topic = topics.NOTIFICATION

    report_id: str = Field(max_length=64)
    addendum_id: str | None = Field(default=None, max_length=64)
    practice_ods: OdsCode
    attempts: int = Field(ge=1)
    error_class: str = Field(max_length=128, description="Class of the last error; no patient data")


class ReportAcknowledged(ReferralEvent):
    """A clinician at the practice acknowledged receipt and action."""

    event_type = _V + "notification.acknowledged.v1"
    topic = topics.NOTIFICATION

    report_id: str = Field(max_length=64)
    addendum_id: str | None = Field(default=None, max_length=64)
    acknowledged_by: PersonId
    action: str = Field(default="", max_length=2000)


class AlertRaised(ReferralEvent):
    """A critical, urgent or unexpected significant finding went out on the alert channel."""

    event_type = _V + "notification.alert_raised.v1"
    topic = topics.NOTIFICATION

    alert_id: str = Field(max_length=64)
    report_id: str = Field(max_length=64)
    finding_flag: FindingFlag
    recipient_role: str = Field(max_length=64)
    acknowledge_by: AwareDatetime


class AlertEscalated(ReferralEvent):
    event_type = _V + "notification.alert_escalated.v1"
    topic = topics.NOTIFICATION

    alert_id: str = Field(max_length=64)
    level: int = Field(ge=1)
    recipient_role: str = Field(max_length=64)
    acknowledge_by: AwareDatetime | None


class PatientNotified(ReferralEvent):
    event_type = _V + "notification.patient_notified.v1"
    topic = topics.NOTIFICATION

    notice: Literal[
        "appointment_booked",
        "appointment_changed",
        "appointment_cancelled",
        "walk_in",
        "report_delayed",
    ]
    channel: str = Field(max_length=32)


class ReferrerNotified(ReferralEvent):
    event_type = _V + "notification.referrer_notified.v1"
    topic = topics.NOTIFICATION

    notice: Literal[
        "returned", "queried", "report_delayed", "cancelled", "returned_after_dna", "wait_breached"
    ]
    channel: str = Field(max_length=32)


# --------------------------------------------------------------------------- provider outbound


class ProviderOrderBooked(ReferralEvent):
    """To the assigned provider: an order to examine this patient at this appointment."""

    event_type = _V + "provider.order_booked.v1"
    topic = "provider.outbound"

    nhs_number: NhsNumber
    examination_code: ExaminationCode
    modality: Modality
    protocol: str = Field(max_length=500)
    priority: Priority
    clinical_question: str = Field(max_length=4000)
    appointment: Appointment


class ProviderOrderRebooked(ReferralEvent):
    event_type = _V + "provider.order_rebooked.v1"
    topic = "provider.outbound"

    appointment: Appointment
    previous: Appointment


class ProviderOrderCancelled(ReferralEvent):
    event_type = _V + "provider.order_cancelled.v1"
    topic = "provider.outbound"

    reason: str = Field(max_length=200)


class ProviderWalkInAuthorised(ReferralEvent):
    event_type = _V + "provider.walk_in_authorised.v1"
    topic = "provider.outbound"

    nhs_number: NhsNumber
    examination_code: ExaminationCode
    modality: Modality
    protocol: str = Field(max_length=500)
    clinical_question: str = Field(max_length=4000)
    site_id: str = Field(max_length=64)
    valid_from: AwareDatetime
    valid_until: AwareDatetime


# --------------------------------------------------------------------------- provider inbound
# The provider's identity is its topic, never a payload field: these models carry none.


class ProviderPatientArrived(ReferralEvent):
    event_type = _V + "provider.patient_arrived.v1"
    topic = "provider.inbound"

    site_id: Annotated[str, Field(min_length=1, max_length=64)]


class ProviderPatientDidNotAttend(ReferralEvent):
    event_type = _V + "provider.patient_did_not_attend.v1"
    topic = "provider.inbound"

    slot_id: Annotated[str, Field(min_length=1, max_length=128)]


class ProviderExaminationCompleted(ReferralEvent):
    event_type = _V + "provider.examination_completed.v1"
    topic = "provider.inbound"

    site_id: Annotated[str, Field(min_length=1, max_length=64)]
    study: StudyReference
    performed_by: PersonId | None = None


class ProviderExaminationAbandoned(ReferralEvent):
    event_type = _V + "provider.examination_abandoned.v1"
    topic = "provider.inbound"

    reason: ShortText


class ProviderReportIssued(ReferralEvent):
    event_type = _V + "provider.report_issued.v1"
    topic = "provider.inbound"

    report_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    status: ReportStatus
    text: Annotated[str, Field(min_length=1, max_length=20000)]
    conclusion: Annotated[str, Field(min_length=1, max_length=4000)]
    finding_flag: FindingFlag
    reported_by: PersonId
    key_images: tuple[StudyReference, ...] = ()


class ProviderReportAddended(ReferralEvent):
    event_type = _V + "provider.report_addended.v1"
    topic = "provider.inbound"

    report_id: Annotated[str, Field(min_length=1, max_length=64)]
    addendum_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    text: Annotated[str, Field(min_length=1, max_length=20000)]
    finding_flag: FindingFlag
    reported_by: PersonId


class ProviderReportDelayed(ReferralEvent):
    event_type = _V + "provider.report_delayed.v1"
    topic = "provider.inbound"

    reason: DelayReason
    note: str = Field(default="", max_length=2000)


# --------------------------------------------------------------------------- dead letters


class DeadLetter(_Value):
    """What a service writes to its dead-letter topic (value of the record; original kept too).

    `reason` is written by us and never contains patient data; the original record's bytes
    travel as the dead-letter record's headers `dlq_original_*` and its value.
    """

    service: str
    original_topic: str
    partition: int
    offset: int
    event_type: str | None
    event_id: str | None
    error_class: str
    reason: str
    errors: tuple[FieldError, ...] = ()
    attempts: int
    dead_lettered_at: AwareDatetime
    original_key_b64: str = ""
    original_value_b64: str = Field(
        default="", description="The original record value (truncated at 512 KiB)"
    )


FAMILIES: dict[str, tuple[type[PathwayEvent], ...]] = {
    topics.REFERRAL: (ReferralSubmitted, ReferralAmended, ReferralQueryAnswered, ReferralCancelled),
    topics.REFERRAL_INTAKE: (ReferralRequested,),
    topics.REFERRAL_INTAKE_REPLIES: (ReferralRequestAccepted, ReferralRequestRejected),
    topics.VETTING: (VettingQueued, VettingAccepted, VettingReturned, VettingQueried),
    topics.BOOKING: (
        AppointmentsOffered,
        AppointmentBooked,
        AppointmentRebooked,
        AppointmentDeferred,
        AppointmentCancelled,
        AppointmentMissed,
        ReferralReturnedAfterDna,
        WalkInAuthorised,
        WaitTargetBreached,
    ),
    topics.EXAMINATION: (PatientArrived, ExaminationCompleted, ExaminationAbandoned),
    topics.REPORT: (ReportingScheduled, ReportIssued, ReportAddended, ReportDelayed),
    topics.NOTIFICATION: (
        ReportDelivered,
        ReportDeliveryFailed,
        ReportAcknowledged,
        AlertRaised,
        AlertEscalated,
        PatientNotified,
        ReferrerNotified,
    ),
    "provider.outbound": (
        ProviderOrderBooked,
        ProviderOrderRebooked,
        ProviderOrderCancelled,
        ProviderWalkInAuthorised,
    ),
    "provider.inbound": (
        ProviderPatientArrived,
        ProviderPatientDidNotAttend,
        ProviderExaminationCompleted,
        ProviderExaminationAbandoned,
        ProviderReportIssued,
        ProviderReportAddended,
        ProviderReportDelayed,
    ),
}
"""Which events each topic may carry ("provider.*" stand for every provider's own topic)."""


def family_of_topic(topic: str) -> str:
    """The key of FAMILIES for a concrete topic name."""
    provider = topics.provider_of_topic(topic)
    if provider is not None:
        return "provider.inbound" if topic.endswith(".inbound.v1") else "provider.outbound"
    if topic not in FAMILIES:
        raise KeyError(f"topic {topic!r} carries no pathway events")
    return topic
