"""Open access: which referrals pass without a person, and the policy file that says so."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_schemas import new_referral_id
from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.events import VettingAccepted, VettingQueued
from pathway_schemas.values import GuidanceOutcome
from services.vetting.service import (
    OpenAccessPolicy,
    ReferralFacts,
    State,
    enter_vetting,
    load_policy,
    triage,
)
from tests.unit.vetting.builders import OPEN_ACCESS, T0, submitted

REPO = Path(__file__).resolve().parents[3]


def test_listed_plain_xray_with_indicated_guidance_is_accepted_without_a_person() -> None:
    event = submitted("XCHES", priority="urgent")
    decided_at = T0 + timedelta(seconds=3)

    step = enter_vetting(None, event, OPEN_ACCESS, decided_at)

    assert step is not None
    assert step.item.state is State.ACCEPTED
    (accepted,) = step.events
    assert isinstance(accepted, VettingAccepted)
    assert accepted.automatic
    assert accepted.walk_in_allowed
    assert accepted.decided_by == "open-access-rule"
    assert accepted.referral_received_at == event.occurred_at
    assert accepted.occurred_at == decided_at
    assert accepted.priority.value == "urgent"
    assert accepted.nhs_number == event.nhs_number
    assert accepted.clinical_question == event.clinical_question
    assert step.decision is not None
    assert step.decision.automatic
    assert [e.kind.value for e in step.item.history] == ["submitted", "accepted"]


def test_open_access_records_the_practitioner_whose_guidelines_justify_it() -> None:
    policy = OPEN_ACCESS.model_copy(update={"justified_under_guidelines_of": "RAD0001"})
    step = enter_vetting(None, submitted("XKNEL"), policy, T0)
    assert step is not None
    assert isinstance(step.events[0], VettingAccepted)
    assert step.events[0].justified_by == "RAD0001"


def test_guidance_without_a_rule_does_not_stop_open_access() -> None:
    step = enter_vetting(None, submitted(guidance={"outcome": "no_rule"}), OPEN_ACCESS, T0)
    assert step is not None
    assert step.item.state is State.ACCEPTED


@pytest.mark.parametrize(
    ("outcome", "why"),
    [
        ("not_indicated", "guidance: not indicated"),
        ("specialist_only", "guidance: specialist only"),
        ("more_information_needed", "guidance: more information needed"),
    ],
)
def test_guidance_other_than_indicated_puts_an_open_access_examination_on_the_worklist(
    outcome: str, why: str
) -> None:
    step = enter_vetting(None, submitted(guidance={"outcome": outcome}), OPEN_ACCESS, T0)

    assert step is not None
    assert step.item.state is State.WAITING
    (queued,) = step.events
    assert isinstance(queued, VettingQueued)
    assert queued.why == why == step.item.why


def test_a_flagged_duplicate_puts_an_open_access_examination_on_the_worklist() -> None:
    step = enter_vetting(None, submitted(duplicate_of=(new_referral_id(),)), OPEN_ACCESS, T0)
    assert step is not None
    assert step.item.state is State.WAITING
    assert isinstance(step.events[0], VettingQueued)
    assert "duplicate" in step.events[0].why


@pytest.mark.parametrize("code", ["XABDO", "CCHES"])
def test_examinations_not_listed_wait_for_a_person(code: str) -> None:
    step = enter_vetting(None, submitted(code), OPEN_ACCESS, T0)
    assert step is not None
    assert step.item.state is State.WAITING
    assert step.item.why == "not an open-access examination"


def test_nothing_passes_when_open_access_is_off() -> None:
    policy = OPEN_ACCESS.model_copy(update={"enabled": False})
    step = enter_vetting(None, submitted("XCHES"), policy, T0)
    assert step is not None
    assert step.item.state is State.WAITING
    assert step.item.why == "open access is off"


def test_every_reason_a_person_must_vet_is_given() -> None:
    event = submitted(
        "XABDO", guidance={"outcome": "not_indicated"}, duplicate_of=(new_referral_id(),)
    )
    verdict = triage(ReferralFacts.of(event), OPEN_ACCESS)
    assert verdict.why == (
        "not an open-access examination; guidance: not indicated; possible duplicate of an earlier referral"
    )


XRAY_CODES = sorted(code for code, exam in CATALOGUE.items() if exam.modality == "XR")


@given(
    code=st.sampled_from(sorted(CATALOGUE)),
    outcome=st.sampled_from(list(GuidanceOutcome)),
    duplicates=st.integers(min_value=0, max_value=2),
    enabled=st.booleans(),
    listed=st.sets(st.sampled_from(XRAY_CODES)),
    seen=st.booleans(),
)
def test_open_access_accepts_exactly_the_listed_plain_xray_that_nothing_flags(
    code: str,
    outcome: GuidanceOutcome,
    duplicates: int,
    enabled: bool,
    listed: set[str],
    seen: bool,
) -> None:
    policy = OpenAccessPolicy(enabled=enabled, examination_codes=tuple(sorted(listed)))
    event = submitted(
        code,
        guidance={"outcome": outcome},
        duplicate_of=tuple(new_referral_id() for _ in range(duplicates)),
    )

    verdict = triage(ReferralFacts.of(event), policy, seen_by_clinician=seen)

    allowed = (
        enabled
        and code in listed
        and outcome in (GuidanceOutcome.INDICATED, GuidanceOutcome.NO_RULE)
        and duplicates == 0
        and not seen
    )
    assert verdict.automatic is allowed
    if verdict.automatic:
        assert CATALOGUE[code].modality == "XR"
    else:
        assert verdict.why


def test_the_shipped_policy_lists_only_plain_xray_from_the_catalogue() -> None:
    policy = load_policy(REPO / "config" / "vetting.json")
    assert policy.open_access.enabled
    assert policy.open_access.examination_codes
    assert {CATALOGUE[c].modality for c in policy.open_access.examination_codes} == {"XR"}
    assert GuidanceOutcome.NOT_INDICATED not in policy.open_access.guidance_outcomes


@pytest.mark.parametrize(
    ("open_access", "complaint"),
    [
        ({"enabled": True, "examination_codes": ["CCHES"]}, "plain X-ray (XR) only"),
        ({"enabled": True, "examination_codes": ["XNOPE"]}, "not in the examination catalogue"),
        ({"enabled": True, "guidance_outcomes": ["indicated", "not_indicated"]}, "never accept"),
        ({"enabled": True, "examination_codes": ["XCHES"], "enabeld": False}, "enabeld"),
    ],
)
def test_a_bad_policy_stops_the_service_naming_the_problem(
    tmp_path: Path, open_access: dict[str, object], complaint: str
) -> None:
    path = tmp_path / "vetting.json"
    path.write_text(json.dumps({"open_access": open_access}))
    with pytest.raises(ValueError, match=re.escape(complaint)):
        load_policy(path)


def test_a_missing_policy_file_says_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"vetting\.json"):
        load_policy(tmp_path / "vetting.json")


def test_policy_codes_are_normalised_to_the_catalogue_spelling() -> None:
    assert OpenAccessPolicy(enabled=True, examination_codes=(" xches ",)).lists("XCHES")
