"""The request service's pathway metrics (names fixed in docs/metrics.md); closed label sets only."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

UNKNOWN = "unknown"  # priority or modality of a request too malformed to say


@dataclass(frozen=True)
class RequestMetrics:
    received: Counter
    guidance: Counter
    duplicates: Counter
    intake_rejections: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RequestMetrics:
        return cls(
            received=Counter(
                "pathway_referrals_received_total",
                "Referral requests received, by priority, modality and outcome (accepted, rejected)",
                ["priority", "modality", "outcome"],
                registry=registry,
            ),
            guidance=Counter(
                "pathway_guidance_outcomes_total",
                "Guidance outcomes of submitted and amended referrals",
                ["outcome"],
                registry=registry,
            ),
            duplicates=Counter(
                "pathway_duplicates_flagged_total",
                "Submitted or amended referrals flagged as possible duplicate imaging",
                ["modality"],
                registry=registry,
            ),
            intake_rejections=Counter(
                "pathway_intake_rejections_total",
                "Referral requests refused, by channel (api, kafka) and reason",
                ["channel", "reason"],
                registry=registry,
            ),
        )

    def rejected(
        self, channel: str, reason: str, priority: str = UNKNOWN, modality: str = UNKNOWN
    ) -> None:
        self.received.labels(priority, modality, "rejected").inc()
        self.intake_rejections.labels(channel, reason).inc()
