"""`pathway simulate`: a month of referrals played through the running system in minutes.

Three parts:
- the workload (`plan_workload`): seeded, pure, and decided before the run. Each planned
  referral carries everything its people will do (practice, referrer, patient, examination,
  question, priority, and every later choice: the vetting clinician's draw, the patient's
  choice of slot or deferral, attendance, reporting delay, finding, acknowledgement delay).
- the run (`Simulation`): an ephemeral system on a simulated clock (`running_system`),
  driven only through the public interfaces: the practices, the vetting clinician, the
  booking clerk and the reporter through their HTTP APIs with their keys, the providers
  through their own Kafka topics. The clock moves on a grid (30 minutes by default), and
  only to the next moment when someone has something to do or a deadline of the system
  falls; before it moves, the system is let to settle (every consumer group caught up).
- the summary and the export: the events of the run, counted, and written to
  `<out>/events.jsonl` for `pathway audit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import importlib
import itertools
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import nhs_number
import typer
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped,unused-ignore]
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pathway_cli.actors import (
    DEV_KEYS,
    ApiError,
    BookingClerk,
    Practice,
    ProviderSystem,
    Reporter,
    VettingClinician,
)
from pathway_cli.audit.export import write_jsonl
from pathway_cli.audit.source import EventBatch, partition_reader, read_kafka, read_to_end
from pathway_cli.system import REPO, System, running_system
from pathway_schemas import topics
from pathway_schemas.catalogue import CATALOGUE
from pathway_schemas.envelope import InvalidEvent, Received, from_record
from pathway_schemas.events import (
    ProviderExaminationCompleted,
    ProviderOrderBooked,
    ProviderOrderCancelled,
    ProviderOrderRebooked,
    ProviderPatientArrived,
    ProviderPatientDidNotAttend,
    ProviderReportDelayed,
    ProviderReportIssued,
    ProviderWalkInAuthorised,
)
from pathway_schemas.values import StudyReference
from services.common.clock import LONDON, WorkingCalendar
from services.common.settings import KafkaSettings

Json = dict[str, Any]

DEFAULT_OUT = Path("var") / "simulation"
#: A Monday, so that the month crosses the change to summer time (29 March 2026) and Easter.
DEFAULT_START = date(2026, 3, 9)
DEFAULT_REFERRALS_PER_DAY = 10.0

# --------------------------------------------------------------------------- the case mix
# Relative weights of the examinations GP practices ask for (direct access imaging: mostly
# plain X-ray, then ultrasound, then a little CT, MR, DEXA and the rest). Examples written
# for the simulation, not statistics of any real service.
EXAMINATION_WEIGHTS: dict[str, float] = {
    "XCHES": 20, "XKNEL": 4, "XKNER": 4, "XHIPL": 3, "XHIPR": 3, "XLSPI": 4, "XCSPI": 2,
    "XHANL": 2, "XHANR": 2, "XFOOL": 2, "XFOOR": 2, "XSHOL": 2, "XSHOR": 2, "XABDO": 2,
    "UABDO": 8, "UPELV": 6, "UTHYR": 3, "UTEST": 2, "UDVTL": 2, "USOFT": 3,
    "CHEAD": 2, "CCHES": 2, "CCOLO": 1, "CKUBC": 2,
    "MKNEL": 0.7, "MKNER": 0.7, "MLSPI": 2, "MHEAD": 1.3, "MPROS": 0.3,
    "DBODY": 4, "FSWAL": 1, "NBONE": 0.5, "NTHYR": 0.5,
}  # fmt: skip

#: Share of referrals marked urgent, by modality.
URGENT_SHARE: dict[str, float] = {
    "XR": 0.05, "US": 0.15, "CT": 0.30, "MR": 0.10, "DEXA": 0.0, "RF": 0.10, "NM": 0.10,
}  # fmt: skip

# Clinical questions per examination. Some are written to meet the example guidance rules
# of config/guidance_rules.json (back pain without red flags, a headache, a short CT or MR
# question), so that advice at the point of referral and returns happen as they would.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "XCHES": (
        "Cough for six weeks in a smoker",
        "Breathlessness on exertion, query heart failure",
        "Haemoptysis in an ex-smoker aged 62",
        "Chest infection not settling after two courses of antibiotics",
        "Follow-up film six weeks after treated right basal pneumonia",
    ),
    "XKNE": (
        "Knee pain and stiffness, query osteoarthritis, considering referral for replacement",
        "Knee locking after a twisting injury two weeks ago",
    ),
    "XHIP": ("Hip pain on weight bearing for three months, query osteoarthritis",),
    "XLSPI": (
        "Low back pain for four weeks",
        "Back pain after a fall in an 84-year-old, query fracture",
    ),
    "XCSPI": ("Neck pain with reduced rotation and paraesthesia for two months",),
    "XHAN": ("Pain and swelling over the scaphoid after a fall onto the outstretched hand",),
    "XFOO": ("Forefoot pain on walking for six weeks, query stress fracture",),
    "XSHO": ("Shoulder pain and reduced abduction for three months, query calcific tendinitis",),
    "XABDO": ("Constipation and abdominal distension in a frail patient, query obstruction",),
    "UABDO": (
        "Right upper quadrant pain after meals, query gallstones",
        "Deranged liver function tests with raised ALT for three months",
    ),
    "UPELV": ("Post-menopausal bleeding", "Pelvic pain and bloating, query ovarian cyst"),
    "UTHYR": ("Thyroid nodule found on examination, euthyroid",),
    "UTEST": ("Painless lump in the left testis for three weeks",),
    "UDVTL": ("Swollen painful left calf, query deep vein thrombosis, Wells score 2",),
    "USOFT": ("Soft tissue lump on the back growing over two months",),
    "CHEAD": (
        "Headache",
        "New headache worse in the morning with vomiting for three weeks",
        "Progressive memory loss over a year, query space-occupying lesion",
    ),
    "CCHES": ("Persistent cough and weight loss with an abnormal chest radiograph",),
    "CCOLO": ("Change in bowel habit in a frail patient unsuitable for colonoscopy",),
    "CKUBC": ("Visible haematuria and loin pain, query renal stone",),
    "MKNE": ("Locking and giving way after a sports injury, query meniscal tear",),
    "MLSPI": ("Sciatica for eight weeks not improving with physiotherapy",),
    "MHEAD": ("Headache", "Unilateral hearing loss and tinnitus, query acoustic neuroma"),
    "MPROS": ("Raised PSA on two occasions",),
    "DBODY": ("Postmenopausal woman on long-term steroids, fracture risk assessment",),
    "FSWAL": ("Dysphagia to solids for two months, query oesophageal stricture",),
    "NBONE": ("Raised alkaline phosphatase and bone pain, history of prostate cancer",),
    "NTHYR": ("Hyperthyroidism with a palpable nodule, query toxic nodule",),
}
#: Short questions that the example CT and MR rule sends back for more information.
SHORT_QUESTIONS = ("Query pathology", "Pain")

FINDING_SHARE: tuple[tuple[str, float], ...] = (
    ("critical", 0.015),
    ("urgent", 0.02),
    ("unexpected_significant", 0.035),
)

# Local hours of the people in the simulation (Europe/London wall time).
PRACTICE_HOURS = (wall_time(8, 0), wall_time(18, 30))
VETTING_HOURS = (wall_time(8, 30), wall_time(17, 30))
PATIENT_HOURS = (wall_time(8, 0), wall_time(20, 0))


def _questions_for(code: str) -> tuple[str, ...]:
    return QUESTIONS.get(code) or QUESTIONS[code[:4]]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Referrer:
    id: str
    practice: str


@dataclass(frozen=True)
class WorkloadSettings:
    """What shapes the month: its length, volume and the people in it."""

    seed: int = 1
    days: int = 30
    referrals_per_day: float = DEFAULT_REFERRALS_PER_DAY
    start: date = DEFAULT_START
    #: practice ODS -> (share of referrals, its active referrers)
    practices: Mapping[str, tuple[float, tuple[str, ...]]] = field(
        default_factory=lambda: practices_from_config(REPO / "config" / "practices.json")
    )
    duplicate_share: float = 0.02
    cancel_share: float = 0.015
    dna_share: float = 0.06
    defer_share: float = 0.06
    rebook_share: float = 0.04
    walk_in_no_show_share: float = 0.03
    mdt_share: float = 0.05
    late_report_share: float = 0.08
    late_acknowledgement_share: float = 0.10
    nation: str = "ENG"


def practices_from_config(path: Path) -> dict[str, tuple[float, tuple[str, ...]]]:
    """Active practices and referrers of config/practices.json, sharing referrals by size."""
    document = json.loads(path.read_text("utf-8"))
    practices: dict[str, tuple[float, tuple[str, ...]]] = {}
    for practice in document.get("practices", []):
        if practice.get("active", True) is False:
            continue
        referrers = tuple(
            str(r["id"]) for r in practice.get("referrers", []) if r.get("active", True)
        )
        if referrers:
            practices[str(practice["ods"])] = (float(len(referrers)), referrers)
    if not practices:
        raise ValueError(f"{path} has no active practice with an active referrer")
    total = sum(weight for weight, _ in practices.values())
    return {ods: (weight / total, refs) for ods, (weight, refs) in practices.items()}


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedReferral:
    """One referral and everything its people will do, drawn before the run."""

    index: int
    submit_at: datetime
    practice: str
    referrer: str
    nhs_number: str
    examination_code: str
    modality: str
    question: str
    priority: Literal["routine", "urgent"]
    duplicate_of: int | None
    #: the vetting clinician picks it up this long after it enters the worklist
    vet_delay_minutes: float
    #: a uniform draw for the clinician's decision (see `vetting_decision`)
    vet_draw: float
    answer_delay_minutes: float
    amends_after_return: bool
    cancels_duplicate: bool
    patient: Literal["choose", "default", "defer"]
    offer_choice: int
    choose_delay_minutes: float
    defer_days: int
    rebooks: bool
    #: per appointment in turn: attends (True) or does not attend (False)
    attendance: tuple[bool, ...]
    walks_in: bool
    walk_in_day: int
    walk_in_minute: int
    exam_minutes: float
    report_delay_minutes: float
    mdt: bool
    finding: str
    acknowledgement_delay_minutes: float
    late_acknowledgement: bool
    cancel_after_minutes: float | None

    @property
    def urgent(self) -> bool:
        return self.priority == "urgent"


def synthetic_nhs_number(rng: random.Random) -> str:
    """A number in the synthetic range (999...), never issued to a person, valid check digit."""
    while True:
        stem = "999" + "".join(str(rng.randrange(10)) for _ in range(6))
        check = nhs_number.calculate_checksum(stem)
        if check is not None and check < 10:
            return f"{stem}{check}"


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    # Knuth's method: fine for the tens per day of a practice population.
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _weighted(rng: random.Random, weights: Mapping[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names], k=1)[0]


def _submission_minute(rng: random.Random) -> int:
    """Minutes after 08:00: busy mornings, a lull at lunch, a smaller afternoon peak."""
    if rng.random() < 0.6:
        return int(rng.triangular(0, 270, 90))  # 08:00-12:30
    return int(rng.triangular(330, 630, 420))  # 13:30-18:30


def _finding(rng: random.Random, urgent: bool) -> str:
    draw = rng.random()
    weight = 2.5 if urgent else 1.0  # urgent requests find more that matters
    for flag, share in FINDING_SHARE:
        if draw < share * weight:
            return flag
        draw -= share * weight
    return "routine"


def _report_delay(rng: random.Random, urgent: bool, late_share: float) -> float:
    """Minutes from completion to report: within the hour for urgent, hours for routine."""
    if urgent:
        return rng.uniform(61, 180) if rng.random() < late_share * 1.5 else rng.uniform(15, 55)
    if rng.random() < late_share:
        return rng.uniform(36 * 60, 96 * 60)
    return rng.choice((rng.uniform(45, 8 * 60), rng.uniform(8 * 60, 26 * 60)))


def _acknowledgement_delay(rng: random.Random, finding: str, late: bool) -> float:
    if finding == "critical":
        return rng.uniform(70, 200) if late else rng.uniform(10, 50)
    if finding == "urgent":
        return rng.uniform(26 * 60, 50 * 60) if late else rng.uniform(30, 20 * 60)
    if finding == "unexpected_significant":
        return rng.uniform(8 * 1440, 11 * 1440) if late else rng.uniform(1440, 3 * 1440)
    return rng.uniform(6 * 1440, 12 * 1440) if late else rng.uniform(60, 3 * 1440)


def plan_workload(settings: WorkloadSettings) -> list[PlannedReferral]:
    """The month's referrals in submission order; the same settings give the same plan."""
    rng = random.Random(settings.seed)
    calendar = WorkingCalendar(settings.nation)
    practices = list(settings.practices)
    shares = {ods: settings.practices[ods][0] for ods in practices}
    plan: list[PlannedReferral] = []
    for offset in range(settings.days):
        day = settings.start + timedelta(days=offset)
        if not calendar.is_working_day(day):
            continue  # practices refer on working days
        minutes = sorted(
            _submission_minute(rng) for _ in range(_poisson(rng, settings.referrals_per_day))
        )
        for minute in minutes:
            local = datetime.combine(day, PRACTICE_HOURS[0], tzinfo=LONDON) + timedelta(
                minutes=minute
            )
            plan.append(
                _plan_one(rng, settings, len(plan), local.astimezone(UTC), practices, shares, plan)
            )
    return plan


