"""Any qualified provider plugs in by configuration: from the file at start, or through the
admin API at once (its inbound topic is read without a restart: test_provider_plug_in.py).
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from pathway_cli.stack import create_topics
from pathway_schemas import topics
from pathway_schemas.base import ReferralEvent
from pathway_schemas.envelope import from_record
from pathway_schemas.events import (
    AppointmentMissed,
    AppointmentsOffered,
    ProviderOrderBooked,
    ProviderPatientDidNotAttend,
)
from services.common.clock import FixedClock
from services.scheduling.main import create_app
from services.scheduling.settings import Settings
from tests.harness import TopicReader, publish, running_service
from tests.unit.scheduling.builders import T0, accepted

REPO = Path(__file__).resolve().parents[2]
CLERK = {"X-API-Key": "dev-booking-clerk"}
OPERATOR = {"X-API-Key": "dev-operator"}


def mr_provider(ods: str, site_id: str) -> dict[str, Any]:
    return {
        "ods": ods,
        "name": f"Scanning {ods}",
        "sites": [
            {
                "id": site_id,
                "name": f"Site {site_id}",
                "area": "Quayside",
                "modalities": {"MR": {"rooms": 1}},
            }
        ],
    }


def events_of(reader: TopicReader, kind: type[Any], referral_id: str) -> list[Any]:
    found = []
    for record in reader.records:
        event = from_record(record.headers, record.value, topic=record.topic).event
        if (
            isinstance(event, kind)
            and isinstance(event, ReferralEvent)
            and event.referral_id == referral_id
        ):
            found.append((record.topic, event))
    return found


async def test_a_provider_added_to_the_file_or_through_the_api_is_offered_and_consumed_without_code_changes(
    kafka: str, service_settings: Any, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(REPO / "config" / "principals.json", config / "principals.json")
    registry = json.loads((REPO / "config" / "providers.json").read_text())
    registry["providers"].append(mr_provider("QWE03", "QWE-1"))
    (config / "providers.json").write_text(json.dumps(registry))
    await create_topics(kafka, topics.all_topics(("QWE03", "NEW04")))

    clock = FixedClock(T0 + timedelta(hours=1))
    settings: Settings = service_settings(
        Settings, "scheduling", config_dir=config, deadline_check_interval_s=0.1
    )
    from_file, from_api = accepted("MKNEL"), accepted("MHEAD")
    watched = (topics.BOOKING, topics.provider_outbound("QWE03"), topics.provider_outbound("NEW04"))

    async with (
        running_service(create_app(settings, clock=clock)) as svc,
        TopicReader(kafka, *watched) as reader,
    ):
        await publish(kafka, [(from_file, topics.VETTING)])
        await reader.wait_for(
            lambda _: bool(events_of(reader, AppointmentsOffered, from_file.referral_id)),
            what="offers",
        )
        [(_, offered)] = events_of(reader, AppointmentsOffered, from_file.referral_id)
        new_offer = next(o for o in offered.offers if o.provider_ods == "QWE03")
        chosen = await svc.client.post(
            f"/bookings/{from_file.referral_id}/choose",
            json={"slot_id": new_offer.slot_id},
            headers=CLERK,
        )
        assert chosen.status_code == 200, chosen.text
        await reader.wait_for(
            lambda _: bool(events_of(reader, ProviderOrderBooked, from_file.referral_id)),
            what="order",
        )
        assert [t for t, _ in events_of(reader, ProviderOrderBooked, from_file.referral_id)] == [
            topics.provider_outbound("QWE03")
        ]
        # The file's new provider is heard on its own inbound topic.
        clock.set(new_offer.start + timedelta(minutes=15))
        dna = ProviderPatientDidNotAttend(
            referral_id=from_file.referral_id, occurred_at=clock.now(), slot_id=new_offer.slot_id
        )
        await publish(kafka, [(dna, topics.provider_inbound("QWE03"))], source="/providers/QWE03")
        await reader.wait_for(
            lambda _: bool(events_of(reader, AppointmentMissed, from_file.referral_id)), what="DNA"
        )

        # The admin API: operators only; a new provider is offered at once.
        assert (await svc.client.get("/providers", headers=CLERK)).status_code == 403
        listed = (await svc.client.get("/providers", headers=OPERATOR)).json()
        assert [p["provider"]["ods"] for p in listed] == ["NWX02", "QWE03", "RXA01"]
        assert listed[1]["inbound_topic"] == topics.provider_inbound("QWE03")
        url = "/providers/NEW04"
        assert (
            await svc.client.put(url, json=mr_provider("OTH05", "X"), headers=OPERATOR)
        ).status_code == 422
        bad = {
            **mr_provider("NEW04", "N-1"),
            "sites": [{"id": "N-1", "name": "N", "walk_in": True, "modalities": {"MR": {}}}],
        }
        refused = await svc.client.put(url, json=bad, headers=OPERATOR)
        assert refused.status_code == 422
        assert "no XR" in refused.text
        created = await svc.client.put(url, json=mr_provider("NEW04", "N-1"), headers=OPERATOR)
        assert created.status_code == 201, created.text
        assert "read without a restart" in created.json()["note"]
        assert (
            await svc.client.put(url, json=mr_provider("NEW04", "N-1"), headers=OPERATOR)
        ).status_code == 200
        assert (await svc.client.get("/providers/NOPE9", headers=OPERATOR)).status_code == 404
        suspended = (await svc.client.get("/providers/RXA01", headers=OPERATOR)).json()["provider"]
        suspended["active"] = False
        assert (
            await svc.client.put("/providers/RXA01", json=suspended, headers=OPERATOR)
        ).status_code == 200

        await publish(kafka, [(from_api, topics.VETTING)])
        await reader.wait_for(
            lambda _: bool(events_of(reader, AppointmentsOffered, from_api.referral_id)),
            what="offers",
        )
        [(_, offered)] = events_of(reader, AppointmentsOffered, from_api.referral_id)
        assert "NEW04" in {o.provider_ods for o in offered.offers}
        assert "RXA01" not in {o.provider_ods for o in offered.offers}  # suspended
        api_offer = next(o for o in offered.offers if o.provider_ods == "NEW04")
        chosen = await svc.client.post(
            f"/bookings/{from_api.referral_id}/choose",
            json={"slot_id": api_offer.slot_id},
            headers=CLERK,
        )
        assert chosen.status_code == 200, chosen.text

    # After a restart the API's provider is still consumed, and the file does not undo API changes.
    async with (
        running_service(create_app(settings, clock=clock)) as svc,
        TopicReader(kafka, *watched) as reader,
    ):
        assert (await svc.client.get("/providers/RXA01", headers=OPERATOR)).json()["provider"][
            "active"
        ] is False
        clock.set(api_offer.start + timedelta(minutes=15))
        dna = ProviderPatientDidNotAttend(
            referral_id=from_api.referral_id, occurred_at=clock.now(), slot_id=api_offer.slot_id
        )
        await publish(kafka, [(dna, topics.provider_inbound("NEW04"))], source="/providers/NEW04")
        await reader.wait_for(
            lambda _: bool(events_of(reader, AppointmentMissed, from_api.referral_id)), what="DNA"
        )
