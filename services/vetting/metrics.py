"""The vetting stage's metrics (names in docs/metrics.md): vetting time, worklist, decisions.

The worklist gauges are refreshed by a background job with two indexed queries per
priority, so a scrape costs nothing and the figure is at most one interval old.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pathway_schemas.values import Priority
from services.common.clock import Clock
from services.common.jobs import BackgroundJob, every
from services.vetting.repository import WorklistRepository
from services.vetting.service import DecisionOutcome, Step, age_seconds

log = logging.getLogger("pathway.vetting.metrics")

_HOUR = 3600.0
_DAY = 24 * _HOUR


@dataclass(frozen=True)
class VettingMetrics:
    vetting_seconds: Histogram
    worklist_open: Gauge
    worklist_oldest_seconds: Gauge
    decisions: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> VettingMetrics:
        return cls(
            vetting_seconds=Histogram(
                "pathway_vetting_seconds",
                "Time from entering vetting (submission, amendment or answer) to the decision",
                ["priority", "outcome"],
                buckets=(
                    60,
                    300,
                    900,
                    _HOUR,
                    4 * _HOUR,
                    8 * _HOUR,
                    _DAY,
                    2 * _DAY,
                    3 * _DAY,
                    7 * _DAY,
                ),
                registry=registry,
            ),
            worklist_open=Gauge(
                "pathway_vetting_worklist_open",
                "Referrals waiting on the vetting worklist",
                ["priority"],
                registry=registry,
            ),
            worklist_oldest_seconds=Gauge(
                "pathway_vetting_worklist_oldest_seconds",
                "Age of the longest-waiting referral on the vetting worklist (0 when empty)",
                ["priority"],
                registry=registry,
            ),
            decisions=Counter(
                "pathway_vetting_decisions_total",
                "Vetting decisions: reason is the return reason, open_access or clinician for an "
                "acceptance, query for a query",
                ["outcome", "reason"],
                registry=registry,
            ),
        )

    def record(self, step: Step | None) -> None:
        """Count a decision a committed step made (nothing for queueing or a repeat)."""
        if step is None or step.decision is None:
            return
        decision = step.decision
        if decision.outcome is DecisionOutcome.ACCEPTED:
            reason = "open_access" if decision.automatic else "clinician"
        elif decision.outcome is DecisionOutcome.RETURNED and decision.reason is not None:
            reason = decision.reason.value
        else:
            reason = "query"
        priority = decision.priority or step.item.referral.priority
        self.decisions.labels(decision.outcome.value, reason).inc()
        self.vetting_seconds.labels(priority.value, decision.outcome.value).observe(
            age_seconds(step.item.entered_at, decision.decided_at)
        )

    async def refresh_worklist(self, repository: WorklistRepository, clock: Clock) -> None:
        now = clock.now()
        for priority in Priority:
            count, oldest = await repository.open_count_and_oldest(priority)
            self.worklist_open.labels(priority.value).set(count)
            self.worklist_oldest_seconds.labels(priority.value).set(
                age_seconds(oldest, now) if oldest else 0.0
            )


def worklist_gauges_job(
    metrics: VettingMetrics, repository: WorklistRepository, clock: Clock, interval_s: float
) -> BackgroundJob:
    async def refresh() -> None:
        await metrics.refresh_worklist(repository, clock)

    return every(interval_s, refresh, "worklist gauges")