def _plan_one(
    rng: random.Random,
    settings: WorkloadSettings,
    index: int,
    submit_at: datetime,
    practices: Sequence[str],
    shares: Mapping[str, float],
    earlier: Sequence[PlannedReferral],
) -> PlannedReferral:
    duplicate_of: int | None = None
    recent = [p for p in earlier[-200:] if submit_at - p.submit_at <= timedelta(days=10)]
    if recent and rng.random() < settings.duplicate_share:
        original = rng.choice(recent)
        duplicate_of = original.index
        practice, code, patient = original.practice, original.examination_code, original.nhs_number
    else:
        practice = _weighted(rng, shares)
        code = _weighted(rng, EXAMINATION_WEIGHTS)
        patient = synthetic_nhs_number(rng)
    referrer = rng.choice(settings.practices[practice][1])
    modality = CATALOGUE[code].modality
    questions = _questions_for(code)
    question = rng.choice(questions)
    if modality in {"CT", "MR"} and rng.random() < 0.12:
        question = rng.choice(SHORT_QUESTIONS)
    urgent = rng.random() < URGENT_SHARE.get(modality, 0.0)
    vet_delay = rng.uniform(10, 90) if urgent else rng.uniform(30, 8 * 60)
    vet_draw = rng.random()
    answer_delay = rng.uniform(30, 24 * 60)
    amends = rng.random() < 0.7
    cancels_duplicate = rng.random() < 0.5
    draw = rng.random()
    patient_choice: Literal["choose", "default", "defer"]
    if not urgent and draw < settings.defer_share:
        patient_choice = "defer"
    elif draw < 0.7:
        patient_choice = "choose"
    else:
        patient_choice = "default"
    offer_choice = rng.choices((0, 1, 2, 3), weights=(55, 25, 12, 8), k=1)[0]
    choose_delay = rng.uniform(20, 30 * 60) if not urgent else rng.uniform(15, 6 * 60)
    defer_days = rng.randint(10, 21)
    rebooks = rng.random() < settings.rebook_share
    first_dna = rng.random() < settings.dna_share
    # Someone who missed once misses again more often than most.
    attendance = (False, rng.random() >= 0.3) if first_dna else (True,)
    walks_in = rng.random() >= settings.walk_in_no_show_share
    walk_in_day = rng.choices((0, 1, 2, 3, 4, 6), weights=(35, 30, 12, 10, 8, 5), k=1)[0]
    walk_in_minute = rng.randint(9 * 60, 16 * 60 + 30)
    exam_minutes = rng.uniform(5, 25)
    report_delay = _report_delay(rng, urgent, settings.late_report_share)
    mdt = modality in {"CT", "MR", "US", "NM"} and rng.random() < settings.mdt_share
    finding = _finding(rng, urgent)
    late_ack = rng.random() < settings.late_acknowledgement_share
    ack_delay = _acknowledgement_delay(rng, finding, late_ack)
    cancel_after = rng.uniform(1440, 5 * 1440) if rng.random() < settings.cancel_share else None
    return PlannedReferral(
        index=index,
        submit_at=submit_at,
        practice=practice,
        referrer=referrer,
        nhs_number=patient,
        examination_code=code,
        modality=modality,
        question=question,
        priority="urgent" if urgent else "routine",
        duplicate_of=duplicate_of,
        vet_delay_minutes=vet_delay,
        vet_draw=vet_draw,
        answer_delay_minutes=answer_delay,
        amends_after_return=amends,
        cancels_duplicate=cancels_duplicate,
        patient=patient_choice,
        offer_choice=offer_choice,
        choose_delay_minutes=choose_delay,
        defer_days=defer_days,
        rebooks=rebooks,
        attendance=attendance,
        walks_in=walks_in,
        walk_in_day=walk_in_day,
        walk_in_minute=walk_in_minute,
        exam_minutes=exam_minutes,
        report_delay_minutes=report_delay,
        mdt=mdt,
        finding=finding,
        acknowledgement_delay_minutes=ack_delay,
        late_acknowledgement=late_ack,
        cancel_after_minutes=cancel_after,
    )


