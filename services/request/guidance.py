"""Referral guidance at the point of referral: an ordered rules file the operator edits.

A rule names examinations (codes) and/or modalities, and optionally indications: phrases
that must (or must not) appear in the clinical question, a priority, and a minimum length
of the question in words. The first rule that matches gives the outcome and its message; no
match gives `no_rule`. The shipped rules are examples written by the project, not clinical
advice: the file says so and so does every answer (`disclaimer`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.values import GuidanceAdvice, GuidanceOutcome, Modality, Priority

NO_RULE_MESSAGE = (
    "No guidance rule covers this examination and indication; the vetting clinician will decide."
)

_NOT_WORD = re.compile(r"[^0-9a-z]+")


def _words(text: str) -> str:
    # Padded with spaces so that a phrase matches whole words only ("arm" is not in "harm").
    return f" {_NOT_WORD.sub(' ', text.lower()).strip()} "


class GuidanceRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    examinations: tuple[str, ...] = ()
    modalities: tuple[Modality, ...] = ()
    indications_any: tuple[str, ...] = Field(
        default=(), description="Matches when any phrase is in the question"
    )
    indications_none: tuple[str, ...] = Field(
        default=(), description="Matches only when no phrase is in the question"
    )
    priority: Priority | None = None
    question_fewer_words_than: int | None = Field(default=None, ge=1, le=1000)
    outcome: GuidanceOutcome
    message: str = Field(min_length=1, max_length=2000)

    @field_validator("examinations")
    @classmethod
    def _known_examinations(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in codes if c.strip().upper() not in CATALOGUE]
        if unknown:
            raise ValueError(f"examination codes not in the catalogue: {', '.join(unknown)}")
        return tuple(c.strip().upper() for c in codes)

    @field_validator("indications_any", "indications_none")
    @classmethod
    def _phrases_have_words(cls, phrases: tuple[str, ...]) -> tuple[str, ...]:
        if any(not _words(p).strip() for p in phrases):
            raise ValueError("an indication phrase needs at least one letter or digit")
        return phrases

    @model_validator(mode="after")
    def _about_an_examination(self) -> GuidanceRule:
        if not self.examinations and not self.modalities:
            raise ValueError("a rule names at least one examination code or modality")
        if self.outcome is GuidanceOutcome.NO_RULE:
            raise ValueError(
                "'no_rule' is what the service answers when no rule matches; a rule cannot give it"
            )
        return self

    def matches(self, examination_code: str, question: str, priority: Priority) -> bool:
        exam = CATALOGUE[examination_code]
        if self.examinations and examination_code not in self.examinations:
            return False
        if self.modalities and exam.modality not in {m.value for m in self.modalities}:
            return False
        if self.priority is not None and priority is not self.priority:
            return False
        words = _words(question)
        if self.indications_any and not any(_words(p) in words for p in self.indications_any):
            return False
        if any(_words(p) in words for p in self.indications_none):
            return False
        return not (
            self.question_fewer_words_than is not None
            and len(words.split()) >= self.question_fewer_words_than
        )


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    note: str = Field(default="", alias="_note")
    disclaimer: str = Field(min_length=1, max_length=1000)
    rules: tuple[GuidanceRule, ...]


class GuidanceRulesError(ValueError):
    """The rules file cannot be used; the message names the rule and field to fix."""


class GuidanceRules:
    def __init__(self, rules: tuple[GuidanceRule, ...], disclaimer: str) -> None:
        ids = [r.id for r in rules]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise GuidanceRulesError(f"rule ids must be unique: {', '.join(duplicates)}")
        self.rules = rules
        self.disclaimer = disclaimer

    @classmethod
    def load(cls, path: Path) -> GuidanceRules:
        if not path.exists():
            raise GuidanceRulesError(
                f"guidance rules {path} are missing: copy config/guidance_rules.json there"
            )
        try:
            parsed = _RulesFile.model_validate(json.loads(path.read_text("utf-8")))
        except json.JSONDecodeError as error:
            raise GuidanceRulesError(
                f"guidance rules {path} are not JSON: line {error.lineno}"
            ) from None
        except ValidationError as error:
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in error.errors(include_input=False, include_url=False)
            )
            raise GuidanceRulesError(f"guidance rules {path} are invalid: {where}") from None
        return cls(parsed.rules, parsed.disclaimer)

    def advise(
        self, examination_code: str, clinical_question: str, priority: Priority
    ) -> GuidanceAdvice:
        """The first matching rule's advice; `no_rule` when none matches."""
        for rule in self.rules:
            if rule.matches(examination_code, clinical_question, priority):
                return GuidanceAdvice(outcome=rule.outcome, rule_id=rule.id, message=rule.message)
        return GuidanceAdvice(
            outcome=GuidanceOutcome.NO_RULE, rule_id=None, message=NO_RULE_MESSAGE
        )
