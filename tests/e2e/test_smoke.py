"""One plain X-ray referral from request to acknowledged report, through all five services."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from pathway_cli.actors import Practice, ProviderNetwork, eventually, timeline_types
from pathway_cli.system import System
from pathway_schemas.events import (
    ProviderExaminationCompleted,
    ProviderPatientArrived,
    ProviderReportIssued,
    ProviderWalkInAuthorised,
)
from pathway_schemas.values import StudyReference

pytestmark = pytest.mark.e2e


async def test_open_access_chest_xray_walks_in_and_its_report_is_acknowledged(
    system: System, practice: Practice, providers: ProviderNetwork
) -> None:
    created = await practice.submit(
        {
            "nhs_number": "943 476 5919",
            "referrer_id": "G1234567",
            "examination_code": "XCHES",
            "clinical_question": "Cough for six weeks in a smoker",
            "priority": "routine",
        }
    )
    referral_id = created["referral_id"]
    # Walk-ins are spread over the providers' walk-in sites: either may get it.
    provider, order = await providers.wait_for_order(
        referral_id, "uk.nhs.imaging.provider.walk_in_authorised.v1"
    )
    assert isinstance(order.event, ProviderWalkInAuthorised)
    site = order.event.site_id
    now = system.advance(timedelta(hours=2))
    await provider.send(
        ProviderPatientArrived(referral_id=referral_id, occurred_at=now, site_id=site)
    )
    now = system.advance(timedelta(minutes=15))
    study = StudyReference(
        study_instance_uid=f"1.2.826.0.1.{uuid.uuid4().int % 10**12}",
        accession_number="RXA0100001",
    )
    await provider.send(
        ProviderExaminationCompleted(
            referral_id=referral_id, occurred_at=now, site_id=site, study=study
        )
    )
    now = system.advance(timedelta(hours=3))
    await provider.send(
        ProviderReportIssued(
            referral_id=referral_id,
            occurred_at=now,
            report_id=f"RPT-{uuid.uuid4().hex[:8]}",
            status="final",
            text="The lungs are clear.",
            conclusion="Normal chest radiograph.",
            finding_flag="routine",
            reported_by="GMC-7654321",
        )
    )

    async def delivered() -> bool:
        referral = await practice.referral(referral_id)
        # The issue and the delivery come on two topics: either may be recorded first.
        return {"report.issued.v1", "notification.delivered.v1"} <= set(timeline_types(referral))

    await eventually(delivered, timeout=90, what="report delivered")
    referral = await practice.referral(referral_id)
    report_id = next(
        e for e in referral["timeline"] if e["event_type"].endswith("report.issued.v1")
    )["detail"]["report_id"]
    await practice.acknowledge(report_id, by="G1234567")

    async def acknowledged() -> dict[str, object] | None:
        current = await practice.referral(referral_id)
        return current if current["state"] == "acknowledged" else None

    final = await eventually(acknowledged, timeout=60, what="acknowledged")
    types = timeline_types(final)
    for expected in (
        "referral.submitted.v1",
        "vetting.accepted.v1",
        "booking.walk_in_authorised.v1",
        "examination.arrived.v1",
        "examination.completed.v1",
        "report.scheduled.v1",
        "report.issued.v1",
        "notification.delivered.v1",
        "notification.acknowledged.v1",
    ):
        assert types.count(expected) == 1, (expected, types)