@dataclass(frozen=True)
class VettingDecision:
    outcome: Literal["accept", "return", "query"]
    reason: str | None = None


def vetting_decision(
    plan: PlannedReferral, guidance: str, duplicate: bool, round_: int
) -> VettingDecision:
    """What the clinician decides, from what the worklist shows and the referral's draw.

    A second look (after an answer or an amendment) accepts. Otherwise the clinician mostly
    follows the guidance advice and the duplicate flag, and sometimes queries or returns a
    referral the rules had nothing to say about.
    """
    u = plan.vet_draw
    if round_ > 0:
        return VettingDecision("accept")
    if duplicate:
        return VettingDecision("return", "duplicate") if u < 0.85 else VettingDecision("accept")
    if guidance == "not_indicated":
        return VettingDecision("return", "not_indicated") if u < 0.8 else VettingDecision("accept")
    if guidance == "specialist_only":
        return VettingDecision("return", "not_indicated") if u < 0.9 else VettingDecision("accept")
    if guidance == "more_information_needed":
        if u < 0.55:
            return VettingDecision("query")
        if u < 0.8:
            return VettingDecision("return", "insufficient_information")
        return VettingDecision("accept")
    if u < 0.03:
        return VettingDecision("query")
    if u < 0.05:
        return VettingDecision("return", "insufficient_information")
    if u < 0.065:
        return VettingDecision("return", "not_indicated")
    return VettingDecision("accept")


@dataclass(frozen=True)
class PlanProfile:
    """The plan in figures, for the summary and the tests."""

    referrals: int
    by_modality: dict[str, int]
    urgent: int
    duplicates: int
    planned_dna: int
    planned_deferrals: int
    planned_cancellations: int
    non_routine_findings: int
    per_practice: dict[str, int]


def profile(plan: Sequence[PlannedReferral]) -> PlanProfile:
    return PlanProfile(
        referrals=len(plan),
        by_modality=dict(Counter(p.modality for p in plan).most_common()),
        urgent=sum(p.urgent for p in plan),
        duplicates=sum(p.duplicate_of is not None for p in plan),
        planned_dna=sum(not p.attendance[0] for p in plan),
        planned_deferrals=sum(p.patient == "defer" for p in plan),
        planned_cancellations=sum(p.cancel_after_minutes is not None for p in plan),
        non_routine_findings=sum(p.finding != "routine" for p in plan),
        per_practice=dict(sorted(Counter(p.practice for p in plan).items())),
    )


# --------------------------------------------------------------------------- time


def within_hours(
    moment: datetime,
    hours: tuple[wall_time, wall_time],
    calendar: WorkingCalendar | None = None,
) -> datetime:
    """`moment` when it falls inside the daily hours (on a working day, given a calendar),
    else the next opening."""
    local = moment.astimezone(LONDON)
    day = local.date()
    for _ in range(30):
        if calendar is None or calendar.is_working_day(day):
            opens = datetime.combine(day, hours[0], tzinfo=LONDON)
            closes = datetime.combine(day, hours[1], tzinfo=LONDON)
            if local < opens:
                return opens.astimezone(UTC)
            if local < closes:
                return moment.astimezone(UTC)
        day += timedelta(days=1)
        local = datetime.combine(day, wall_time(0), tzinfo=LONDON)
    raise ValueError("no opening hours within 30 days")


def on_grid(moment: datetime, start: datetime, step: timedelta) -> datetime:
    """The first grid point at or after `moment` (the grid runs from `start` every `step`)."""
    steps = math.ceil((moment - start) / step - 1e-9)
    return start + max(0, steps) * step


# --------------------------------------------------------------------------- settling


def records_behind(
    committed: Mapping[str, Mapping[Any, int]],
    ends: Mapping[Any, int],
    reads: Mapping[str, Iterable[str]],
    starts: Mapping[Any, int],
) -> dict[tuple[str, str], int]:
    """(group, topic) -> records that group has not handled yet.

    A group reads the partitions of the topics `reads` names for it and of every topic it has
    committed an offset on (a group that reads a topic reads all its partitions). On a
    partition it has not committed on yet, it starts from the log start (`starts`: the
    services read from the earliest record), so a record there counts as not handled.
    """
    behind: Counter[tuple[str, str]] = Counter()
    for group, offsets in committed.items():
        for tp in partitions_read(offsets, ends, reads.get(group, ())):
            done = offsets.get(tp, starts.get(tp, 0))
            if ends[tp] > done:
                behind[(group, tp.topic)] += ends[tp] - done
    return dict(behind)


def partitions_read(
    offsets: Mapping[Any, int], ends: Mapping[Any, int], topic_names: Iterable[str]
) -> list[Any]:
    """The partitions with records of the topics a group reads (see `records_behind`)."""
    read = {*topic_names, *(tp.topic for tp in offsets)}
    return [tp for tp, end in ends.items() if tp.topic in read and end > 0]


def service_groups(
    topic_names: Iterable[str], config_dir: Path = REPO / "config"
) -> dict[str, tuple[str, ...]]:
    """Each service's consumer group -> the topics of `topic_names` it reads (its names and
    patterns), from the service's own composition root, as `pathway contracts` reads it.

    Kafka knows a group's topics only once it has committed on them (the embedded broker
    does not describe a group's members), and the first record ever on a topic must be
    waited for too.
    """
    names = list(topic_names)
    groups: dict[str, tuple[str, ...]] = {}
    # Building an app only reads its configuration; its warnings (development secrets)
    # are the running services' to give, not the simulator's.
    logging.disable(logging.WARNING)
    try:
        for service in topics.SERVICES:
            settings = importlib.import_module(f"services.{service}.settings").Settings(
                kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"), config_dir=config_dir
            )
            main = importlib.import_module(f"services.{service}.main")
            consumer = main.create_app(settings).state.runtime.consumer
            groups[settings.group(service)] = tuple(t for t in names if consumer.reads(t))
    finally:
        logging.disable(logging.NOTSET)
    return groups


