"""Every subscriber of every service has a consumer group and an explicit ack policy.

FastStream's Kafka default (ACK_FIRST) commits before processing: at-most-once. Ours must
commit only after handling, so every subscriber uses NACK_ON_ERROR with a group.
"""

from __future__ import annotations

import importlib

import pytest
from faststream import AckPolicy

from services.common.settings import KafkaSettings

SERVICES = ("request", "vetting", "scheduling", "reporting", "notify")


@pytest.mark.parametrize("service", SERVICES)
def test_every_subscriber_has_a_group_and_commits_only_after_handling(service: str) -> None:
    main = importlib.import_module(f"services.{service}.main")
    settings = importlib.import_module(f"services.{service}.settings").Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1")
    )
    runtime = main.create_app(settings).state.runtime
    subscribers = list(runtime.broker.subscribers)
    assert subscribers, f"{service} has no subscriber"
    for subscriber in subscribers:
        assert subscriber.group_id == service, f"{service}: subscriber without its consumer group"
        assert subscriber.ack_policy == AckPolicy.NACK_ON_ERROR, (
            f"{service}: ack policy {subscriber.ack_policy}"
        )
    assert runtime.consumer.handlers, f"{service} handles no event"
