"""Counting and timing: service metrics, topic offsets, event timestamps, quantiles."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pathway_schemas.envelope import Received

STORE_COMMANDS = "pathway_store_commands"
EVENTS_HANDLED = "pathway_events_handled"


@dataclass(frozen=True)
class Counters:
    """Cumulative counters summed from every service's /metrics at one moment."""

    #: (service, command) -> store commands sent
    store_commands: Mapping[tuple[str, str], float]
    #: (service, outcome) -> events consumed
    events_handled: Mapping[tuple[str, str], float]

    def minus(self, earlier: Counters) -> Counters:
        return Counters(
            store_commands=_minus(self.store_commands, earlier.store_commands),
            events_handled=_minus(self.events_handled, earlier.events_handled),
        )

    @property
    def commands(self) -> float:
        return sum(self.store_commands.values())

    def handled(self, *outcomes: str) -> float:
        return sum(n for (_, outcome), n in self.events_handled.items() if outcome in outcomes)

    def commands_by(self, index: int) -> dict[str, float]:
        totals: Counter[str] = Counter()
        for key, n in self.store_commands.items():
            totals[key[index]] += n  # type: ignore[assignment]
        return dict(totals.most_common())


def _minus(
    later: Mapping[tuple[str, str], float], earlier: Mapping[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {k: v - earlier.get(k, 0.0) for k, v in later.items() if v - earlier.get(k, 0.0)}


def parse_counters(texts: Iterable[str]) -> Counters:
    commands: dict[tuple[str, str], float] = defaultdict(float)
    handled: dict[tuple[str, str], float] = defaultdict(float)
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in {STORE_COMMANDS, EVENTS_HANDLED}:
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                labels = sample.labels
                if family.name == STORE_COMMANDS:
                    commands[(labels["service"], labels["command"])] += sample.value
                else:
                    handled[(labels["service"], labels["outcome"])] += sample.value
    return Counters(dict(commands), dict(handled))


async def scrape(http: httpx.AsyncClient, urls: Iterable[str]) -> Counters:
    responses = await asyncio.gather(*(http.get(f"{url}/metrics") for url in urls))
    for response in responses:
        response.raise_for_status()
    return parse_counters(r.text for r in responses)


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank: the ceil(q*n)-th smallest value (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Spread:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(
            count=len(values),
            p50=quantile(values, 0.50),
            p95=quantile(values, 0.95),
            p99=quantile(values, 0.99),
            max=max(values) if values else None,
        )


@dataclass(frozen=True)
class Hop:
    """One step along a referral's path: the cause's event, and the event it leads to."""

    name: str
    cause: str
    effect: str
    #: who acts in between: a service of the system, or the benchmark's stand-in actor
    actor: str = "service"


def short_type(event_type: str) -> str:
    return event_type.removeprefix("uk.nhs.imaging.").rsplit(".v", 1)[0]


@dataclass
class Timelines:
    """Each referral's first event of each type, by its envelope time (emitted at)."""

    times: dict[str, dict[str, datetime]] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[Received], referrals: set[str]) -> Timelines:
        timelines = cls()
        for received in events:
            subject = received.envelope.subject
            if subject not in referrals:
                continue
            kind = short_type(received.envelope.type)
            per = timelines.times.setdefault(subject, {})
            if kind not in per or received.envelope.time < per[kind]:
                per[kind] = received.envelope.time
        return timelines

    def hop_seconds(self, hop: Hop) -> list[float]:
        return [
            (per[hop.effect] - per[hop.cause]).total_seconds()
            for per in self.times.values()
            if hop.cause in per and hop.effect in per
        ]
