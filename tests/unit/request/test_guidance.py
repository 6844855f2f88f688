"""Referral guidance rules: first match wins, phrases match whole words, the file is checked at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.values import GuidanceOutcome, Priority
from services.request.guidance import (
    NO_RULE_MESSAGE,
    GuidanceRule,
    GuidanceRules,
    GuidanceRulesError,
)

SHIPPED = Path(__file__).resolve().parents[3] / "config" / "guidance_rules.json"


def rule(**values: Any) -> GuidanceRule:
    defaults: dict[str, Any] = {
        "id": "r",
        "examinations": ["XCHES"],
        "outcome": "indicated",
        "message": "m",
    }
    return GuidanceRule.model_validate({**defaults, **values})


def test_shipped_rules_load_and_say_they_are_examples_not_clinical_advice() -> None:
    rules = GuidanceRules.load(SHIPPED)
    raw = json.loads(SHIPPED.read_text("utf-8"))
    assert "NOT clinical advice" in raw["_note"]
    assert "not clinical advice" in rules.disclaimer
    assert rules.rules
    assert all(r.id.startswith("example-") for r in rules.rules)
    assert all(r.message.startswith("EXAMPLE RULE") for r in rules.rules)


@pytest.mark.parametrize(
    ("code", "question", "outcome", "rule_id"),
    [
        ("XLSPI", "Low back pain for three weeks", "not_indicated", "example-lumbar-xr-back-pain"),
        ("XLSPI", "Back pain after a fall from a ladder", "no_rule", None),
        ("XCHES", "Persistent cough in a smoker", "indicated", "example-chest-xr-respiratory"),
        (
            "CHEAD",
            "Headache for a month, worse in the mornings",
            "more_information_needed",
            "example-head-ct-headache",
        ),
        ("CHEAD", "Sudden severe headache with vomiting and neck stiffness", "no_rule", None),
        (
            "MKNER",
            "Locking knee after a twisting injury playing football",
            "specialist_only",
            "example-knee-mr-specialist",
        ),
        ("CCHES", "Cough", "more_information_needed", "example-ct-mr-question-too-short"),
        ("UTHYR", "Neck lump", "no_rule", None),
    ],
)
def test_shipped_examples_advise(
    code: str, question: str, outcome: str, rule_id: str | None
) -> None:
    advice = GuidanceRules.load(SHIPPED).advise(code, question, Priority.ROUTINE)
    assert (advice.outcome.value, advice.rule_id) == (outcome, rule_id)
    if rule_id is None:
        assert advice.message == NO_RULE_MESSAGE


def test_the_first_matching_rule_wins() -> None:
    rules = GuidanceRules(
        (rule(id="first", outcome="specialist_only"), rule(id="second", outcome="indicated")),
        "example",
    )
    assert rules.advise("XCHES", "anything at all", Priority.ROUTINE).rule_id == "first"


def test_phrases_match_whole_words_whatever_the_case_and_punctuation() -> None:
    r = rule(indications_any=["chest pain"])
    assert r.matches("XCHES", "CHEST-PAIN on exertion", Priority.ROUTINE)
    assert r.matches("XCHES", "chest   pain", Priority.ROUTINE)
    assert not r.matches("XCHES", "chest painful", Priority.ROUTINE)
    assert not rule(indications_any=["arm"]).matches("XCHES", "self harm", Priority.ROUTINE)


def test_conditions_on_modality_priority_exclusions_and_question_length() -> None:
    assert rule(examinations=[], modalities=["XR"]).matches("XKNEL", "q", Priority.ROUTINE)
    assert not rule(examinations=[], modalities=["MR"]).matches("XKNEL", "q", Priority.ROUTINE)
    assert not rule(priority="urgent").matches("XCHES", "q", Priority.ROUTINE)
    assert not rule(indications_none=["trauma"]).matches("XCHES", "after trauma", Priority.ROUTINE)
    short = rule(question_fewer_words_than=3)
    assert short.matches("XCHES", "two words", Priority.ROUTINE)
    assert not short.matches("XCHES", "now three words", Priority.ROUTINE)


@given(
    question=st.text(max_size=300), code=st.sampled_from(sorted(CATALOGUE)), urgent=st.booleans()
)
def test_any_question_gets_one_answer_from_the_shipped_rules(
    question: str, code: str, urgent: bool
) -> None:
    advice = GuidanceRules.load(SHIPPED).advise(
        code, question, Priority.URGENT if urgent else Priority.ROUTINE
    )
    assert advice.outcome in GuidanceOutcome
    assert (advice.rule_id is None) == (advice.outcome is GuidanceOutcome.NO_RULE)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"examinations": ["NOPE1"]}, "not in the catalogue"),
        ({"examinations": []}, "at least one examination code or modality"),
        ({"outcome": "no_rule"}, "cannot give it"),
        ({"indications_any": ["--"]}, "letter or digit"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_rule_fails_the_start_naming_it(
    tmp_path: Path, bad: dict[str, Any], says: str
) -> None:
    good = {"id": "r1", "examinations": ["XCHES"], "outcome": "indicated", "message": "m"}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"disclaimer": "d", "rules": [{**good, **bad}]}))
    with pytest.raises(GuidanceRulesError, match=says) as raised:
        GuidanceRules.load(path)
    assert "rules.0" in str(raised.value)


def test_duplicate_rule_ids_and_missing_or_broken_files_fail_the_start(tmp_path: Path) -> None:
    one = {"id": "same", "examinations": ["XCHES"], "outcome": "indicated", "message": "m"}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"disclaimer": "d", "rules": [one, one]}))
    with pytest.raises(GuidanceRulesError, match="unique: same"):
        GuidanceRules.load(path)
    with pytest.raises(GuidanceRulesError, match="missing"):
        GuidanceRules.load(tmp_path / "absent.json")
    path.write_text("{")
    with pytest.raises(GuidanceRulesError, match="not JSON"):
        GuidanceRules.load(path)
