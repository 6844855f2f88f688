"""Small builders of providers and accepted referrals for the scheduling tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pathway_schemas import new_referral_id
from pathway_schemas.catalogue import examination
from pathway_schemas.events import VettingAccepted
from services.common.clock import LONDON
from services.scheduling.registry import Provider

# Monday 23 March 2026, 09:00 in London: the week the clocks go forward (Sunday 29 March).
T0 = datetime(2026, 3, 23, 9, 0, tzinfo=LONDON)
SPRING_FORWARD = datetime(2026, 3, 29, tzinfo=LONDON).date()
FALL_BACK = datetime(2026, 10, 25, tzinfo=LONDON).date()

NHS_NUMBERS = ("9434765919", "4010232137")


def site(
    site_id: str,
    modalities: dict[str, Any] | None = None,
    *,
    walk_in: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": site_id,
        "name": f"Site {site_id}",
        "area": "Testarea",
        "walk_in": walk_in,
        "modalities": modalities if modalities is not None else {"XR": {"rooms": 1}},
        **extra,
    }


def provider(ods: str, *sites: dict[str, Any], active: bool = True) -> Provider:
    return Provider.model_validate(
        {"ods": ods, "name": f"Provider {ods}", "active": active, "sites": list(sites)}
    )


def hours(open_: str, close: str, *, weekend: tuple[str, str] | None = None) -> dict[str, Any]:
    """The same session every weekday; the weekend closed unless given."""
    session = [{"open": open_, "close": close}]
    weekend_session = [{"open": weekend[0], "close": weekend[1]}] if weekend else []
    days = {d: session for d in ("mon", "tue", "wed", "thu", "fri")}
    return {**days, "sat": weekend_session, "sun": weekend_session}


def accepted(
    code: str = "XCHES",
    *,
    priority: str = "routine",
    received_at: datetime = T0,
    walk_in_allowed: bool = False,
    **overrides: Any,
) -> VettingAccepted:
    exam = examination(code)
    fields: dict[str, Any] = {
        "referral_id": new_referral_id(),
        "occurred_at": received_at + timedelta(minutes=30),
        "nhs_number": NHS_NUMBERS[0],
        "practice_ods": "A81001",
        "referrer_id": "G1234567",
        "examination_code": code,
        "modality": exam.modality,
        "ionising": exam.ionising,
        "clinical_question": "Pain for six weeks after a fall",
        "care_setting": "gp",
        "priority": priority,
        "protocol": "standard views",
        "referral_received_at": received_at,
        "justified_by": "R1234567",
        "decided_by": "R1234567",
        "walk_in_allowed": walk_in_allowed,
    }
    fields.update(overrides)
    return VettingAccepted(**fields)
