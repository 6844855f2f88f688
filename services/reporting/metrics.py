"""Turnaround metrics of the reporting service (docs/metrics.md, reporting rows)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.reporting.commands import FinalReport

HOUR = 3600.0
DAY = 24 * HOUR
TURNAROUND_BUCKETS = (
    15 * 60.0, 30 * 60.0, HOUR, 2 * HOUR, 4 * HOUR, 8 * HOUR, 12 * HOUR,
    DAY, 1.5 * DAY, 2 * DAY, 3 * DAY, 5 * DAY, 7 * DAY, 14 * DAY,
)  # fmt: skip


@dataclass(frozen=True)
class ReportingMetrics:
    turnaround: Histogram
    reports: Counter
    overdue: Gauge
    parked: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ReportingMetrics:
        return cls(
            turnaround=Histogram(
                "pathway_report_turnaround_seconds",
                "Examination completed to final report available, by priority and care setting",
                ["priority", "care_setting"],
                buckets=TURNAROUND_BUCKETS,
                registry=registry,
            ),
            reports=Counter(
                "pathway_reports_total",
                "Final reports issued, by whether they met their turnaround target (the SLI)",
                ["priority", "care_setting", "within_target"],
                registry=registry,
            ),
            overdue=Gauge(
                "pathway_examinations_overdue",
                "Completed examinations without a final report, already past their deadline",
                ["provider"],
                registry=registry,
            ),
            parked=Gauge(
                "pathway_provider_events_parked",
                "Provider events waiting for the booking they refer to (a lasting rise is a stall)",
                registry=registry,
            ),
        )

    def final_report(self, final: FinalReport) -> None:
        labels = (final.priority.value, final.care_setting.value)
        self.turnaround.labels(*labels).observe(final.turnaround_s)
        self.reports.labels(*labels, "true" if final.within_target else "false").inc()
