"""What each message says, and to whom: patient and referrer notices, alerts and escalations.

Plain functions from an event (or an alert) to a `Draft`. A draft names the channel, the
notice it stands for (reported afterwards as PatientNotified / ReferrerNotified), the
recipient's role, and the text. The referrer and the patient are looked up when the message
is sent, from the referral notify has seen, so a notice can wait for its address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pathway_schemas.base import PathwayEvent
from pathway_schemas.events import (
    Appointment,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentRebooked,
    ReferralCancelled,
    ReferralReturnedAfterDna,
    ReportDelayed,
    VettingQueried,
    VettingReturned,
    WaitTargetBreached,
    WalkInAuthorised,
)
from pathway_schemas.values import FindingFlag
from services.common.clock import LONDON

ChannelName = Literal["patient", "referrer", "alert"]

PATIENT = "patient"
REFERRER = "referrer"


@dataclass(frozen=True)
class Draft:
    channel: ChannelName
    kind: str
    subject: str
    body: str
    role: str
    # The notice reported once sent (PatientNotified / ReferrerNotified); None for alerts.
    notice: str | None = None
    organisation: str | None = None
    person: str | None = None
    # Notices give up after the configured attempts; alerts are retried until they go out.
    gives_up: bool = True


def when(moment: datetime) -> str:
    """London wall time, as a person reads it: 'Monday 2 March 2026 at 10:20'."""
    local = moment.astimezone(LONDON)
    return f"{local:%A} {local.day} {local:%B %Y} at {local:%H:%M}"


def _where(appointment: Appointment) -> str:
    return f"site {appointment.site_id} of provider {appointment.provider_ods}"


def _words(value: str) -> str:
    return value.replace("_", " ")


def patient_notice(event: PathwayEvent) -> Draft | None:
    """The patient hears of their appointment, its changes, a walk-in, and a delayed report."""
    if isinstance(event, AppointmentBooked):
        a = event.appointment
        return Draft(
            "patient",
            "appointment_booked",
            "Your imaging appointment",
            f"Your {event.modality.value} appointment is on {when(a.start)} at {_where(a)}.",
            PATIENT,
            notice="appointment_booked",
        )
    if isinstance(event, AppointmentRebooked):
        a = event.appointment
        return Draft(
            "patient",
            "appointment_changed",
            "Your imaging appointment has changed",
            f"Your appointment on {when(event.previous.start)} has moved to {when(a.start)} "
            f"at {_where(a)}.",
            PATIENT,
            notice="appointment_changed",
        )
    if isinstance(event, AppointmentCancelled):
        return Draft(
            "patient",
            "appointment_cancelled",
            "Your imaging appointment is cancelled",
            f"Your appointment on {when(event.appointment.start)} at {_where(event.appointment)} "
            f"is cancelled ({_words(event.reason)}).",
            PATIENT,
            notice="appointment_cancelled",
        )
    if isinstance(event, WalkInAuthorised):
        return Draft(
            "patient",
            "walk_in",
            "You can walk in for your X-ray",
            f"You can attend site {event.site_id} of provider {event.provider_ods} without an "
            f"appointment between {when(event.valid_from)} and {when(event.valid_until)}.",
            PATIENT,
            notice="walk_in",
        )
    if isinstance(event, ReportDelayed):
        return Draft(
            "patient",
            "report_delayed",
            "The report of your scan will take longer",
            f"The report needs {_words(event.reason.value)} review; it is now expected by "
            f"{when(event.new_due_at)}. Your GP will receive it.",
            PATIENT,
            notice="report_delayed",
        )
    return None


def referrer_notice(event: PathwayEvent) -> Draft | None:
    """The referrer hears of returns, queries, delays, cancellations and returns after DNA."""
    rid = getattr(event, "referral_id", "")
    if isinstance(event, VettingReturned):
        return Draft(
            "referrer",
            "returned",
            f"Referral {rid} returned",
            f"Referral {rid} was returned ({_words(event.reason.value)}). Advice: {event.advice}",
            REFERRER,
            notice="returned",
        )
    if isinstance(event, VettingQueried):
        return Draft(
            "referrer",
            "queried",
            f"Question about referral {rid}",
            f"The vetting clinician asks (query {event.query_id}): {event.question}",
            REFERRER,
            notice="queried",
        )
    if isinstance(event, ReportDelayed):
        return Draft(
            "referrer",
            "report_delayed",
            f"Report for referral {rid} delayed",
            f"The report needs {_words(event.reason.value)} review; it is now due by "
            f"{when(event.new_due_at)}. The patient has been told.",
            REFERRER,
            notice="report_delayed",
            organisation=event.practice_ods,
        )
    if isinstance(event, ReferralCancelled):
        return Draft(
            "referrer",
            "cancelled",
            f"Referral {rid} cancelled",
            f"Referral {rid} is cancelled ({_words(event.reason.value)}).",
            REFERRER,
            notice="cancelled",
        )
    if isinstance(event, ReferralReturnedAfterDna):
        return Draft(
            "referrer",
            "returned_after_dna",
            f"Referral {rid} returned after missed appointments",
            f"The patient did not attend {event.dna_count} appointments; referral {rid} is "
            "returned to you.",
            REFERRER,
            notice="returned_after_dna",
        )
    if isinstance(event, WaitTargetBreached):
        earliest = (
            f" The earliest appointment is {when(event.earliest_available)}."
            if event.earliest_available
            else " No appointment is available yet."
        )
        return Draft(
            "referrer",
            "wait_breached",
            f"Referral {rid}: no appointment within {event.target_days} days",
            f"No {event.priority.value} appointment within {event.target_days} days could be "
            f"found for referral {rid}.{earliest}",
            REFERRER,
            notice="wait_breached",
        )
    return None


def alert_message(
    *,
    referral_id: str,
    report_id: str,
    flag: FindingFlag,
    level: int,
    role: str,
    organisation: str,
    acknowledge_by: datetime,
) -> Draft:
    """An alert at one rung of the ladder (0: raised; 1 and up: escalated)."""
    label = _words(flag.value).upper()
    escalated = f"ESCALATION {level}: not acknowledged in time. " if level else ""
    return Draft(
        "alert",
        "escalation" if level else "alert",
        f"{label} finding: report {report_id}",
        f"{escalated}Report {report_id} for referral {referral_id} has a {_words(flag.value)} "
        f"finding. Read it in the clinical system and acknowledge by {when(acknowledge_by)}.",
        role,
        organisation=organisation,
        gives_up=False,
    )


def delivery_failure_message(
    *,
    referral_id: str,
    report_id: str,
    practice_ods: str,
    attempts: int,
    error_class: str,
    role: str,
) -> Draft:
    return Draft(
        "alert",
        "delivery_failed",
        f"Report {report_id} not delivered to practice {practice_ods}",
        f"Report {report_id} for referral {referral_id} could not be delivered to practice "
        f"{practice_ods} after {attempts} attempts (last error {error_class}). Fix the endpoint "
        "and redeliver (POST /deliveries/<id>/redeliver), or send it another way.",
        role,
        organisation=None,
        gives_up=False,
    )
