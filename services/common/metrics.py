"""Prometheus metrics of the runtime kit; each service adds its `pathway_` metrics to the same registry.

One registry per service app, so that several services can run in one test process.
Labels are closed sets only: never a referral id, NHS number or user id.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class KitMetrics:
    registry: CollectorRegistry
    events_handled: Counter
    handler_seconds: Histogram
    dead_letters: Counter
    authz_denied: Counter
    retries: Counter
    outbox_backlog: Gauge
    published: Counter
    publish_errors: Counter

    @classmethod
    def create(cls, service: str, registry: CollectorRegistry | None = None) -> KitMetrics:
        registry = registry or CollectorRegistry()
        return cls(
            registry=registry,
            events_handled=Counter(
                "pathway_events_handled_total",
                "Events consumed, by outcome (applied, duplicate, ignored, dead_lettered)",
                ["service", "event_type", "outcome"],
                registry=registry,
            ),
            handler_seconds=Histogram(
                "pathway_handler_seconds",
                "Time to handle one event, decode to commit",
                ["service", "event_type"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 240),
                registry=registry,
            ),
            dead_letters=Counter(
                "pathway_dead_letters_total",
                "Records sent to the dead-letter topic, by reason",
                ["service", "topic", "reason"],
                registry=registry,
            ),
            authz_denied=Counter(
                "pathway_authz_denied_total",
                "Provider events or API calls refused because the caller may not act on the referral",
                ["service", "channel"],
                registry=registry,
            ),
            retries=Counter(
                "pathway_handler_retries_total",
                "Handler attempts retried, by kind (error, outage)",
                ["service", "kind"],
                registry=registry,
            ),
            outbox_backlog=Gauge(
                "pathway_outbox_backlog",
                "Committed events not yet published (should stay near zero)",
                ["service"],
                registry=registry,
            ),
            published=Counter(
                "pathway_events_published_total",
                "Events published to Kafka",
                ["service", "event_type"],
                registry=registry,
            ),
            publish_errors=Counter(
                "pathway_publish_errors_total",
                "Failed publish attempts (the event stays in the outbox)",
                ["service"],
                registry=registry,
            ),
        )
