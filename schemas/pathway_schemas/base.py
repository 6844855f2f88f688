"""Base classes of every event, and the registry from CloudEvents type to model."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict

from pathway_schemas.values import ReferralId

TYPE_PREFIX = "uk.nhs.imaging."

EVENT_TYPES: dict[str, type[PathwayEvent]] = {}


class PathwayEvent(BaseModel):
    """An immutable fact, named in the past tense.

    Unknown fields are ignored so that additive changes within a version never break an
    older consumer; a breaking change is a new type with a new version suffix.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    event_type: ClassVar[str]
    topic: ClassVar[str]

    occurred_at: AwareDatetime

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        event_type = cls.__dict__.get("event_type")
        if event_type is None:
            return  # an abstract base, not a published event
        if not event_type.startswith(TYPE_PREFIX) or not event_type.rsplit(".", 1)[-1].startswith(
            "v"
        ):
            raise TypeError(
                f"{cls.__name__}.event_type {event_type!r} must be '{TYPE_PREFIX}<family>.<name>.vN'"
            )
        if event_type in EVENT_TYPES:
            raise TypeError(f"event type {event_type!r} is declared twice")
        EVENT_TYPES[event_type] = cls

    @property
    def subject(self) -> str:
        """CloudEvents subject and Kafka key: the referral id, never a patient identifier."""
        raise NotImplementedError


class ReferralEvent(PathwayEvent):
    """Every event about one referral carries its id; the id is the subject and the Kafka key."""

    referral_id: ReferralId

    @property
    def subject(self) -> str:
        return self.referral_id


def event_model(event_type: str) -> type[PathwayEvent]:
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}") from None