class Settler:
    """Waits until every consumer group of the system has handled every record.

    A service publishes the events a record causes before it commits that record's offset,
    so when every group's committed offsets (read first) have reached every partition's
    true end (read second), nothing is in flight. Committed offsets are read in the groups'
    own names without joining them (no subscription, so no rebalance), one request a group.

    The end offset a broker reports is not always the true end. The embedded broker (Tansu)
    reports a partition's end as the base offset of its last record batch plus one, and a
    producer with several sends in flight to a partition (concurrent handlers or requests
    sharing a service's producer, a pipelining client) packs them into one batch: the end
    falls short by up to a whole batch until a later batch lands. A group that has handled
    only the first record of that batch would then look caught up. So `ends()` fetches the
    batch at the reported end's last offset and takes the position after it: a fetch brings
    whole batches, so that is where the batch really ends, and every record written before
    the look lies below it. On Kafka the reported end is already the true end and the look
    reads one record.
    """

    def __init__(
        self,
        bootstrap: str,
        groups: Sequence[str],
        topic_names: Sequence[str],
        *,
        reads: Mapping[str, Iterable[str]] | None = None,
        look_timeout: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.groups = tuple(groups)
        self.topic_names = tuple(topic_names)
        #: group -> the topics it reads even before it has committed on them
        self.reads = {group: tuple(names) for group, names in (reads or {}).items()}
        self.look_timeout = look_timeout
        self._reader: Any = None
        self._readers: dict[str, Any] = {}
        self._partitions: list[Any] = []
        #: partition -> an end of one of its batches at or past the last reported end
        self._known: dict[Any, int] = {}

    @property
    def partitions(self) -> list[Any]:
        return list(self._partitions)

    async def start(self) -> None:
        self._reader = partition_reader(self.bootstrap)
        await self._reader.start()
        for group in self.groups:
            reader = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
            )
            await reader.start()
            self._readers[group] = reader
        for name in self.topic_names:
            partitions = self._reader.partitions_for_topic(name)
            for _ in range(50):
                if partitions:
                    break
                await self._reader._client.force_metadata_update()
                await asyncio.sleep(0.05)
                partitions = self._reader.partitions_for_topic(name)
            self._partitions += [TopicPartition(name, p) for p in sorted(partitions or ())]
        if self._partitions:
            self._reader.assign(self._partitions)
            # Fetched only for a look past a reported end (`ends`), never in the background.
            self._reader.pause(*self._partitions)

    async def stop(self) -> None:
        for reader in [*self._readers.values(), self._reader]:
            if reader is not None:
                with contextlib.suppress(Exception):
                    await reader.stop()

    async def _committed(self, reader: Any) -> dict[Any, int]:
        # The public `committed()` asks one partition per request; the coordinator's call
        # (what it uses underneath) asks for all of them in one.
        offsets = await reader._coordinator.fetch_committed_offsets(self._partitions)
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def ends(self) -> dict[Any, int]:
        """Each partition's true end: every record written before the call lies below it.

        It may also count records written during the call (never fewer than are there).
        """
        if not self._partitions:
            return {}
        reported: dict[Any, int] = dict(await self._reader.end_offsets(self._partitions))
        # A known batch end at or past the reported end already covers the batch that holds
        # the reported end's last offset (batches do not overlap).
        look = [tp for tp in self._partitions if reported[tp] > self._known.get(tp, 0)]
        if look:
            for tp in look:
                self._reader.seek(tp, reported[tp] - 1)
            self._reader.resume(*look)
            try:
                await self._look(look, reported)
            finally:
                self._reader.pause(*look)
        return {tp: self._known.get(tp, 0) for tp in self._partitions}

    async def _look(self, look: list[Any], reported: Mapping[Any, int]) -> None:
        deadline = time.monotonic() + self.look_timeout
        waiting = set(look)
        while waiting:
            await self._reader.getmany(*waiting, timeout_ms=200)
            for tp in sorted(waiting):
                position = await self._reader.position(tp)
                if position >= reported[tp]:
                    self._known[tp] = position
                    waiting.discard(tp)
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(
                    f"could not read the last batch of {len(waiting)} partitions within "
                    f"{self.look_timeout:.0f}s: is the broker up?"
                )

    async def lag_by_group(self) -> dict[tuple[str, str], int]:
        """(group, topic) -> records that group has not yet handled; empty when idle."""
        committed = await asyncio.gather(*(self._committed(r) for r in self._readers.values()))
        by_group = dict(zip(self._readers, committed, strict=True))
        ends = await self.ends()
        unstarted = sorted(
            {
                tp
                for group, offsets in by_group.items()
                for tp in partitions_read(offsets, ends, self.reads.get(group, ()))
                if tp not in offsets
            }
        )
        starts = dict(await self._reader.beginning_offsets(unstarted)) if unstarted else {}
        return records_behind(by_group, ends, self.reads, starts)

    async def lag(self) -> int:
        """Records some group has not yet handled (0: the system is idle on Kafka)."""
        return sum((await self.lag_by_group()).values())

    async def tail(self, topic_names: Sequence[str]) -> list[tuple[Received, str]]:
        """Events past the end offsets the broker reports, with their topics: what a reader
        that stops at those ends misses (the embedded broker's short ends, see `ends`)."""
        wanted = [tp for tp in self._partitions if tp.topic in set(topic_names)]
        found: list[tuple[Received, str]] = []

        def take(record: Any) -> None:
            with contextlib.suppress(InvalidEvent):
                received = from_record(record.headers, record.value, topic=record.topic)
                found.append((received, record.topic))

        consumer = partition_reader(self.bootstrap)
        await consumer.start()
        try:
            consumer.assign(wanted)
            ends = await consumer.end_offsets(wanted)
            for tp in wanted:
                consumer.seek(tp, ends[tp])
            await read_to_end(consumer, wanted, take)
        finally:
            await consumer.stop()
        return found

    async def end_offsets(self) -> dict[str, int]:
        """Records on each topic so far (true ends: for counting what a run produced)."""
        totals: Counter[str] = Counter()
        for tp, end in (await self.ends()).items():
            totals[tp.topic] += end
        return dict(totals)

    async def settle(
        self,
        *,
        timeout: float = 120.0,
        also: Callable[[], Awaitable[bool]] | None = None,
        interval: float = 0.01,
    ) -> float:
        """Wait until idle (and `also` holds); returns the seconds it took."""
        began = time.monotonic()
        while True:
            # `also` may have waited on work that published more: look once more after it.
            if (
                await self.lag() == 0
                and (also is None or await also())
                and (also is None or await self.lag() == 0)
            ):
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                behind = await self.lag_by_group()
                where = ", ".join(f"{g} on {t}: {n}" for (g, t), n in sorted(behind.items()))
                raise TimeoutError(
                    f"the system did not settle within {timeout:.0f}s ("
                    + (
                        f"records not yet handled: {where}"
                        if where
                        else "Kafka is idle; other work is pending"
                    )
                    + "): see the service logs"
                )
            await asyncio.sleep(interval)
            # Asking the broker costs it work too: look less often the longer it takes.
            interval = min(interval * 1.5, 0.1)


# --------------------------------------------------------------------------- the run


@dataclass
class Case:
    """What the simulation knows about one planned referral as the run goes on."""

    plan: PlannedReferral
    referral_id: str | None = None
    guidance: str = ""
    duplicate: bool = False
    vet_round: int = 0
    vetted: set[str] = field(default_factory=set)
    offers_seen: set[str] = field(default_factory=set)
    deferred: bool = False
    appointments: int = 0
    generation: int = 0
    rebook_planned: bool = False
    reported: bool = False
    #: the report's id on the pathway, once the practice has it
    report_id: str | None = None
    acknowledged: bool = False
    closed: bool = False


@dataclass(order=True)
class Task:
    due: datetime
    seq: int
    kind: str = field(compare=False)
    case: int = field(compare=False)
    generation: int | None = field(compare=False, default=None)
    data: dict[str, Any] = field(compare=False, default_factory=dict)


@dataclass
class RunStats:
    ticks: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    #: the first answer of each kind of refusal, to see why
    refusal_examples: dict[str, str] = field(default_factory=dict)
    delivery_retries: set[str] = field(default_factory=set)
    settle_seconds: float = 0.0
    observe_seconds: float = 0.0
    act_seconds: float = 0.0
    job_wait_seconds: float = 0.0
    wall_seconds: float = 0.0


