"""The request service's rules: plain functions, no framework, no driver.

Duplicate imaging, what each state allows (cancel, answer, amend), who may read a referral,
and the warnings a referrer sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pathway_schemas.events import ReferralDetails
from pathway_schemas.values import FieldError, GuidanceAdvice, GuidanceOutcome
from services.common.auth import Principal, Role
from services.common.clock import LONDON
from services.common.errors import Invalid, Rejected
from services.request.timeline import CANCEL_TOO_LATE, ReferralState


class ReferralRefused(Invalid):
    """The referral fails a rule beyond its schema; `cause` is a closed word for metrics."""

    def __init__(self, message: str, errors: Iterable[FieldError], cause: str) -> None:
        super().__init__(message, errors)
        self.cause = cause


class IdempotencyConflict(Rejected):
    """The idempotency key was used before, by this practice, for a different referral."""

    cause = "idempotency_conflict"


def registry_refusal(errors: list[FieldError]) -> ReferralRefused:
    fields = {e.field for e in errors}
    cause = "unknown_practice" if "practice_ods" in fields else "unknown_referrer"
    return ReferralRefused(
        "the referral names a practice or referrer this service does not know", errors, cause
    )


def request_fingerprint(details: ReferralDetails) -> str:
    """Stands for the request's content, so a reused idempotency key with other content is caught."""
    return hashlib.sha256(details.model_dump_json().encode()).hexdigest()


@dataclass(frozen=True)
class EarlierReferral:
    """What the duplicate check needs of an earlier referral for the same patient and examination."""

    referral_id: str
    open: bool
    examined_at: datetime | None


def duplicates_of(
    earlier: Iterable[EarlierReferral],
    *,
    now: datetime,
    window_days: int,
    exclude: str | None = None,
) -> tuple[str, ...]:
    """Earlier referrals that make this one a possible duplicate: open, or examined within the window.

    The window counts London calendar days (the same wall-clock time N days ago), so a
    daylight-saving change inside it neither adds nor removes an hour.
    """
    since = (now.astimezone(LONDON) - timedelta(days=window_days)).astimezone(UTC)
    found = [
        e.referral_id
        for e in earlier
        if e.referral_id != exclude
        and (e.open or (e.examined_at is not None and e.examined_at >= since))
    ]
    return tuple(sorted(found))


def check_cancellable(state: ReferralState) -> None:
    if state is ReferralState.CANCELLED:
        raise Rejected("the referral is already cancelled")
    if state in CANCEL_TOO_LATE:
        raise Rejected(
            f"the referral cannot be cancelled: the examination has already taken place or begun "
            f"(state {state.value}); contact the imaging provider"
        )


def check_answerable(state: ReferralState, open_query_id: str | None, query_id: str) -> None:
    if state is not ReferralState.QUERIED or open_query_id is None:
        raise Rejected(
            f"the referral has no open vetting query to answer (state {state.value})",
            [FieldError(field="query_id", message="no open query on this referral")],
        )
    if query_id != open_query_id:
        raise Rejected(
            "that is not the open query on this referral",
            [
                FieldError(
                    field="query_id",
                    message="does not match the open query; read the referral for its id",
                )
            ],
        )


def check_amendable(state: ReferralState) -> None:
    if state is not ReferralState.RETURNED:
        raise Rejected(
            f"only a referral returned by vetting can be amended (state {state.value}); "
            "answer a query with /answer, or cancel and refer again"
        )


READ_ANY = frozenset({Role.OPERATOR, Role.VETTING_CLINICIAN, Role.REPORTER, Role.BOOKING_CLERK})


def may_read(principal: Principal, practice_ods: str, providers: Iterable[str]) -> bool:
    """A practice reads its own referrals; a provider those assigned to it; clinical and operations roles any."""
    if principal.role in READ_ANY:
        return True
    if principal.role is Role.PRACTICE:
        return principal.organisation == practice_ods
    if principal.role is Role.PROVIDER:
        return principal.organisation is not None and principal.organisation in set(providers)
    return False


def may_act(principal: Principal, practice_ods: str) -> bool:
    """Only the referring practice answers, amends or cancels its referral (operators may cancel)."""
    return principal.role is Role.PRACTICE and principal.organisation == practice_ods


def warnings(guidance: GuidanceAdvice, duplicate_of: Iterable[str], window_days: int) -> list[str]:
    """What the referrer is told at once, beside the record."""
    said: list[str] = []
    if guidance.outcome not in (GuidanceOutcome.INDICATED, GuidanceOutcome.NO_RULE):
        said.append(f"Guidance ({guidance.outcome.value}): {guidance.message}")
    earlier = list(duplicate_of)
    if earlier:
        said.append(
            "Possible duplicate imaging: the same patient has the same examination open or done in the "
            f"last {window_days} days ({', '.join(earlier)}). Not blocked; vetting sees the flag."
        )
    return said
