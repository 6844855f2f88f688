"""The steps end-to-end scenarios share, taken only through the system's public interfaces.

A `Pathway` holds the people and systems of one run (a GP practice and another, a vetting
clinician, a booking clerk, a reporter, an operator, every provider's RIS) and the steps a
scenario strings together: refer, vet, book, examine, report, acknowledge. Every wait is a
condition with a deadline (`eventually`); time moves only when a scenario moves the clock.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nhs_number

from pathway_cli.actors import (
    ApiError,
    BookingClerk,
    Json,
    Operator,
    Practice,
    ProviderNetwork,
    ProviderSystem,
    Reporter,
    VettingClinician,
    eventually,
    timeline_types,
)
from pathway_cli.system import System
from pathway_schemas.events import (
    ProviderExaminationCompleted,
    ProviderPatientArrived,
    ProviderReportIssued,
    ProviderWalkInAuthorised,
)
from pathway_schemas.values import StudyReference

# Deadlines for conditions: generous, because other test runs share this machine's two cores.
WAIT = 90.0

ORDER_BOOKED = "uk.nhs.imaging.provider.order_booked.v1"
ORDER_REBOOKED = "uk.nhs.imaging.provider.order_rebooked.v1"
ORDER_CANCELLED = "uk.nhs.imaging.provider.order_cancelled.v1"
WALK_IN = "uk.nhs.imaging.provider.walk_in_authorised.v1"

REFERRER = {"A81001": "G1234567", "B82002": "G2345678"}

EXAMINED = ("examination.completed.v1", "report.scheduled.v1")
ISSUED = "report.issued.v1"
DELIVERED = "notification.delivered.v1"


def synthetic_nhs_number() -> str:
    """A valid NHS number from the synthetic range (999 000 0000 to 999 999 9999)."""
    return str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0])


def spaced(number: str) -> str:
    return f"{number[:3]} {number[3:6]} {number[6:]}"


class Pathway:
    def __init__(self, system: System, http: httpx.AsyncClient, providers: ProviderNetwork) -> None:
        self.system = system
        self.practice = Practice(http, system.urls, "A81001")
        self.other_practice = Practice(http, system.urls, "B82002")
        self.clinician = VettingClinician(http, system.urls)
        self.clerk = BookingClerk(http, system.urls)
        self.reporter = Reporter(http, system.urls)
        self.operator = Operator(http, system.urls)
        self.providers = providers
        # Every NHS number this run used: none may turn up in a log, span or channel file.
        self.nhs_numbers: list[str] = []

    # ------------------------------------------------------------------ the clock

    def now(self) -> datetime:
        return self.system.now()

    def advance(self, delta: timedelta) -> datetime:
        return self.system.advance(delta)

    def at_least(self, moment: datetime) -> datetime:
        """Move the shared clock on to `moment` (never back: other scenarios share it)."""
        if moment > self.now():
            self.system.set_time(moment)
        return self.now()

    # ------------------------------------------------------------------ the practice

    def patient(self) -> str:
        number = synthetic_nhs_number()
        self.nhs_numbers.append(number)
        return number

    async def refer(
        self,
        examination_code: str,
        clinical_question: str,
        *,
        priority: str = "routine",
        nhs: str | None = None,
        practice: Practice | None = None,
    ) -> Json:
        practice = practice or self.practice
        number = nhs or self.patient()
        created: Json = await practice.submit(
            {
                "nhs_number": spaced(number),
                "referrer_id": REFERRER[practice.ods],
                "examination_code": examination_code,
                "clinical_question": clinical_question,
                "priority": priority,
            }
        )
        return created

    async def until(
        self,
        referral_id: str,
        condition: Callable[[Json], bool],
        what: str,
        *,
        practice: Practice | None = None,
        timeout: float = WAIT,
        tick: timedelta | None = None,
    ) -> Json:
        """The referral as its practice reads it, once `condition` holds.

        With `tick`, simulated time passes while waiting (`tick` a second): for work the
        services retry on the pathway clock, such as a notice whose referral notify had not
        yet read (it tries again 30 s of pathway time later).
        """
        reader = practice or self.practice
        ticked = time.monotonic()

        async def probe() -> Json | None:
            nonlocal ticked
            referral = await reader.referral(referral_id)
            if condition(referral):
                return referral
            if tick is not None and time.monotonic() - ticked >= 1.0:
                self.advance(tick)
                ticked = time.monotonic()
            return None

        result: Json = await eventually(probe, timeout=timeout, what=f"{referral_id}: {what}")
        return result

    async def until_state(
        self, referral_id: str, state: str, *, practice: Practice | None = None
    ) -> Json:
        return await self.until(
            referral_id, lambda r: r["state"] == state, f"state {state}", practice=practice
        )

    async def until_event(
        self,
        referral_id: str,
        event_type: str,
        count: int = 1,
        *,
        practice: Practice | None = None,
        timeout: float = WAIT,
    ) -> Json:
        return await self.until(
            referral_id,
            lambda r: timeline_types(r).count(event_type) >= count,
            f"{count} x {event_type}",
            practice=practice,
            timeout=timeout,
        )

    async def until_timeline(
        self,
        referral_id: str,
        expected: Iterable[str] | dict[str, int],
        *,
        practice: Practice | None = None,
    ) -> Json:
        """The referral once every expected event is on its timeline (as often as given).

        Events reach the timeline from six topics in no fixed order across them, so a
        scenario waits for all it expects before it checks that none came twice.
        """
        counts = dict(expected) if isinstance(expected, dict) else dict.fromkeys(expected, 1)
        return await self.until(
            referral_id,
            lambda r: all(timeline_types(r).count(name) >= n for name, n in counts.items()),
            f"timeline with {counts}",
            practice=practice,
        )

    async def settled(
        self,
        referral_id: str,
        expected: Iterable[str] | dict[str, int],
        *,
        practice: Practice | None = None,
    ) -> Json:
        """The referral once its timeline has the expected events, each exactly as often."""
        referral = await self.until_timeline(referral_id, expected, practice=practice)
        assert_timeline(referral, expected)
        return referral

    async def until_notice(
        self,
        referral_id: str,
        notice: str,
        *,
        to: str = "referrer",
        count: int = 1,
        practice: Practice | None = None,
    ) -> Json:
        """The referral once notify has told the referrer (or patient) `notice` `count` times."""
        event_type = f"notification.{to}_notified.v1"
        return await self.until(
            referral_id,
            lambda r: notices(r, event_type).count(notice) >= count,
            f"{to} told {notice}",
            practice=practice,
            tick=timedelta(minutes=1),
        )

    # ------------------------------------------------------------------ vetting

    async def on_worklist(self, referral_id: str) -> Json:
        """The vetting item once it waits for a clinician."""

        async def probe() -> Json | None:
            try:
                item = await self.clinician.item(referral_id)
            except ApiError as error:
                if error.status == 404:
                    return None
                raise
            return item if item["state"] == "waiting" else None

        result: Json = await eventually(probe, timeout=WAIT, what=f"{referral_id} on the worklist")
        return result

    # ------------------------------------------------------------------ booking

    async def booking_when(
        self, referral_id: str, condition: Callable[[Json], bool], what: str
    ) -> Json:
        async def probe() -> Json | None:
            try:
                booking = await self.clerk.booking(referral_id)
            except ApiError as error:
                if error.status == 404:
                    return None
                raise
            return booking if condition(booking) else None

        result: Json = await eventually(probe, timeout=WAIT, what=f"{referral_id}: {what}")
        return result

    async def offered(self, referral_id: str) -> Json:
        return await self.booking_when(
            referral_id, lambda b: b["state"] == "offered" and bool(b["offers"]), "offers"
        )

    async def booked(self, referral_id: str, slot_id: str | None = None) -> Json:
        return await self.booking_when(
            referral_id,
            lambda b: (
                b["state"] == "booked"
                and b["appointment"] is not None
                and (slot_id is None or b["appointment"]["slot_id"] == slot_id)
            ),
            f"booked{' in ' + slot_id if slot_id else ''}",
        )

    async def order(self, referral_id: str, event_type: str = ORDER_BOOKED) -> ProviderSystem:
        """The provider that received this order for the referral."""
        provider, _ = await self.providers.wait_for_order(referral_id, event_type, timeout=WAIT)
        return provider

    # ------------------------------------------------------------------ the provider

    async def arrive(self, referral_id: str, provider: ProviderSystem, site_id: str) -> None:
        await provider.send(
            ProviderPatientArrived(referral_id=referral_id, occurred_at=self.now(), site_id=site_id)
        )

    async def complete(
        self, referral_id: str, provider: ProviderSystem, site_id: str, minutes: int = 15
    ) -> StudyReference:
        study = StudyReference(
            study_instance_uid=f"1.2.826.0.1.3680043.{uuid.uuid4().int % 10**12}",
            accession_number=f"{provider.ods}{uuid.uuid4().int % 10**6:06d}",
        )
        occurred = self.advance(timedelta(minutes=minutes))
        await provider.send(
            ProviderExaminationCompleted(
                referral_id=referral_id, occurred_at=occurred, site_id=site_id, study=study
            )
        )
        return study

    async def attend_appointment(self, referral_id: str, appointment: Json) -> ProviderSystem:
        """The patient comes at the appointment's start and is examined; the provider says so."""
        provider = self.providers[appointment["provider_ods"]]
        self.at_least(datetime.fromisoformat(appointment["start"]))
        await self.arrive(referral_id, provider, appointment["site_id"])
        await self.complete(referral_id, provider, appointment["site_id"])
        # Completion and its reporting deadline come on two topics, in either order.
        await self.until_timeline(referral_id, EXAMINED)
        return provider

    async def provider_report(
        self,
        referral_id: str,
        provider: ProviderSystem,
        *,
        finding_flag: str = "routine",
        status: str = "final",
    ) -> str:
        """The provider's report; returns the provider's own id (the pathway issues its own)."""
        report_id = f"RPT-{uuid.uuid4().hex[:12]}"
        await provider.send(
            ProviderReportIssued(
                referral_id=referral_id,
                occurred_at=self.now(),
                report_id=report_id,
                status=status,
                text="Findings as described by the reporting radiologist.",
                conclusion="Conclusion for the referrer.",
                finding_flag=finding_flag,
                reported_by="GMC-7654321",
            )
        )
        return report_id

    async def walk_in_examined(
        self, clinical_question: str = "Cough for six weeks in a smoker"
    ) -> tuple[str, ProviderSystem]:
        """A plain chest X-ray under open access, walked in and examined; its id and provider."""
        created = await self.refer("XCHES", clinical_question)
        referral_id: str = created["referral_id"]
        provider, order = await self.providers.wait_for_order(referral_id, WALK_IN, timeout=WAIT)
        assert isinstance(order.event, ProviderWalkInAuthorised)
        site_id = order.event.site_id
        self.advance(timedelta(hours=1))
        await self.arrive(referral_id, provider, site_id)
        await self.complete(referral_id, provider, site_id)
        # Completion and its reporting deadline come on two topics, in either order.
        await self.until_timeline(referral_id, EXAMINED)
        return referral_id, provider

    # ------------------------------------------------------------------ report to acknowledgement

    async def report_id(
        self, referral_id: str, *, practice: Practice | None = None, after: str | None = None
    ) -> str:
        """The id of the referral's report, once its issue (and `after`, if given) is on the
        timeline: events of the report and notification topics arrive in either order."""
        wanted = [ISSUED] + ([after] if after else [])
        referral = await self.until_timeline(referral_id, wanted, practice=practice)
        entry = next(e for e in referral["timeline"] if e["event_type"].endswith(ISSUED))
        report_id: str = entry["detail"]["report_id"]
        return report_id

    async def delivered_and_acknowledged(self, referral_id: str) -> Json:
        """Wait for the report's delivery; the practice acknowledges it; the final referral."""
        report_id = await self.report_id(referral_id, after=DELIVERED)
        await self.practice.acknowledge(report_id, by=REFERRER["A81001"], action="Reviewed")
        return await self.until_state(referral_id, "acknowledged")


