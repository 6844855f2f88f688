"""Who may do what: every HTTP endpoint of every service against every role, and providers
acting on referrals that are not theirs.

The matrix is a table: for each endpoint (as its service's OpenAPI document names it) the
status each caller gets. A caller the design admits gets the endpoint's real answer for the
referral of this run (200, 201, or 404 / 409 where the referral is another practice's or
past that step); any other authenticated caller gets 403; no key or an unknown key, 401.
A test checks that the table names every endpoint the services serve, so a new endpoint
cannot go untested.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest

from pathway_cli.actors import DEV_KEYS, Json, timeline_types
from pathway_cli.system import System
from pathway_schemas import topics
from pathway_schemas.events import (
    DeadLetter,
    ProviderExaminationCompleted,
    ProviderPatientArrived,
    ProviderPatientDidNotAttend,
    ProviderReportIssued,
)
from pathway_schemas.values import StudyReference
from services.notify.fhir import REPORT_ID_SYSTEM
from tests.e2e.support import REFERRER, Pathway, find_nhs_numbers, scrape
from tests.harness import TopicReader

pytestmark = pytest.mark.e2e

ROLES = (
    "practice_own",
    "practice_other",
    "provider_own",
    "provider_other",
    "vetting",
    "reporter",
    "clerk",
    "operator",
    "no_key",
    "unknown_key",
)
UNAUTHENTICATED = ("no_key", "unknown_key")


def only(**admitted: int) -> dict[str, int]:
    """Statuses by role: the admitted roles' answers; 403 for other callers; 401 without a key."""
    unknown = set(admitted) - set(ROLES)
    assert not unknown, unknown
    return {role: admitted.get(role, 401 if role in UNAUTHENTICATED else 403) for role in ROLES}


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


@dataclass(frozen=True)
class Row:
    service: str
    method: str
    route: str  # the path template of the service's OpenAPI document
    expect: dict[str, int]
    path: str = ""  # the concrete path, with {placeholders} from the World
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def row(service: str, method: str, route: str, expect: dict[str, int], **kw: Any) -> Row:
    return Row(service, method, route, expect, path=kw.pop("path", route), **kw)


PUBLIC = [
    row(service, "GET", route, everyone(200))
    for service in ("request", "vetting", "scheduling", "reporting", "notify")
    for route in ("/healthz", "/readyz", "/metrics")
]

