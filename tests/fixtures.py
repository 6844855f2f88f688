"""Fixtures for tests that run services: a fresh broker per test, and service settings.

Every test that runs a service gets its own embedded broker (Tansu starts in well under a
second), so that no test reads another's events; the store is shared per session and each
test has its own databases (`isolated_names`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pathway_cli.stack import EmbeddedBroker, create_topics, free_port, pathway_topics
from services.common.settings import KafkaSettings, MongoSettings, RetrySettings, ServiceSettings

PROVIDERS = ("RXA01", "NWX02")
REPO = Path(__file__).resolve().parent.parent
S = TypeVar("S", bound=ServiceSettings)


@pytest.fixture
async def kafka(stack_log_dir: Path) -> AsyncIterator[str]:
    """A new embedded broker for this test, with every pathway topic created; its bootstrap."""
    broker = EmbeddedBroker(free_port(), stack_log_dir / f"broker-{free_port()}.log")
    broker.start()
    try:
        await broker.wait_ready(30)
        await create_topics(broker.bootstrap, pathway_topics(PROVIDERS))
        yield broker.bootstrap
    finally:
        broker.stop(grace=2)


SettingsFactory = Callable[..., Any]


@pytest.fixture
def service_settings(kafka: str, mongo_url: str, isolated_names: Any) -> SettingsFactory:
    """`service_settings(Settings, "vetting", **overrides)`: settings on this test's broker and databases."""

    def make(settings_class: type[S], service: str, **overrides: Any) -> S:
        values: dict[str, Any] = {
            "kafka": KafkaSettings(
                bootstrap_servers=kafka, session_timeout_ms=6000, fetch_max_wait_ms=50
            ),
            "mongo": MongoSettings(
                url=mongo_url, database=isolated_names.database(f"imaging_{service}")
            ),
            "retry": RetrySettings(
                attempts=3, backoff_s=0.05, backoff_max_s=0.2, outage_budget_s=5
            ),
            "config_dir": REPO / "config",
            "outbox_relay_interval_s": 0.5,
        }
        values.update(overrides)
        return settings_class(**values)

    return make