# ---------------------------------------------------------------------- timeline checks


def assert_timeline(referral: Json, expected: Iterable[str] | dict[str, int]) -> None:
    """Each expected event is on the timeline exactly once (or exactly as often as given)."""
    counts = dict(expected) if isinstance(expected, dict) else dict.fromkeys(expected, 1)
    types = timeline_types(referral)
    wrong = {name: types.count(name) for name, n in counts.items() if types.count(name) != n}
    assert not wrong, f"expected {counts}, found {wrong} in {types}"
    ids = [e["event_id"] for e in referral["timeline"]]
    assert len(ids) == len(set(ids)), f"an event is on the timeline twice: {types}"


def assert_before(referral: Json, *ordered: str) -> None:
    """These events are on the timeline in this order."""
    types = timeline_types(referral)
    positions = [types.index(name) for name in ordered]
    assert positions == sorted(positions), f"expected {ordered} in order, found {types}"


def notices(referral: Json, event_type: str) -> list[str]:
    """The notices (PatientNotified or ReferrerNotified) on the timeline, in order."""
    return [
        e["detail"]["notice"] for e in referral["timeline"] if e["event_type"].endswith(event_type)
    ]


def detail(referral: Json, event_type: str, index: int = 0) -> dict[str, str]:
    entries = [e for e in referral["timeline"] if e["event_type"].endswith(event_type)]
    found: dict[str, str] = entries[index]["detail"]
    return found