# {referral}: a chest X-ray of practice A81001, walked in at {provider}, reported by the
# reporter (report {report}), delivered ({delivery}, receipt {receipt}) and acknowledged.
TABLE = [
    *PUBLIC,
    # ------------------------------------------------------------------ request
    row(
        "request",
        "POST",
        "/referrals",
        only(practice_own=201, practice_other=403),
        headers={"Idempotency-Key": "matrix-{role}-referral"},
        body={
            "nhs_number": "{nhs}",
            "practice_ods": "A81001",
            "referrer_id": "G1234567",
            "examination_code": "UABDO",
            "clinical_question": "Upper abdominal pain for a month",
            "priority": "routine",
        },
    ),
    row(
        "request",
        "GET",
        "/referrals/{referral_id}",
        only(
            practice_own=200,
            practice_other=404,
            provider_own=200,
            provider_other=404,
            vetting=200,
            reporter=200,
            clerk=200,
            operator=200,
        ),
        path="/referrals/{referral}",
    ),
    row(
        "request",
        "GET",
        "/referrals",
        only(practice_own=200, practice_other=403, operator=200),
        path="/referrals?practice=A81001",
    ),
    row(
        "request",
        "POST",
        "/referrals/{referral_id}/cancel",
        only(practice_own=409, practice_other=404, operator=409),
        path="/referrals/{referral}/cancel",
        body={"reason": "no_longer_needed", "cancelled_by": "G1234567"},
    ),
    row(
        "request",
        "POST",
        "/referrals/{referral_id}/answer",
        only(practice_own=409, practice_other=404),
        path="/referrals/{referral}/answer",
        body={"query_id": "q_0000", "answer": "Not pregnant", "answered_by": "G1234567"},
    ),
    row(
        "request",
        "POST",
        "/referrals/{referral_id}/amend",
        only(practice_own=409, practice_other=404),
        path="/referrals/{referral}/amend",
        body={"amended_by": "G1234567", "clinical_question": "Cough for eight weeks now"},
    ),
    # The FHIR read of a referral: the same readers as the native one.
    row(
        "request",
        "GET",
        "/fhir/ServiceRequest/{resource_id}",
        only(
            practice_own=200,
            practice_other=404,
            provider_own=200,
            provider_other=404,
            vetting=200,
            reporter=200,
            clerk=200,
            operator=200,
        ),
        path="/fhir/ServiceRequest/{fhir_referral}",
    ),
    # FHIR intake: the body is not a ServiceRequest, so an admitted caller gets 400.
    row(
        "request",
        "POST",
        "/fhir/ServiceRequest",
        only(practice_own=400, practice_other=400),
        body={"resourceType": "Patient"},
    ),
    row(
        "request",
        "POST",
        "/guidance",
        only(practice_own=200, practice_other=200, vetting=200, operator=200),
        body={"examination_code": "XCHES", "clinical_question": "Cough for six weeks"},
    ),
    # ------------------------------------------------------------------ vetting
    row("vetting", "GET", "/worklist", only(vetting=200, operator=200)),
    row(
        "vetting",
        "GET",
        "/worklist/{referral_id}",
        only(vetting=200, operator=200),
        path="/worklist/{referral}",
    ),
    row(
        "vetting",
        "POST",
        "/worklist/{referral_id}/accept",
        only(vetting=409),
        path="/worklist/{referral}/accept",
        body={"protocol": "PA chest", "justified_by": "GMC-1111111"},
    ),
    row(
        "vetting",
        "POST",
        "/worklist/{referral_id}/return",
        only(vetting=409),
        path="/worklist/{referral}/return",
        body={"reason": "other", "advice": "Not needed"},
    ),
    row(
        "vetting",
        "POST",
        "/worklist/{referral_id}/query",
        only(vetting=409),
        path="/worklist/{referral}/query",
        body={"question": "Any red flags?"},
    ),
    # ------------------------------------------------------------------ scheduling
    row(
        "scheduling",
        "GET",
        "/bookings/{referral_id}",
        only(clerk=200, operator=200),
        path="/bookings/{referral}",
    ),
    row(
        "scheduling",
        "GET",
        "/bookings/{referral_id}/availability",
        only(clerk=200, operator=200),
        path="/bookings/{referral}/availability",
    ),
    row(
        "scheduling",
        "POST",
        "/bookings/{referral_id}/choose",
        only(clerk=409, operator=409),
        path="/bookings/{referral}/choose",
        body={"slot_id": "RXA01.RIV-MAIN.XR.1.20260325T0900Z"},
    ),
    row(
        "scheduling",
        "POST",
        "/bookings/{referral_id}/rebook",
        only(clerk=409, operator=409),
        path="/bookings/{referral}/rebook",
        body={},
    ),
    row(
        "scheduling",
        "POST",
        "/bookings/{referral_id}/cancel",
        only(clerk=409, operator=409),
        path="/bookings/{referral}/cancel",
        body={"reason": "patient_request"},
    ),
    row(
        "scheduling",
        "POST",
        "/bookings/{referral_id}/defer",
        only(clerk=409, operator=409),
        path="/bookings/{referral}/defer",
        body={"reason": "holiday", "available_from": "2026-04-01"},
    ),
    row("scheduling", "GET", "/providers", only(operator=200)),
    row("scheduling", "GET", "/providers/{ods}", only(operator=200), path="/providers/{provider}"),
    row(
        "scheduling",
        "PUT",
        "/providers/{ods}",
        only(operator=200),
        path="/providers/{provider}",
        body="{provider_entry}",
    ),
    # ------------------------------------------------------------------ reporting
    row(
        "reporting",
        "GET",
        "/worklist",
        only(reporter=200, operator=200, provider_own=200, provider_other=403),
        path="/worklist?provider={provider}",
    ),
    row(
        "reporting",
        "GET",
        "/examinations/{referral_id}",
        only(reporter=200, operator=200, provider_own=200, provider_other=403),
        path="/examinations/{referral}",
    ),
    row(
        "reporting",
        "POST",
        "/examinations/{referral_id}/reports",
        only(reporter=409),
        path="/examinations/{referral}/reports",
        body={
            "status": "final",
            "text": "A second final report",
            "conclusion": "Refused",
            "finding_flag": "routine",
        },
    ),
    row(
        "reporting",
        "POST",
        "/reports/{report_id}/addenda",
        only(reporter=201),
        path="/reports/{report}/addenda",
        body={"text": "Addendum: the heart size is normal.", "finding_flag": "routine"},
    ),
    row(
        "reporting",
        "POST",
        "/examinations/{referral_id}/delay",
        only(reporter=409),
        path="/examinations/{referral}/delay",
        body={"reason": "mdt"},
    ),
    # ------------------------------------------------------------------ notify
    row(
        "notify",
        "POST",
        "/reports/{report_id}/acknowledge",
        only(practice_own=200, practice_other=403),
        path="/reports/{report}/acknowledge",
        body={"action": "Reviewed"},
    ),
    row(
        "notify",
        "GET",
        "/reports/{report_id}",
        only(practice_own=200, practice_other=403, operator=200),
        path="/reports/{report}",
    ),
    row(
        "notify",
        "POST",
        "/fhir/Task",
        only(practice_own=200, practice_other=403),
        body={
            "resourceType": "Task",
            "status": "completed",
            "intent": "order",
            "focus": {"identifier": {"system": REPORT_ID_SYSTEM, "value": "{report}"}},
        },
    ),
    row(
        "notify",
        "GET",
        "/inbox/{practice_ods}/fhir/DiagnosticReport",
        only(practice_own=200, practice_other=403),
        path="/inbox/A81001/fhir/DiagnosticReport",
    ),
    row("notify", "GET", "/alerts", only(operator=200)),
    row("notify", "GET", "/deliveries", only(operator=200)),
    row(
        "notify",
        "POST",
        "/deliveries/{delivery_id}/redeliver",
        only(operator=409),
        path="/deliveries/{delivery}/redeliver",
    ),
    row(
        "notify",
        "GET",
        "/inbox/{practice_ods}",
        only(practice_own=200, practice_other=403),
        path="/inbox/A81001",
    ),
    # The practice's own endpoint takes signed deliveries only: no API key opens it.
    row(
        "notify",
        "POST",
        "/inbox/{practice_ods}/reports",
        everyone(401),
        path="/inbox/A81001/reports",
        body={"resourceType": "DiagnosticReport"},
    ),
    row(
        "notify",
        "POST",
        "/inbox/{practice_ods}/reports/{receipt_id}/acknowledge",
        only(practice_own=200, practice_other=403),
        path="/inbox/A81001/reports/{receipt}/acknowledge",
        body={},
    ),
]