def _open_access_codes(config_dir: Path) -> frozenset[str]:
    policy = json.loads((config_dir / "vetting.json").read_text("utf-8")).get("open_access", {})
    return frozenset(policy.get("examination_codes", ())) if policy.get("enabled") else frozenset()


def _provider_codes(config_dir: Path) -> list[str]:
    document = json.loads((config_dir / "providers.json").read_text("utf-8"))
    return [str(p["ods"]) for p in document.get("providers", []) if p.get("active", True)]


#: Providers that issue reports from their own RIS on their inbound topic; the others report
#: on the pathway's reporting worklist (the reporter API). Both are public interfaces.
RIS_REPORTING = frozenset({"RXA01"})


class Simulation:
    """Plays a plan through a running system on its simulated clock."""

    def __init__(
        self,
        system: System,
        http: httpx.AsyncClient,
        plan: Sequence[PlannedReferral],
        *,
        start: datetime,
        end: datetime,
        grid: timedelta = timedelta(minutes=30),
        max_step: timedelta = timedelta(hours=4),
        job_wait: float = 0.3,
        config_dir: Path = REPO / "config",
        nation: str = "ENG",
        seed: int = 1,
        on_tick: Callable[[Simulation], None] | None = None,
    ) -> None:
        self.system = system
        self.http = http
        self.cases = [Case(p) for p in plan]
        self.start, self.end, self.grid, self.max_step = start, end, grid, max_step
        self.job_wait = job_wait
        self.calendar = WorkingCalendar(nation)
        self.seed = seed
        self.on_tick = on_tick
        self.now = start
        self.stats = RunStats()
        self.open_access = _open_access_codes(config_dir)
        self.provider_codes = _provider_codes(config_dir)
        self.practices = {
            ods: Practice(http, system.urls, ods) for ods in sorted({p.practice for p in plan})
        }
        self.clinician = VettingClinician(http, system.urls)
        self.clerk = BookingClerk(http, system.urls)
        self.reporter = Reporter(http, system.urls)
        self.operator_headers = {"X-API-Key": DEV_KEYS["operator"]}
        self.providers = {ods: ProviderSystem(ods, system.bootstrap) for ods in self.provider_codes}
        self.by_referral: dict[str, int] = {}
        self.agenda: list[Task] = []
        self.deadlines: list[datetime] = []
        self.watch_booking: set[int] = set()
        self.awaiting_delivery: set[int] = set()
        self.open_alerts: set[int] = set()
        self._alerts_changed = False
        self._seq = itertools.count()
        names = topics.all_topics(tuple(self.provider_codes))
        groups = service_groups(names, config_dir)
        self.settler = Settler(system.bootstrap, tuple(groups), names, reads=groups)
        for case in self.cases:
            self.schedule(case.plan.submit_at, "submit", case.plan.index)

    # -- bookkeeping

    def schedule(
        self,
        due: datetime,
        kind: str,
        case: int,
        *,
        generation: int | None = None,
        **data: Any,
    ) -> None:
        heapq.heappush(self.agenda, Task(due, next(self._seq), kind, case, generation, data))

    def deadline(self, moment: datetime) -> None:
        if moment > self.now:
            heapq.heappush(self.deadlines, moment)

    @property
    def submitted(self) -> int:
        return sum(c.referral_id is not None for c in self.cases)

    @property
    def reported(self) -> int:
        return sum(c.reported for c in self.cases)

    @property
    def acknowledged(self) -> int:
        return sum(c.acknowledged for c in self.cases)

    # -- the loop

    async def run(self) -> RunStats:
        began = time.monotonic()
        await self.settler.start()
        for provider in self.providers.values():
            await provider.start()
        try:
            self.system.set_time(self.start)
            while self.now < self.end:
                crossed = bool(self.deadlines) and self.deadlines[0] <= self.now
                while self.deadlines and self.deadlines[0] <= self.now:
                    heapq.heappop(self.deadlines)
                if crossed or self.now == self.start:
                    # A background job (choose-by booking, escalation, walk-in expiry) fires
                    # on its own wall-clock interval once it sees the new time.
                    await asyncio.sleep(self.job_wait)
                    self.stats.job_wait_seconds += self.job_wait
                    self._alerts_changed = True
                    await self._settle()
                await self._tick()
                self.stats.ticks += 1
                if self.on_tick is not None:
                    self.on_tick(self)
                self.now = self._next_tick(self.now)
                self.system.set_time(min(self.now, self.end))
            self.now = self.end
            await self._settle()
        finally:
            for provider in self.providers.values():
                with contextlib.suppress(Exception):
                    await provider.stop()
            await self.settler.stop()
        self.stats.wall_seconds = time.monotonic() - began
        return self.stats

    def _next_tick(self, now: datetime) -> datetime:
        candidates = [now + self.max_step]
        if self.agenda:
            candidates.append(self.agenda[0].due)
        if self.deadlines:
            candidates.append(self.deadlines[0])
        return on_grid(max(min(candidates), now + self.grid), self.start, self.grid)

    async def _tick(self) -> None:
        # Each step ends settled, having only looked since: nothing moved unless a job fired.
        for _ in range(4):
            began = time.monotonic()
            await self._observe()
            self.stats.observe_seconds += time.monotonic() - began
            due = self._due()
            if not due:
                return
            began = time.monotonic()
            await self._act(due)
            self.stats.act_seconds += time.monotonic() - began
            await self._settle()

    def _due(self) -> list[Task]:
        due: list[Task] = []
        while self.agenda and self.agenda[0].due <= self.now:
            due.append(heapq.heappop(self.agenda))
        return due

    async def _act(self, tasks: list[Task]) -> None:
        per_case: dict[int, list[Task]] = {}
        for task in tasks:
            per_case.setdefault(task.case, []).append(task)
        limit = asyncio.Semaphore(8)

        async def play(queue: list[Task]) -> None:
            async with limit:
                for task in queue:
                    await self._perform(task)

        await asyncio.gather(*(play(q) for q in per_case.values()))

    async def _perform(self, task: Task) -> None:
        case = self.cases[task.case]
        if task.generation is not None and task.generation != case.generation:
            return  # the order it belonged to was moved or cancelled
        if case.closed and task.kind not in {"acknowledge"}:
            return
        handler = getattr(self, f"_do_{task.kind}")
        try:
            await handler(case, task)
            self.stats.actions[task.kind] += 1
        except ApiError as refused:
            # The world moved on (a default booking took the slot, a cancelled referral):
            # a person would be told no and carry on.
            if refused.status >= 500:
                raise
            kind = f"{task.kind} {refused.status}"
            self.stats.refused[kind] += 1
            self.stats.refusal_examples.setdefault(kind, refused.body[:300])

    async def _settle(self) -> None:
        async def deliveries_done() -> bool:
            if not self.awaiting_delivery:
                return True
            response = await self.http.get(
                f"{self.system.urls['notify']}/deliveries",
                params={"state": "pending", "limit": 1},
                headers=self.operator_headers,
            )
            if response.status_code != 200:
                return False
            pending = response.json()
            if not pending:
                return True
            # A delivery that failed waits for its retry on the pathway clock: settled for now.
            retry_at = pending[0].get("next_attempt_at")
            if retry_at and datetime.fromisoformat(retry_at) > self.now:
                self.stats.delivery_retries.add(str(pending[0]["delivery_id"]))
                self.stats.refusal_examples.setdefault(
                    "delivery retry", str(pending[0].get("last_error"))
                )
                return True
            return False

        self.stats.settle_seconds += await self.settler.settle(also=deliveries_done)

    # -- what each person sees

    async def _observe(self) -> None:
        await asyncio.gather(
            self._observe_orders(),
            self._observe_worklist(),
            self._observe_bookings(),
            self._observe_deliveries(),
            self._observe_alerts(),
        )

    async def _observe_worklist(self) -> None:
        if not self.by_referral:
            return
        items = await self.clinician.worklist(limit=500)
        for item in items:
            index = self.by_referral.get(item["referral_id"])
            if index is None:
                continue
            case = self.cases[index]
            entered = str(item["entered_at"])
            if entered in case.vetted:
                continue
            case.vetted.add(entered)
            case.guidance = str(item["guidance"]["outcome"])
            case.duplicate = bool(item["duplicate"])
            self.watch_booking.discard(index)
            when = datetime.fromisoformat(entered) + timedelta(minutes=case.plan.vet_delay_minutes)
            self.schedule(
                within_hours(max(when, self.now), VETTING_HOURS, self.calendar), "vet", index
            )

    async def _observe_bookings(self) -> None:
        for index in sorted(self.watch_booking):
            case = self.cases[index]
            assert case.referral_id is not None
            try:
                booking = await self.clerk.booking(case.referral_id)
            except ApiError as error:
                if error.status == 404:
                    continue  # not accepted yet
                raise
            state = booking["state"]
            if state == "offered" and booking.get("choose_by"):
                self.watch_booking.discard(index)
                self._patient_decides(case, booking)
            elif state != "offered":
                self.watch_booking.discard(index)

    def _patient_decides(self, case: Case, booking: Json) -> None:
        choose_by = datetime.fromisoformat(booking["choose_by"])
        key = booking["choose_by"]
        if key in case.offers_seen:
            return
        case.offers_seen.add(key)
        self.deadline(choose_by)
        plan = case.plan
        if plan.patient == "defer" and not case.deferred and not plan.urgent:
            when = within_hours(
                self.now + timedelta(minutes=plan.choose_delay_minutes / 2), PATIENT_HOURS
            )
            if when < choose_by:
                self.schedule(when, "defer", plan.index)
                return
        if plan.patient in {"choose", "defer"}:
            when = within_hours(
                self.now + timedelta(minutes=plan.choose_delay_minutes), PATIENT_HOURS
            )
            if when < choose_by - timedelta(minutes=30):
                self.schedule(when, "choose", plan.index)
        # "default": the patient does nothing; the choose-by deadline books the earliest offer.

    async def _observe_orders(self) -> None:
        for ods, provider in self.providers.items():
            before = {rid: len(orders) for rid, orders in provider.orders.items()}
            await provider.poll(timeout_ms=0)
            for referral_id, orders in provider.orders.items():
                for received in orders[before.get(referral_id, 0) :]:
                    index = self.by_referral.get(referral_id)
                    if index is not None:
                        self._on_order(self.cases[index], ods, received)

    def _on_order(self, case: Case, ods: str, received: Received) -> None:
        order = received.event
        plan = case.plan
        if isinstance(order, ProviderOrderCancelled):
            case.generation += 1
            return
        if isinstance(order, ProviderWalkInAuthorised):
            case.generation += 1
            self.watch_booking.discard(plan.index)
            if not plan.walks_in:
                # Never comes: the walk-in lapses and appointments are offered instead.
                self.deadline(order.valid_until)
                self.schedule(order.valid_until + self.grid, "watch", plan.index)
                return
            day = order.valid_from.astimezone(LONDON).date() + timedelta(days=plan.walk_in_day)
            local = datetime.combine(day, wall_time(0), tzinfo=LONDON) + timedelta(
                minutes=plan.walk_in_minute
            )
            arrive = min(
                max(local.astimezone(UTC), order.valid_from), order.valid_until - timedelta(hours=1)
            )
            self.schedule(
                max(arrive, self.now),
                "arrive",
                plan.index,
                generation=case.generation,
                provider=ods,
                site=order.site_id,
                minutes=10.0,
            )
            return
        if isinstance(order, ProviderOrderBooked | ProviderOrderRebooked):
            case.generation += 1
            case.appointments += 1
            appointment = order.appointment
            attends = plan.attendance[min(case.appointments, len(plan.attendance)) - 1]
            minutes = (appointment.end - appointment.start).total_seconds() / 60
            if attends:
                early = timedelta(minutes=(plan.index % 11) - 8)  # most come a little early
                self.schedule(
                    max(appointment.start + early, self.now),
                    "arrive",
                    plan.index,
                    generation=case.generation,
                    provider=ods,
                    site=appointment.site_id,
                    minutes=minutes,
                )
            else:
                self.schedule(
                    max(appointment.start + timedelta(minutes=20), self.now),
                    "dna",
                    plan.index,
                    generation=case.generation,
                    provider=ods,
                    slot=appointment.slot_id,
                )
            if (
                isinstance(order, ProviderOrderBooked)
                and plan.rebooks
                and not case.rebook_planned
                and appointment.start - self.now > timedelta(days=3)
            ):
                case.rebook_planned = True
                when = within_hours(self.now + timedelta(days=1), PATIENT_HOURS)
                self.schedule(when, "rebook", plan.index, generation=case.generation)

    async def _observe_deliveries(self) -> None:
        """The practice system follows its reported referrals until each report reaches it.

        The report's id on the pathway (a provider's own report id is not it) and the time
        of delivery come from the referral's timeline, as the practice would read them.
        """
        for index in sorted(self.awaiting_delivery):
            case = self.cases[index]
            assert case.referral_id is not None
            referral = await self.practices[case.plan.practice].referral(case.referral_id)
            for entry in referral.get("timeline", []):
                detail = entry.get("detail") or {}
                if entry["event_type"].endswith(".notification.delivered.v1") and not detail.get(
                    "addendum_id"
                ):
                    self.awaiting_delivery.discard(index)
                    case.report_id = str(detail["report_id"])
                    delivered = datetime.fromisoformat(entry["occurred_at"])
                    self._plan_acknowledgement(case, case.report_id, delivered)
                    break

    def _plan_acknowledgement(self, case: Case, report_id: str, received: datetime) -> None:
        plan = case.plan
        when = max(received, self.now) + timedelta(minutes=plan.acknowledgement_delay_minutes)
        if plan.finding != "critical":
            # Critical results reach the duty doctor at once; the rest wait for opening hours.
            when = within_hours(when, PRACTICE_HOURS, self.calendar)
        self.schedule(when, "acknowledge", plan.index, report_id=report_id)

    async def _observe_alerts(self) -> None:
        if not self.open_alerts or not self._alerts_changed:
            return
        self._alerts_changed = False
        response = await self.http.get(
            f"{self.system.urls['notify']}/alerts",
            params={"state": "open", "limit": 500},
            headers=self.operator_headers,
        )
        if response.status_code != 200:
            return
        for alert in response.json():
            for name in ("next_escalation_at", "acknowledge_by"):
                if alert.get(name):
                    self.deadline(datetime.fromisoformat(alert[name]))

    # -- what each person does

    async def _do_submit(self, case: Case, task: Task) -> None:
        plan = case.plan
        body = {
            "nhs_number": plan.nhs_number,
            "referrer_id": plan.referrer,
            "examination_code": plan.examination_code,
            "clinical_question": plan.question,
            "priority": plan.priority,
        }
        key = f"sim-{self.seed}-{plan.index:06d}"
        created = await self.practices[plan.practice].submit(body, idempotency_key=key)
        case.referral_id = created["referral_id"]
        self.by_referral[created["referral_id"]] = plan.index
        case.guidance = str(created["guidance"]["outcome"])
        case.duplicate = bool(created.get("duplicate_of"))
        if (
            plan.examination_code in self.open_access
            and case.guidance in {"indicated", "no_rule"}
            and not case.duplicate
        ):
            self.watch_booking.add(plan.index)  # open access: no person vets it
        if plan.cancel_after_minutes is not None:
            when = self.now + timedelta(minutes=plan.cancel_after_minutes)
            self.schedule(within_hours(when, PRACTICE_HOURS, self.calendar), "cancel", plan.index)

    async def _do_vet(self, case: Case, task: Task) -> None:
        plan = case.plan
        assert case.referral_id is not None
        decision = vetting_decision(plan, case.guidance, case.duplicate, case.vet_round)
        case.vet_round += 1
        if decision.outcome == "accept":
            extra: Json = {}
            if CATALOGUE[plan.examination_code].ionising:
                extra["justified_by"] = "HCPC-RA12345"
            await self.clinician.accept(
                case.referral_id, protocol=f"Standard {plan.modality} protocol", **extra
            )
            self.watch_booking.add(plan.index)
        elif decision.outcome == "query":
            result = await self.clinician.query(
                case.referral_id, "Please give the duration of symptoms and examination findings."
            )
            when = within_hours(
                self.now + timedelta(minutes=plan.answer_delay_minutes),
                PRACTICE_HOURS,
                self.calendar,
            )
            self.schedule(when, "answer", plan.index, query_id=result["query_id"])
        else:
            reason = decision.reason or "other"
            await self.clinician.return_(
                case.referral_id,
                reason,
                advice=f"Returned ({reason.replace('_', ' ')}): see the guidance.",
            )
            when = within_hours(
                self.now + timedelta(minutes=plan.answer_delay_minutes),
                PRACTICE_HOURS,
                self.calendar,
            )
            if reason == "insufficient_information" and plan.amends_after_return:
                self.schedule(when, "amend", plan.index)
            elif reason == "duplicate" and plan.cancels_duplicate:
                self.schedule(when, "cancel", plan.index, reason="duplicate")
            else:
                case.closed = True

    async def _do_answer(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        await self.practices[case.plan.practice].answer(
            case.referral_id,
            task.data["query_id"],
            "Symptoms for eight weeks; examination findings as described, no red flags.",
            by=case.plan.referrer,
        )

    async def _do_amend(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        await self.practices[case.plan.practice].amend(
            case.referral_id,
            by=case.plan.referrer,
            clinical_question=(
                f"{case.plan.question}. Symptoms for eight weeks despite treatment; "
                "the result will decide referral to secondary care."
            ),
        )

    async def _do_cancel(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        reason = str(task.data.get("reason", "no_longer_needed"))
        await self.practices[case.plan.practice].cancel(
            case.referral_id, by=case.plan.referrer, reason=reason
        )
        case.generation += 1
        case.closed = True
        self.watch_booking.discard(case.plan.index)

    async def _do_watch(self, case: Case, task: Task) -> None:
        self.watch_booking.add(case.plan.index)

    async def _do_choose(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        booking = await self.clerk.booking(case.referral_id)
        if booking["state"] != "offered" or not booking["offers"]:
            return
        offers = booking["offers"]
        offer = offers[min(case.plan.offer_choice, len(offers) - 1)]
        await self.clerk.choose(case.referral_id, offer["slot_id"], chosen_by="patient")

    async def _do_defer(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        today = self.now.astimezone(LONDON).date()
        available = today + timedelta(days=case.plan.defer_days)
        await self.clerk.defer(case.referral_id, "Family commitments abroad", available.isoformat())
        case.deferred = True
        self.watch_booking.add(case.plan.index)

    async def _do_rebook(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        await self.clerk.rebook(case.referral_id)

    async def _do_arrive(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        provider = self.providers[task.data["provider"]]
        await provider.send(
            ProviderPatientArrived(
                referral_id=case.referral_id, occurred_at=task.due, site_id=task.data["site"]
            )
        )
        done = task.due + timedelta(minutes=float(task.data["minutes"]) + case.plan.exam_minutes)
        self.schedule(done, "complete", case.plan.index, generation=case.generation, **task.data)

    async def _do_dna(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        await self.providers[task.data["provider"]].send(
            ProviderPatientDidNotAttend(
                referral_id=case.referral_id, occurred_at=task.due, slot_id=task.data["slot"]
            )
        )

    async def _do_complete(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        plan = case.plan
        ods = task.data["provider"]
        study = StudyReference(
            study_instance_uid=f"1.2.826.0.1.3680043.10.{self.seed}.{plan.index}.{case.generation}",
            accession_number=f"{ods}{plan.index:06d}",
        )
        await self.providers[ods].send(
            ProviderExaminationCompleted(
                referral_id=case.referral_id,
                occurred_at=task.due,
                site_id=task.data["site"],
                study=study,
            )
        )
        report_at = task.due + timedelta(minutes=plan.report_delay_minutes)
        if plan.mdt:
            self.schedule(task.due + timedelta(minutes=90), "delay", plan.index, provider=ods)
            report_at = task.due + timedelta(hours=36)
        self.schedule(report_at, "report", plan.index, provider=ods)

    async def _do_delay(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        ods = task.data["provider"]
        if ods in RIS_REPORTING:
            await self.providers[ods].send(
                ProviderReportDelayed(
                    referral_id=case.referral_id,
                    occurred_at=task.due,
                    reason="mdt",
                    note="For discussion at the next multidisciplinary team meeting",
                )
            )
        else:
            await self.reporter.delay(case.referral_id, reason="mdt", note="For MDT discussion")

    async def _do_report(self, case: Case, task: Task) -> None:
        assert case.referral_id is not None
        plan = case.plan
        ods = task.data["provider"]
        flag = plan.finding
        conclusion = {
            "routine": "No significant abnormality.",
            "critical": "Findings need immediate clinical action: see report.",
            "urgent": "Findings need urgent clinical review.",
            "unexpected_significant": "Unexpected significant finding: further assessment advised.",
        }[flag]
        if ods in RIS_REPORTING:
            await self.providers[ods].send(
                ProviderReportIssued(
                    referral_id=case.referral_id,
                    occurred_at=task.due,
                    report_id=f"RPT-{self.seed}-{plan.index:05d}",  # the RIS's own id
                    status="final",
                    text=f"{CATALOGUE[plan.examination_code].name}: {conclusion}",
                    conclusion=conclusion,
                    finding_flag=flag,
                    reported_by="GMC-7654321",
                )
            )
        else:
            await self.reporter.report(
                case.referral_id,
                status="final",
                text=f"{CATALOGUE[plan.examination_code].name}: {conclusion}",
                conclusion=conclusion,
                finding_flag=flag,
            )
        case.reported = True
        self.awaiting_delivery.add(plan.index)
        if flag != "routine":
            self.open_alerts.add(plan.index)
            self._alerts_changed = True

    async def _do_acknowledge(self, case: Case, task: Task) -> None:
        report_id = str(task.data["report_id"])
        await self.practices[case.plan.practice].acknowledge(
            report_id, by=case.plan.referrer, action="Reviewed and actioned with the patient"
        )
        case.acknowledged = True
        self.open_alerts.discard(case.plan.index)


# --------------------------------------------------------------------------- the summary

#: (label, event type without prefix and version)
SUMMARY_ROWS: tuple[tuple[str, str], ...] = (
    ("referrals received", "referral.submitted"),
    ("amended after a return", "referral.amended"),
    ("queries answered", "referral.query_answered"),
    ("cancelled by the practice", "referral.cancelled"),
    ("accepted at vetting", "vetting.accepted"),
    ("returned at vetting", "vetting.returned"),
    ("queried at vetting", "vetting.queried"),
    ("offered appointments", "booking.offered"),
    ("booked", "booking.booked"),
    ("rebooked", "booking.rebooked"),
    ("deferred by the patient", "booking.deferred"),
    ("walk-in authorised", "booking.walk_in_authorised"),
    ("did not attend", "booking.did_not_attend"),
    ("returned after DNA", "booking.returned_after_dna"),
    ("wait target breached", "booking.wait_target_breached"),
    ("arrived", "examination.arrived"),
    ("examined", "examination.completed"),
    ("report delayed (MDT)", "report.delayed"),
    ("reported", "report.issued"),
    ("delivered to the practice", "notification.delivered"),
    ("delivery failed", "notification.delivery_failed"),
    ("acknowledged", "notification.acknowledged"),
    ("alerts raised", "notification.alert_raised"),
    ("alerts escalated", "notification.alert_escalated"),
)


def _short_type(event_type: str) -> str:
    return event_type.removeprefix("uk.nhs.imaging.").rsplit(".v", 1)[0]


def summarise(events: Iterable[Received]) -> list[tuple[str, int, int]]:
    """(label, events, distinct referrals) for each row of SUMMARY_ROWS.

    Events are counted once by id: delivery is at least once, so a record may be repeated.
    """
    counts: Counter[str] = Counter()
    referrals: dict[str, set[str]] = {}
    seen: set[str] = set()
    for received in events:
        if received.envelope.id in seen:
            continue
        seen.add(received.envelope.id)
        kind = _short_type(received.envelope.type)
        counts[kind] += 1
        referrals.setdefault(kind, set()).add(received.envelope.subject)
    return [(label, counts[kind], len(referrals.get(kind, ()))) for label, kind in SUMMARY_ROWS]


def summary_table(rows: Sequence[tuple[str, int, int]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("what happened")
    table.add_column("events", justify="right")
    table.add_column("referrals", justify="right")
    for label, events, referrals in rows:
        table.add_row(label, str(events), str(referrals))
    return table


# --------------------------------------------------------------------------- the command

#: Background jobs look at the simulated clock often, so that they fire in the step that
#: crosses their deadline.
SIMULATION_ENV: dict[str, str] = {
    "SCHEDULING_DEADLINE_CHECK_INTERVAL_S": "0.2",
    "NOTIFY_WORKER_INTERVAL_S": "0.2",
    "REPORTING_PARK_SWEEP_INTERVAL_S": "1",
}


@dataclass(frozen=True)
class SimulationResult:
    events_file: Path
    events: int
    rows: list[tuple[str, int, int]]
    stats: RunStats
    profile: PlanProfile
    batch: EventBatch


async def simulate_month(
    settings: WorkloadSettings,
    out: Path,
    *,
    grid: timedelta = timedelta(minutes=30),
    progress: Progress | None = None,
    service_log_level: str = "WARNING",
) -> SimulationResult:
    """Plan, start a system, play the plan, export the events: the whole `pathway simulate`."""
    plan = plan_workload(settings)
    start = datetime.combine(settings.start, wall_time(0), tzinfo=LONDON).astimezone(UTC)
    end = datetime.combine(
        settings.start + timedelta(days=settings.days), wall_time(0), tzinfo=LONDON
    ).astimezone(UTC)
    work = out / "run"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    task_id = None
    if progress is not None:
        task_id = progress.add_task("starting", total=(end - start).total_seconds() / 60, status="")

    def on_tick(simulation: Simulation) -> None:
        if progress is None or task_id is None:
            return
        now = min(simulation.now, end).astimezone(LONDON)
        progress.update(
            task_id,
            completed=(min(simulation.now, end) - start).total_seconds() / 60,
            description=now.strftime("%a %d %b %H:%M"),
            status=(
                f"referrals {simulation.submitted}/{len(plan)} "
                f"reported {simulation.reported} acknowledged {simulation.acknowledged}"
            ),
        )

    env = {
        **SIMULATION_ENV,
        **{f"{name.upper()}_LOG_LEVEL": service_log_level for name in topics.SERVICES},
    }
    async with running_system(work, start_time=start, env=env) as system:
        async with httpx.AsyncClient(timeout=60.0) as http:
            simulation = Simulation(
                system,
                http,
                plan,
                start=start,
                end=end,
                grid=grid,
                seed=settings.seed,
                nation=settings.nation,
                on_tick=on_tick,
            )
            stats = await simulation.run()
        events_file = out / "events.jsonl"
        batch = await read_kafka(system.bootstrap)
        count = write_jsonl(batch.events, events_file, batch.origin)
    rows = summarise(batch.events)
    result = SimulationResult(events_file, count, rows, stats, profile(plan), batch)
    _write_summary(out / "summary.json", settings, result)
    return result


def _write_summary(path: Path, settings: WorkloadSettings, result: SimulationResult) -> None:
    document = {
        "settings": {
            "seed": settings.seed,
            "days": settings.days,
            "referrals_per_day": settings.referrals_per_day,
            "start": settings.start.isoformat(),
            "practices": sorted(settings.practices),
        },
        "plan": asdict(result.profile),
        "events": result.events,
        "summary": [
            {"what": label, "events": events, "referrals": referrals}
            for label, events, referrals in result.rows
        ],
        "run": {
            "ticks": result.stats.ticks,
            "wall_seconds": round(result.stats.wall_seconds, 1),
            "settle_seconds": round(result.stats.settle_seconds, 1),
            "observe_seconds": round(result.stats.observe_seconds, 1),
            "act_seconds": round(result.stats.act_seconds, 1),
            "job_wait_seconds": round(result.stats.job_wait_seconds, 1),
            "delivery_retries": len(result.stats.delivery_retries),
            "actions": dict(sorted(result.stats.actions.items())),
            "refused": dict(sorted(result.stats.refused.items())),
            "refusal_examples": dict(sorted(result.stats.refusal_examples.items())),
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n", "utf-8")


console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _parse_start(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter("expected a date such as 2026-03-09") from None


def simulate(
    seed: Annotated[
        int, typer.Option(help="Seed of the workload: the same seed, the same month.")
    ] = 1,
    days: Annotated[int, typer.Option(min=1, max=366, help="Simulated days.")] = 30,
    referrals_per_day: Annotated[
        float,
        typer.Option(min=0.0, help="Mean referrals per working day, across the practices."),
    ] = DEFAULT_REFERRALS_PER_DAY,
    start: Annotated[
        str, typer.Option(help="First simulated day (London), e.g. 2026-03-09.")
    ] = DEFAULT_START.isoformat(),
    tick_minutes: Annotated[
        int, typer.Option(min=5, max=240, help="Step of the simulated clock, in minutes.")
    ] = 30,
    out: Annotated[
        Path, typer.Option(help="Folder for events.jsonl, summary.json and the run's logs.")
    ] = DEFAULT_OUT,
    service_log_level: Annotated[
        str,
        typer.Option(
            help="Log level of the services (WARNING by default: logging costs the run time)."
        ),
    ] = "WARNING",
) -> None:
    """Play a month of referrals through a fresh system on a simulated clock, in minutes.

    Starts its own broker, store and services (whether or not `pathway up` runs), drives
    them as practices, clinicians, patients and providers would, and writes every event to
    <out>/events.jsonl; `pathway audit` then reads that file. See docs/simulation.md.
    """
    settings = WorkloadSettings(
        seed=seed,
        days=days,
        referrals_per_day=referrals_per_day,
        start=_parse_start(start),
        practices=practices_from_config(REPO / "config" / "practices.json"),
    )
    planned = profile(plan_workload(settings))
    console.print(
        f"[bold]simulate[/] seed {seed}: {planned.referrals} referrals over {days} days from "
        f"{settings.start.isoformat()} ({', '.join(f'{m} {n}' for m, n in planned.by_modality.items())}); "
        "starting a fresh system"
    )
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            result = asyncio.run(
                simulate_month(
                    settings,
                    out,
                    grid=timedelta(minutes=tick_minutes),
                    progress=progress,
                    service_log_level=service_log_level.upper(),
                )
            )
    except (TimeoutError, ApiError, OSError, RuntimeError) as error:
        err_console.print(f"[bold red]error:[/] {escape(str(error))}")
        err_console.print(f"  the services' logs are in {escape(str(out / 'run' / 'log'))}")
        raise typer.Exit(1) from None
    console.print(summary_table(result.rows, "simulated month: what happened (from the events)"))
    refused = sum(result.stats.refused.values())
    console.print(
        f"[bold]simulate[/] {result.events} events in {result.stats.wall_seconds:.0f}s "
        f"({result.stats.ticks} clock steps; {refused} actions refused as the world moved on)"
    )
    for note in result.batch.notes():
        console.print(f"  [yellow]note:[/] {escape(note)}")
    console.print(
        f"[bold]simulate[/] wrote {escape(str(result.events_file))}: run `pathway audit` for the audit"
    )
