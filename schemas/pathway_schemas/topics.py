"""Kafka topic names: the only place they are spelled.

Every canonical topic is keyed by referral id, so one referral's events stay in order
on one partition. Each canonical topic is written only by the service that owns its family.
"""

from __future__ import annotations

import re

REFERRAL = "imaging.referral.v1"
VETTING = "imaging.vetting.v1"
BOOKING = "imaging.booking.v1"
EXAMINATION = "imaging.examination.v1"
REPORT = "imaging.report.v1"
NOTIFICATION = "imaging.notification.v1"

# Systems that publish referrals write here; the request service answers on the reply topic.
REFERRAL_INTAKE = "imaging.referral.intake.v1"
REFERRAL_INTAKE_REPLIES = "imaging.referral.intake.replies.v1"

CANONICAL = (REFERRAL, VETTING, BOOKING, EXAMINATION, REPORT, NOTIFICATION)

SERVICES = ("request", "vetting", "scheduling", "reporting", "notify")

_ODS = re.compile(r"^[A-Z0-9]{3,10}$")


def dead_letter(service: str) -> str:
    """Each service dead-letters to its own topic, so a poison source is easy to find."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    return f"imaging.deadletter.{service}.v1"


def _provider_code(ods_code: str) -> str:
    code = ods_code.strip().upper()
    if not _ODS.match(code):
        raise ValueError(f"{ods_code!r} is not an ODS organisation code (3-10 letters or digits)")
    return code.lower()


def provider_inbound(ods_code: str) -> str:
    """Topic a provider writes its examination and report events to (its Kafka user may write only here)."""
    return f"imaging.provider.{_provider_code(ods_code)}.inbound.v1"


def provider_outbound(ods_code: str) -> str:
    """Topic a provider reads its orders from (its Kafka user may read only here)."""
    return f"imaging.provider.{_provider_code(ods_code)}.outbound.v1"


#: Every provider's inbound topic, those that exist now and those created later (a regex):
#: what the services subscribe to, so that a provider plugs in without their restart.
PROVIDER_INBOUND_PATTERN = r"^imaging\.provider\.[a-z0-9]{3,10}\.inbound\.v1$"

_PROVIDER_TOPIC = re.compile(r"^imaging\.provider\.([a-z0-9]{3,10})\.(inbound|outbound)\.v1$")


def provider_of_topic(topic: str) -> str | None:
    """The provider's ODS code from its own topic name: identity comes from here, never the payload."""
    match = _PROVIDER_TOPIC.match(topic)
    return match.group(1).upper() if match else None


def all_topics(provider_codes: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every topic the system needs, for topic creation at start and in tests."""
    topics = [*CANONICAL, REFERRAL_INTAKE, REFERRAL_INTAKE_REPLIES]
    topics += [dead_letter(s) for s in SERVICES]
    for code in provider_codes:
        topics += [provider_inbound(code), provider_outbound(code)]
    return topics
