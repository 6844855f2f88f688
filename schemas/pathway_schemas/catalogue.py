"""The examination catalogue shipped with the contracts (examples written by the project)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files


@dataclass(frozen=True)
class Examination:
    code: str
    name: str
    modality: str
    body_part: str
    ionising: bool


def _load() -> dict[str, Examination]:
    raw = json.loads(files("pathway_schemas").joinpath("catalogue.json").read_text("utf-8"))
    return {e["code"]: Examination(**e) for e in raw["examinations"]}


CATALOGUE: dict[str, Examination] = _load()


def examination(code: str) -> Examination:
    """The catalogue entry for a code; KeyError names the code when it is unknown."""
    try:
        return CATALOGUE[code.strip().upper()]
    except KeyError:
        raise KeyError(f"examination code {code!r} is not in the catalogue") from None
