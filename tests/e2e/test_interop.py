"""A GP system that speaks only FHIR and RIS systems that speak only HL7 v2 complete a referral.

Each provider's RIS is simulated here with its own small asyncio MLLP server (orders in) and
client (status updates and results out), and talks to the pathway only through that
provider's `pathway hl7-gateway` process. The GP system posts a FHIR ServiceRequest, reads
the FHIR DiagnosticReport from its inbox and acknowledges with a FHIR Task. The referral's
timeline must match that of the same referral driven through the native interfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hl7
import httpx
import nhs_number
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from pathway_cli.actors import DEV_KEYS, Practice, ProviderSystem, eventually, timeline_types
from pathway_cli.stack import ManagedProcess, free_port
from pathway_cli.system import System
from pathway_schemas.events import (
    ProviderExaminationCompleted,
    ProviderPatientArrived,
    ProviderReportIssued,
)
from pathway_schemas.values import StudyReference

pytestmark = pytest.mark.e2e

PROVIDERS = ("RXA01", "NWX02")
PRACTICE = "A81001"
WAIT = 90.0
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"
BASE = "https://imaging-pathway.example.nhs.uk/fhir"
REFERRAL_ID_SYSTEM = f"{BASE}/Id/referral-id"
WALK_IN = "uk.nhs.imaging.provider.walk_in_authorised.v1"
NATIVE_TYPES = (
    "referral.submitted.v1",
    "vetting.accepted.v1",
    "booking.walk_in_authorised.v1",
    "examination.arrived.v1",
    "examination.completed.v1",
    "report.scheduled.v1",
    "report.issued.v1",
    "notification.delivered.v1",
    "notification.acknowledged.v1",
)


def synthetic_nhs_number() -> str:
    return str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0])


def hl7_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


# --------------------------------------------------------------------------- the RIS


async def read_frame(reader: asyncio.StreamReader) -> str | None:
    first = await reader.read(1)
    if not first:
        return None
    assert first == START_BLOCK, "the gateway sent bytes outside an MLLP frame"
    return (await reader.readuntil(END_BLOCK))[:-2].decode()


@dataclass
class SimulatedRis:
    """One provider's RIS: it takes ORM^O01 orders and sends ADT / ORM / ORU back, all HL7 v2."""

    ods: str
    orders: dict[str, list[Any]] = field(default_factory=dict)
    gateway_port: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _counter: int = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while (text := await read_frame(reader)) is not None:
                order = hl7.parse(text)
                referral_id = str(order["ORC.F2.R1.C1"])
                self.orders.setdefault(referral_id, []).append(order)
                ack = (
                    f"MSH|^~\\&|CRIS|{self.ods}|PATHWAY|PATHWAY|{hl7_time(datetime.now(UTC))}||"
                    f"ACK^O01^ACK|ACK{uuid.uuid4().hex[:12]}|P|2.5\rMSA|AA|{order['MSH.F10']}\r"
                )
                writer.write(START_BLOCK + ack.encode() + END_BLOCK)
                await writer.drain()
        writer.close()

    def control_id(self) -> str:
        self._counter += 1
        return f"CRIS{self._counter:06d}"

    async def exchange(self, payload: bytes) -> str:
        """Send raw bytes to the gateway; its framed answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.gateway_port)
        try:
            writer.write(payload)
            await writer.drain()
            answer = await asyncio.wait_for(read_frame(reader), timeout=30)
            assert answer is not None, "the gateway closed without answering"
            return answer
        finally:
            writer.close()

    async def send(self, *segments: str) -> tuple[str, Any]:
        """One HL7 message to the gateway; (MSA-1, the parsed ACK)."""
        text = "\r".join(segments) + "\r"
        answer = hl7.parse(await self.exchange(START_BLOCK + text.encode() + END_BLOCK))
        return str(answer["MSA.F1"]), answer

    def msh(self, message_type: str, at: datetime) -> str:
        return (
            f"MSH|^~\\&|CRIS|{self.ods}|PATHWAY|PATHWAY|{hl7_time(at)}||{message_type}|"
            f"{self.control_id()}|P|2.5"
        )

    async def arrived(self, referral_id: str, site: str, at: datetime) -> str:
        code, _ = await self.send(
            self.msh("ADT^A10^ADT_A09", at),
            f"EVN|A10|{hl7_time(at)}||||{hl7_time(at)}",
            f"PV1|1|O|{site}^XR1^^{self.ods}||||||||||||||||{referral_id}",
        )
        return code

    async def examined(self, referral_id: str, accession: str, study: str, at: datetime) -> str:
        code, _ = await self.send(
            self.msh("ORM^O01^ORM_O01", at),
            f"ORC|SC|{referral_id}^PATHWAY|{accession}^CRIS||CM||||{hl7_time(at)}",
            f"OBR|1|{referral_id}^PATHWAY|{accession}^CRIS|XCHES^XR Chest^L||||{hl7_time(at)}",
            f"ZDS|{study}^CRIS^Application^DICOM",
        )
        return code

    async def reported(self, referral_id: str, accession: str, at: datetime) -> str:
        obr = ["OBR", "1", f"{referral_id}^PATHWAY", f"{accession}^CRIS", "XCHES^XR Chest^L"]
        obr += [""] * 17 + [hl7_time(at), "", "", "F"] + [""] * 6 + ["GMC-7654321&Reporter&Rae"]
        code, _ = await self.send(
            self.msh("ORU^R01^ORU_R01", at),
            "|".join(obr),
            "OBX|1|TX|GDT^Findings^L||The heart is not enlarged.~The lungs are clear.||||||F",
            "OBX|2|TX|IMP^Impression^L||Normal chest radiograph.|||N|||F",
        )
        return code


class GatewayProcess(ManagedProcess):
    """`pathway hl7-gateway` for one provider, as it runs in production: its own process."""

    kind = "hl7-gateway"

    def __init__(self, ods: str, system: System, ris: SimulatedRis, work: Path) -> None:
        super().__init__(f"hl7-{ods.lower()}", free_port(), work / f"hl7-{ods.lower()}.log")
        self.ods = ods
        self.system = system
        self.ris = ris
        self.state_dir = work / "hl7-state"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pathway_cli",
            "hl7-gateway",
            "--provider",
            self.ods,
            "--ris-host",
            "127.0.0.1",
            "--ris-port",
            str(self.ris.port),
            "--listen-port",
            str(self.port),
            "--kafka-bootstrap",
            self.system.bootstrap,
            "--state-dir",
            str(self.state_dir),
            "--ack-timeout",
            "5",
        ]

    async def _probe(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), timeout=1
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    def dead_letters(self) -> list[dict[str, Any]]:
        path = self.state_dir / self.ods.lower() / "dead-letters.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]


@dataclass
class Edge:
    ris: dict[str, SimulatedRis]
    gateways: dict[str, GatewayProcess]

    async def order_for(self, referral_id: str) -> tuple[SimulatedRis, Any]:
        async def probe() -> tuple[SimulatedRis, Any] | None:
            for ris in self.ris.values():
                if referral_id in ris.orders:
                    return ris, ris.orders[referral_id][0]
            return None

        found: tuple[SimulatedRis, Any] = await eventually(
            probe, timeout=WAIT, what="an ORM^O01 at a RIS"
        )
        return found


@pytest.fixture(scope="module")
async def edge(system: System, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    work = tmp_path_factory.mktemp("interop")
    ris = {ods: SimulatedRis(ods) for ods in PROVIDERS}
    gateways: dict[str, GatewayProcess] = {}
    try:
        for ods, sim in ris.items():
            await sim.start()
            gateways[ods] = GatewayProcess(ods, system, sim, work)
            sim.gateway_port = gateways[ods].port
            gateways[ods].start()
        for gateway in gateways.values():
            await gateway.wait_ready(60)
        yield Edge(ris, gateways)
    finally:
        for gateway in gateways.values():
            gateway.stop(grace=10)
        for sim in ris.values():
            await sim.stop()


# --------------------------------------------------------------------------- the GP system


class FhirGpSystem:
    """A GP practice system that speaks only FHIR R4 to the pathway."""

    def __init__(self, http: httpx.AsyncClient, system: System, ods: str = PRACTICE) -> None:
        self.http = http
        self.system = system
        self.ods = ods
        self.headers = {"X-API-Key": DEV_KEYS[ods], "Content-Type": "application/fhir+json"}

    def service_request(self, nhs: str, order_id: str) -> dict[str, Any]:
        return {
            "resourceType": "ServiceRequest",
            "identifier": [{"system": "https://gp-system.example/Id/order", "value": order_id}],
            "status": "active",
            "intent": "order",
            "priority": "routine",
            "code": {
                "coding": [{"system": f"{BASE}/CodeSystem/examination-code", "code": "XCHES"}]
            },
            "subject": {"reference": "#patient"},
            "requester": {"reference": "#role"},
            "reasonCode": [{"text": "Cough for six weeks in a smoker"}],
            "contained": [
                {
                    "resourceType": "Patient",
                    "id": "patient",
                    "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
                },
                {
                    "resourceType": "Practitioner",
                    "id": "gp",
                    "identifier": [
                        {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "G1234567"}
                    ],
                },
                {
                    "resourceType": "Organization",
                    "id": "practice",
                    "identifier": [
                        {
                            "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                            "value": self.ods,
                        }
                    ],
                },
                {
                    "resourceType": "PractitionerRole",
                    "id": "role",
                    "practitioner": {"reference": "#gp"},
                    "organization": {"reference": "#practice"},
                },
            ],
        }

    async def post(
        self, service: str, path: str, resource: dict[str, Any] | bytes
    ) -> httpx.Response:
        content = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
        return await self.http.post(
            f"{self.system.urls[service]}{path}", content=content, headers=self.headers
        )

    async def refer(self, nhs: str) -> tuple[str, httpx.Response]:
        order_id = f"GP-ORDER-{uuid.uuid4().hex[:12]}"
        answer = await self.post(
            "request", "/fhir/ServiceRequest", self.service_request(nhs, order_id)
        )
        assert answer.status_code == 201, answer.text
        created = ServiceRequest.model_validate(answer.json())
        referral_id = next(
            str(i.value) for i in created.identifier or () if i.system == REFERRAL_ID_SYSTEM
        )
        again = await self.post(
            "request", "/fhir/ServiceRequest", self.service_request(nhs, order_id)
        )
        assert again.status_code == 200
        assert again.json()["id"] == created.id
        return referral_id, answer

    async def report_for(self, referral_id: str) -> dict[str, Any]:
        url = f"{self.system.urls['notify']}/inbox/{self.ods}/fhir/DiagnosticReport"

        async def probe() -> dict[str, Any] | None:
            answer = await self.http.get(url, headers=self.headers)
            bundle = Bundle.model_validate(answer.json())
            for entry in bundle.entry or ():
                if entry.resource is None:
                    continue
                resource = entry.resource.model_dump(mode="json", by_alias=True, exclude_none=True)
                based_on = [
                    b.get("identifier", {}).get("value") for b in resource.get("basedOn", [])
                ]
                if referral_id in based_on:
                    return resource
            return None

        resource: dict[str, Any] = await eventually(
            probe, timeout=WAIT, what="the DiagnosticReport"
        )
        return resource

    async def acknowledge(self, report: DiagnosticReport) -> httpx.Response:
        task = {
            "resourceType": "Task",
            "status": "completed",
            "intent": "order",
            "focus": {"reference": f"DiagnosticReport/{report.id}"},
            "owner": {
                "identifier": {
                    "system": "https://fhir.hl7.org.uk/Id/gmc-number",
                    "value": "G1234567",
                }
            },
            "note": [{"text": "Reviewed; no further action."}],
        }
        return await self.post("notify", "/fhir/Task", task)


# --------------------------------------------------------------------------- the scenarios


async def native_referral(system: System, http: httpx.AsyncClient) -> str:
    """The same referral through the native interfaces: REST for the GP, Kafka for the RIS."""
    practice = Practice(http, system.urls, PRACTICE)
    providers = {ods: ProviderSystem(ods, system.bootstrap) for ods in PROVIDERS}
    for provider in providers.values():
        await provider.start()
    try:
        created = await practice.submit(
            {
                "nhs_number": synthetic_nhs_number(),
                "referrer_id": "G1234567",
                "examination_code": "XCHES",
                "clinical_question": "Cough for six weeks in a smoker",
                "priority": "routine",
            }
        )
        referral_id = str(created["referral_id"])

        async def ordered() -> tuple[ProviderSystem, Any] | None:
            for provider in providers.values():
                await provider.poll(timeout_ms=50)
                for received in provider.orders.get(referral_id, []):
                    if received.envelope.type == WALK_IN:
                        return provider, received
            return None

        provider, order = await eventually(ordered, timeout=WAIT, what="the native walk-in")
        site = order.event.site_id
        now = system.advance(timedelta(hours=2))
        await provider.send(
            ProviderPatientArrived(referral_id=referral_id, occurred_at=now, site_id=site)
        )
        now = system.advance(timedelta(minutes=15))
        study = StudyReference(
            study_instance_uid=f"1.2.826.0.1.{uuid.uuid4().int % 10**12}",
            accession_number=f"N{uuid.uuid4().hex[:8]}",
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
            return "notification.delivered.v1" in timeline_types(
                await practice.referral(referral_id)
            )

        await eventually(delivered, timeout=WAIT, what="native report delivered")
        referral = await practice.referral(referral_id)
        report_id = next(
            e for e in referral["timeline"] if e["event_type"].endswith("report.issued.v1")
        )["detail"]["report_id"]
        await practice.acknowledge(report_id, by="G1234567")
        return referral_id
    finally:
        for provider in providers.values():
            await provider.stop()


async def until_acknowledged(practice: Practice, referral_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        current: dict[str, Any] = await practice.referral(referral_id)
        return current if current["state"] == "acknowledged" else None

    referral: dict[str, Any] = await eventually(probe, timeout=WAIT, what="acknowledged")
    return referral


async def test_a_fhir_gp_and_an_hl7_ris_complete_a_referral_with_the_native_timeline(
    system: System, edge: Edge, http: httpx.AsyncClient
) -> None:
    gp = FhirGpSystem(http, system)
    referral_id, created = await gp.refer(synthetic_nhs_number())
    assert created.headers["content-type"].startswith("application/fhir+json")

    ris, order = await edge.order_for(referral_id)
    assert str(order["ORC.F1"]) == "NW"
    assert str(order["TQ1.F11"]) == "walk-in"
    site = str(order["PV1.F3.R1.C1"])
    accession = f"{ris.ods}{uuid.uuid4().int % 10**6:06d}"
    study = f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**9}"

    assert await ris.arrived(referral_id, site, system.advance(timedelta(hours=2))) == "AA"
    assert (
        await ris.examined(referral_id, accession, study, system.advance(timedelta(minutes=15)))
        == "AA"
    )
    assert await ris.reported(referral_id, accession, system.advance(timedelta(hours=3))) == "AA"

    resource = await gp.report_for(referral_id)
    report = DiagnosticReport.model_validate(resource)
    assert report.status == "final"
    assert report.conclusion == "Normal chest radiograph."
    assert report.extension is not None
    assert report.extension[0].valueCode == "routine"
    acknowledged = await gp.acknowledge(report)
    assert acknowledged.status_code == 201, acknowledged.text
    assert Task.model_validate(acknowledged.json()).status == "completed"

    practice = Practice(http, system.urls, PRACTICE)
    interop = await until_acknowledged(practice, referral_id)
    assert interop["channel"] == "fhir"
    native_id = await native_referral(system, http)
    await until_acknowledged(practice, native_id)

    async def same_timelines() -> tuple[Counter[str], Counter[str]] | None:
        ours = Counter(timeline_types(await practice.referral(referral_id)))
        theirs = Counter(timeline_types(await practice.referral(native_id)))
        return (ours, theirs) if ours == theirs else None

    try:
        ours, theirs = await eventually(same_timelines, timeout=30, what="the same timeline")
    except TimeoutError:
        ours = Counter(timeline_types(await practice.referral(referral_id)))
        theirs = Counter(timeline_types(await practice.referral(native_id)))
        assert ours == theirs
    for expected in NATIVE_TYPES:
        assert ours[expected] == 1, (expected, ours)
    assert all(count == 1 for count in ours.values()), ours


async def test_malformed_hl7_and_invalid_fhir_get_negative_answers_never_a_crash(
    system: System, edge: Edge, http: httpx.AsyncClient
) -> None:
    ris, gateway = edge.ris["RXA01"], edge.gateways["RXA01"]
    before = len(gateway.dead_letters())

    garbage = await ris.exchange(START_BLOCK + b"this is not HL7" + END_BLOCK)
    assert str(hl7.parse(garbage)["MSA.F1"]) == "AR"
    unframed = await ris.exchange(b"no start block" + END_BLOCK)
    assert str(hl7.parse(unframed)["MSA.F1"]) == "AR"
    now = system.now()
    code, ack = await ris.send(
        ris.msh("ORU^R01^ORU_R01", now),
        "OBR|1|ref_00000000000000000000000000000000^PATHWAY|ACC1^CRIS|XCHES" + "|" * 21 + "F",
    )
    assert code == "AE"
    assert str(ack["ERR.F2.R1.C1"]) == "OBR"
    code, _ = await ris.send(
        ris.msh("ADT^A10^ADT_A09", now).replace(f"|CRIS|{ris.ods}|", "|CRIS|NWX02|", 1),
        "PV1|1|O|RIV-MAIN",
    )
    assert code == "AR"
    assert gateway.is_running()
    letters = gateway.dead_letters()[before:]
    assert [d["reason"] for d in letters] == [
        "malformed",
        "malformed",
        "unknown_order",
        "not_for_provider",
    ]

    gp = FhirGpSystem(http, system)
    not_json = await gp.post("request", "/fhir/ServiceRequest", b"{nope")
    assert not_json.status_code == 400
    OperationOutcome.model_validate(not_json.json())
    order_id = f"GP-ORDER-{uuid.uuid4().hex[:12]}"
    no_subject = gp.service_request(synthetic_nhs_number(), order_id)
    del no_subject["subject"]
    invalid = await gp.post("request", "/fhir/ServiceRequest", no_subject)
    assert invalid.status_code == 400  # not valid FHIR: subject is 1..1
    issues = OperationOutcome.model_validate(invalid.json()).issue
    assert [i.expression for i in issues] == [["ServiceRequest.subject"]]
    no_nhs_number = gp.service_request(synthetic_nhs_number(), order_id)
    no_nhs_number["contained"][0]["identifier"] = [
        {"system": "https://gp.example/mrn", "value": "1"}
    ]
    refused = await gp.post("request", "/fhir/ServiceRequest", no_nhs_number)
    assert refused.status_code == 422  # valid FHIR, but the pathway needs the NHS number
    issues = OperationOutcome.model_validate(refused.json()).issue
    assert [(i.code, i.expression) for i in issues] == [("required", ["ServiceRequest.subject"])]
    not_done = await gp.post(
        "notify",
        "/fhir/Task",
        {"resourceType": "Task", "status": "in-progress", "intent": "order"},
    )
    assert not_done.status_code == 422
    assert OperationOutcome.model_validate(not_done.json()).issue[0].expression == ["Task.status"]
