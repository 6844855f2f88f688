"""The notify service's `pathway_*` metrics (docs/metrics.md), in the runtime's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pathway_schemas.values import FindingFlag

ALERTED_FLAGS = tuple(f.value for f in FindingFlag if f is not FindingFlag.ROUTINE)


@dataclass(frozen=True)
class NotifyMetrics:
    delivery_seconds: Histogram
    delivery_attempts: Counter
    reports_undelivered: Gauge
    acknowledgement_seconds: Histogram
    alerts_open: Gauge
    alerts_overdue: Gauge
    messages: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> NotifyMetrics:
        return cls(
            delivery_seconds=Histogram(
                "pathway_delivery_seconds",
                "Report issued to receipt from the practice system",
                ["transport"],
                buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400),
                registry=registry,
            ),
            delivery_attempts=Counter(
                "pathway_delivery_attempts_total",
                "Attempts to deliver a report, by outcome (delivered, retry, failed)",
                ["outcome"],
                registry=registry,
            ),
            reports_undelivered=Gauge(
                "pathway_reports_undelivered",
                "Reports waiting to be delivered (pending deliveries)",
                registry=registry,
            ),
            acknowledgement_seconds=Histogram(
                "pathway_acknowledgement_seconds",
                "Delivery (or alert) to acknowledgement by the practice, by finding flag",
                ["finding_flag"],
                buckets=(60, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400, 14 * 86400),
                registry=registry,
            ),
            alerts_open=Gauge(
                "pathway_alerts_open",
                "Unacknowledged alerts, by finding flag and escalation level",
                ["finding_flag", "level"],
                registry=registry,
            ),
            alerts_overdue=Gauge(
                "pathway_alerts_overdue",
                "Unacknowledged alerts past their acknowledgement time, by finding flag",
                ["finding_flag"],
                registry=registry,
            ),
            messages=Counter(
                "pathway_notices_total",
                "Messages sent on a channel (patient, referrer, alert), by outcome "
                "(sent, retry, failed)",
                ["channel", "outcome"],
                registry=registry,
            ),
        )