@dataclass
class World:
    """What the table's placeholders stand for in this run."""

    referral: str
    provider: str
    other_provider: str
    report: str
    delivery: str
    receipt: str
    provider_entry: Json

    def keys(self) -> dict[str, str | None]:
        return {
            "practice_own": DEV_KEYS["A81001"],
            "practice_other": DEV_KEYS["B82002"],
            "provider_own": DEV_KEYS[self.provider],
            "provider_other": DEV_KEYS[self.other_provider],
            "vetting": DEV_KEYS["vetting"],
            "reporter": DEV_KEYS["reporter"],
            "clerk": DEV_KEYS["clerk"],
            "operator": DEV_KEYS["operator"],
            "no_key": None,
            "unknown_key": "not-a-key-anyone-has",
        }

    def fill(self, template: str, role: str, nhs: str) -> str:
        values = {
            "referral": self.referral,
            # A FHIR id has no underscore (services/request/fhir.py `fhir_id`).
            "fhir_referral": self.referral.replace("_", "-"),
            "provider": self.provider,
            "report": self.report,
            "delivery": self.delivery,
            "receipt": self.receipt,
            "role": role,
            "nhs": nhs,
        }
        for name, value in values.items():
            template = template.replace(f"{{{name}}}", value)
        return template


@pytest.fixture(scope="module")
async def world(pathway: Pathway) -> World:
    referral_id, provider = await pathway.walk_in_examined()
    pathway.advance(timedelta(hours=1))
    receipt = await pathway.reporter.report(
        referral_id,
        status="final",
        text="The lungs are clear.",
        conclusion="Normal chest radiograph.",
        finding_flag="routine",
    )
    await pathway.delivered_and_acknowledged(referral_id)
    report = await pathway.practice.report(receipt["report_id"])
    [item] = [i for i in await pathway.practice.inbox() if i["report_id"] == receipt["report_id"]]
    entry = await pathway.operator.provider(provider.ods)
    return World(
        referral=referral_id,
        provider=provider.ods,
        other_provider=pathway.providers.other_than(provider.ods).ods,
        report=receipt["report_id"],
        delivery=report["deliveries"][0]["delivery_id"],
        receipt=item["receipt_id"],
        provider_entry=entry["provider"],
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        yield http


async def test_the_table_names_every_endpoint_every_service_serves(
    system: System, client: httpx.AsyncClient
) -> None:
    served = set()
    for service, url in system.urls.items():
        document = (await client.get(f"{url}/openapi.json")).json()
        for route, operations in document["paths"].items():
            served |= {(service, method.upper(), route) for method in operations}
    tabled = {(r.service, r.method, r.route) for r in TABLE}
    assert served - tabled == set(), "endpoints without a row in the table"
    assert tabled - served == set(), "rows for endpoints no service serves"


async def test_every_endpoint_admits_exactly_the_roles_its_design_allows(
    system: System, pathway: Pathway, world: World, client: httpx.AsyncClient
) -> None:
    keys = world.keys()
    wrong = []
    for entry in TABLE:
        for role in ROLES:
            headers = {k: world.fill(v, role, "") for k, v in entry.headers.items()}
            if keys[role] is not None:
                # Unknown keys come as a bearer token: both ways of sending one are checked.
                if role == "unknown_key":
                    headers["Authorization"] = f"Bearer {keys[role]}"
                else:
                    headers["X-API-Key"] = str(keys[role])
            body = entry.body
            if body == "{provider_entry}":
                body = world.provider_entry
            elif body is not None:
                text = json.dumps(body)
                nhs = pathway.patient() if "{nhs}" in text else ""
                body = json.loads(world.fill(text, role, nhs))
            url = system.urls[entry.service] + world.fill(entry.path, role, "")
            response = await client.request(entry.method, url, json=body, headers=headers)
            expected = entry.expect[role]
            if response.status_code != expected:
                wrong.append(
                    f"{entry.method} {entry.service}{entry.route} as {role}: "
                    f"{response.status_code} (expected {expected}) {response.text[:120]}"
                )
    assert wrong == [], "\n".join(wrong)

    # Role refusals are counted by every service that made one.
    for service in ("request", "vetting", "scheduling", "reporting", "notify"):
        text = await scrape(client, system.urls[service])
        assert f'pathway_authz_denied_total{{channel="http",service="{service}"}}' in text


async def test_provider_events_for_a_referral_assigned_elsewhere_are_refused_dead_lettered_and_counted(
    system: System, pathway: Pathway, world: World, client: httpx.AsyncClient
) -> None:
    intruder = pathway.providers[world.other_provider]
    before = await pathway.practice.referral(world.referral)
    before_denied = {
        service: denied_total(await scrape(client, system.urls[service]), "kafka")
        for service in ("scheduling", "reporting")
    }
    now = pathway.now()
    sent = [
        await intruder.send(
            ProviderPatientArrived(referral_id=world.referral, occurred_at=now, site_id="ANY")
        ),
        await intruder.send(
            ProviderPatientDidNotAttend(
                referral_id=world.referral,
                occurred_at=now,
                slot_id=f"{intruder.ods}.SITE.XR.1.20260302T0900Z",
            )
        ),
        await intruder.send(
            ProviderExaminationCompleted(
                referral_id=world.referral,
                occurred_at=now,
                site_id="ANY",
                study=StudyReference(study_instance_uid="1.2.3.4", accession_number="X1"),
            )
        ),
        await intruder.send(
            ProviderReportIssued(
                referral_id=world.referral,
                occurred_at=now,
                report_id="FORGED-1",
                status="final",
                text="Forged",
                conclusion="Forged",
                finding_flag="critical",
                reported_by="GMC-0000000",
            )
        ),
    ]
    # Scheduling acts on arrivals and did-not-attends; reporting on arrivals, completions
    # and reports: each refuses what it acts on, for a referral it knows is assigned elsewhere.
    expected = {"scheduling": {sent[0], sent[1]}, "reporting": {sent[0], sent[2], sent[3]}}
    dead_letter_topics = [topics.dead_letter(s) for s in expected]
    async with TopicReader(system.bootstrap, *dead_letter_topics) as reader:

        def refused(records: list[Any]) -> bool:
            seen = {(r.topic, letter(r).event_id) for r in records}
            return all(
                (topics.dead_letter(s), event_id) in seen
                for s, ids in expected.items()
                for event_id in ids
            )

        records = await reader.wait_for(refused, timeout=90, what="denied provider events")
    for record in records:
        dead = letter(record)
        if dead.event_id not in set(sent):
            continue
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["dlq_reason"] == "denied"
        assert dead.reason.startswith("denied:")
        assert dead.original_topic == topics.provider_inbound(intruder.ods)
        assert record.key == world.referral.encode()
        # The dead letter keeps the original record, which named no patient.
        assert base64.b64decode(dead.original_value_b64)

    for service, ids in expected.items():
        text = await scrape(client, system.urls[service])
        assert denied_total(text, "kafka") >= before_denied[service] + len(ids)
        assert dead_letters(text, service, "denied") >= len(ids)

    # Nothing the intruder sent reached the referral.
    after = await pathway.practice.referral(world.referral)
    assert timeline_types(after) == timeline_types(before)
    assert after["state"] == before["state"]


async def test_a_practice_lists_only_its_own_referrals_and_cannot_cancel_anothers(
    pathway: Pathway, world: World
) -> None:
    own = await pathway.practice.request.call("GET", "/referrals", params={"limit": 100})
    other = await pathway.other_practice.request.call("GET", "/referrals", params={"limit": 100})
    assert world.referral in {r["referral_id"] for r in own["items"]}
    assert world.referral not in {r["referral_id"] for r in other["items"]}
    assert {r["practice_ods"] for r in other["items"]} <= {"B82002"}
    await pathway.other_practice.cancel(world.referral, by=REFERRER["B82002"], ok=(404,))
    assert (await pathway.practice.referral(world.referral))["state"] == "acknowledged"


def letter(record: Any) -> DeadLetter:
    return DeadLetter.model_validate_json(record.value)


def denied_total(exposition: str, channel: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("pathway_authz_denied_total{") and f'channel="{channel}"' in line
    )


def dead_letters(exposition: str, service: str, reason: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("pathway_dead_letters_total{")
        and f'reason="{reason}"' in line
        and f'service="{service}"' in line
    )


async def test_no_nhs_number_used_here_is_in_any_log_span_or_channel_file(
    system: System, pathway: Pathway, world: World
) -> None:
    # The matrix submitted referrals with these numbers and read them back.
    assert len(pathway.nhs_numbers) >= 2
    assert find_nhs_numbers(system, pathway.nhs_numbers) == []