# ---------------------------------------------------------------------- patient data in the logs


def files_to_scan(system: System) -> list[Path]:
    """Every log of the run (services, broker, store) and notify's channel files."""
    found = sorted(p for p in system.log_dir.rglob("*") if p.is_file())
    if system.channel_dir is not None and system.channel_dir.exists():
        found += sorted(p for p in system.channel_dir.rglob("*") if p.is_file())
    return found


def nhs_number_patterns(numbers: Iterable[str]) -> re.Pattern[str]:
    """Each number as written anywhere: ten digits, or 3-3-4 with spaces or dashes."""
    forms = []
    for number in numbers:
        a, b, c = number[:3], number[3:6], number[6:]
        forms.append(rf"(?<![0-9]){a}[ -]?{b}[ -]?{c}(?![0-9])")
    return re.compile("|".join(forms))


def find_nhs_numbers(system: System, numbers: Iterable[str]) -> list[str]:
    """Where (file and line number) any of these NHS numbers was written."""
    pattern = nhs_number_patterns(numbers)
    hits = []
    for path in files_to_scan(system):
        text = path.read_text("utf-8", errors="replace")
        for line_number, line in enumerate(text.splitlines(), start=1):
            if pattern.search(line):
                hits.append(f"{path.name}:{line_number}")
    return hits


def printed_spans(log: Path) -> list[dict[str, Any]]:
    """The spans a service printed to its log (OpenTelemetry console exporter, one a line)."""
    spans = []
    for line in log.read_text("utf-8", errors="replace").splitlines():
        if not line.startswith('{"span": '):
            continue
        try:
            spans.append(json.loads(line))
        except ValueError:
            continue
    return spans


async def scrape(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(f"{url}/metrics")
    response.raise_for_status()
    return response.text


def sample_value(exposition: str, series: str) -> float:
    """The value of one series in a Prometheus text exposition (labels in any order)."""
    name, _, labels = series.partition("{")
    wanted = set(labels.rstrip("}").split(",")) if labels else set()
    total = 0.0
    found = False
    for line in exposition.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        line_name, _, line_labels = head.partition("{")
        if line_name != name:
            continue
        have = set(line_labels.rstrip("}").split(",")) if line_labels else set()
        if wanted <= have:
            found = True
            total += float(value)
    return total if found else float("nan")


def families(exposition: str) -> set[str]:
    """The metric families a Prometheus text exposition declares."""
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}
