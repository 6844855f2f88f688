"""The scheduling rows of docs/metrics.md, in the service's own registry.

They are updated only after a unit of work commits (from its `Effects`), so a retried
transaction or a redelivered event never counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pathway_schemas.values import Modality, Priority

DAY = 86_400.0
WAIT_BUCKETS = tuple(d * DAY for d in (1, 2, 3, 5, 7, 10, 14, 21, 28, 42, 56))


@dataclass
class Effects:
    """What a committed unit of work did that the metrics must see."""

    waits: list[tuple[Priority, float, bool]] = field(default_factory=list)
    walk_in_waits: list[tuple[Priority, float]] = field(default_factory=list)
    slots_booked: list[tuple[str, Modality]] = field(default_factory=list)
    dna: list[str] = field(default_factory=list)


class SchedulingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.wait = Histogram(
            "pathway_wait_to_appointment_seconds",
            "Referral received to appointment, less patient-elected delay (first booking, or walk-in arrival)",
            ["priority"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.bookings = Counter(
            "pathway_bookings_total",
            "First bookings of referrals, by whether the appointment meets the priority's target",
            ["priority", "within_target"],
            registry=registry,
        )
        self.at_risk = Gauge(
            "pathway_referrals_at_risk",
            "Open referrals with no booking or offer that meets their target, or booked beyond it",
            ["priority"],
            registry=registry,
        )
        self.dna = Counter(
            "pathway_dna_total",
            "Did-not-attends, by what happened next",
            ["next_step"],
            registry=registry,
        )
        self.slots_booked = Counter(
            "pathway_slots_booked_total",
            "Slots taken by bookings and rebookings",
            ["provider", "modality"],
            registry=registry,
        )
        for priority in Priority:
            self.at_risk.labels(priority.value).set(0)

    def record(self, effects: Effects) -> None:
        for priority, seconds, within in effects.waits:
            self.wait.labels(priority.value).observe(seconds)
            self.bookings.labels(priority.value, "true" if within else "false").inc()
        for priority, seconds in effects.walk_in_waits:
            self.wait.labels(priority.value).observe(seconds)
        for provider, modality in effects.slots_booked:
            self.slots_booked.labels(provider, modality.value).inc()
        for next_step in effects.dna:
            self.dna.labels(next_step).inc()

    def set_at_risk(self, counts: dict[Priority, int]) -> None:
        for priority, count in counts.items():
            self.at_risk.labels(priority.value).set(count)
