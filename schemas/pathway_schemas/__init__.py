"""Event contracts of the imaging referral-to-report pathway.

Install this package alone (`pip install ./schemas`) to publish valid events as a provider
or practice system; it needs only pydantic and `nhs-number`.
"""

from pathway_schemas import events, topics
from pathway_schemas.base import EVENT_TYPES, PathwayEvent, ReferralEvent, event_model
from pathway_schemas.catalogue import CATALOGUE, Examination, examination
from pathway_schemas.envelope import (
    Envelope,
    InvalidEvent,
    KafkaRecord,
    Received,
    derived_event_id,
    from_record,
    new_event_id,
    to_record,
)
from pathway_schemas.values import new_referral_id

__all__ = [
    "CATALOGUE",
    "EVENT_TYPES",
    "Envelope",
    "Examination",
    "InvalidEvent",
    "KafkaRecord",
    "PathwayEvent",
    "Received",
    "ReferralEvent",
    "derived_event_id",
    "event_model",
    "events",
    "examination",
    "from_record",
    "new_event_id",
    "new_referral_id",
    "to_record",
    "topics",
]
