"""The practice and referrer registry the operator edits (`config/practices.json`).

Read once at start; a malformed file fails the start with the entry and field named.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathway_schemas.values import FieldError, OdsCode, PersonId


class Referrer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: PersonId
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(default="gp", max_length=64)
    active: bool = True


class Practice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ods: OdsCode
    name: str = Field(min_length=1, max_length=200)
    active: bool = True
    referrers: tuple[Referrer, ...] = ()


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    note: str = Field(default="", alias="_note")
    practices: tuple[Practice, ...]


class RegistryError(ValueError):
    """The registry file cannot be used; the message says which entry to fix."""


class PracticeRegistry:
    def __init__(self, practices: tuple[Practice, ...]) -> None:
        self._practices: dict[str, Practice] = {}
        for practice in practices:
            if practice.ods in self._practices:
                raise RegistryError(f"practice {practice.ods} is listed twice")
            ids = [r.id for r in practice.referrers]
            if len(set(ids)) != len(ids):
                raise RegistryError(f"practice {practice.ods} lists a referrer twice")
            self._practices[practice.ods] = practice

    @classmethod
    def load(cls, path: Path) -> PracticeRegistry:
        if not path.exists():
            raise RegistryError(
                f"practice registry {path} is missing: copy config/practices.json there"
            )
        try:
            parsed = _RegistryFile.model_validate(json.loads(path.read_text("utf-8")))
        except json.JSONDecodeError as error:
            raise RegistryError(
                f"practice registry {path} is not JSON: line {error.lineno}"
            ) from None
        except ValidationError as error:
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in error.errors(include_input=False, include_url=False)
            )
            raise RegistryError(f"practice registry {path} is invalid: {where}") from None
        return cls(parsed.practices)

    def practice(self, ods: str) -> Practice | None:
        return self._practices.get(ods)

    def check(
        self, practice_ods: str, referrer_id: str, *, referrer_field: str = "referrer_id"
    ) -> list[FieldError]:
        """Field-level reasons why this practice may not refer through this referrer (none: fine)."""
        practice = self._practices.get(practice_ods)
        if practice is None:
            return [
                FieldError(field="practice_ods", message="not a practice known to this service")
            ]
        if not practice.active:
            return [FieldError(field="practice_ods", message="this practice is no longer active")]
        referrer = next((r for r in practice.referrers if r.id == referrer_id), None)
        if referrer is None:
            return [
                FieldError(
                    field=referrer_field, message="not a referrer registered at this practice"
                )
            ]
        if not referrer.active:
            return [
                FieldError(
                    field=referrer_field,
                    message="this referrer is no longer active at this practice",
                )
            ]
        return []
