"""A provider's own Kafka topics, created by this service where that is allowed.

On the embedded stack and in development the service creates a provider's inbound and
outbound topics when the provider is added (and, at start, those of every provider in the
registry: the embedded broker forgets its topics when it restarts). In production the
setting is off: the topics, and the provider's Kafka user with its ACLs, are Strimzi
resources made by the operator (docs/deploy.md), and the service has no right to create
topics. Either way scheduling and reporting read a new inbound topic without a restart,
because they subscribe to every provider's inbound topic by pattern.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from faststream.kafka import KafkaBroker
from faststream.kafka.schemas import Topic

from pathway_schemas import topics
from services.common.jobs import BackgroundJob

log = logging.getLogger("pathway.scheduling.topics")

RETRY_S = 5.0


class ProviderTopics:
    def __init__(
        self, broker: KafkaBroker, *, create: bool, partitions: int, replicas: int
    ) -> None:
        self.broker = broker
        self.create = create
        self.partitions = partitions
        self.replicas = replicas

    async def ensure(self, *ods_codes: str) -> bool:
        """Create these providers' topics unless they exist; False when creation is off.

        Raises the broker's error (a KafkaError is an outage: the API answers 503, retry).
        """
        if not self.create or not ods_codes:
            return False
        wanted = [
            Topic(name, num_partitions=self.partitions, replication_factor=self.replicas)
            for code in ods_codes
            for name in (topics.provider_inbound(code), topics.provider_outbound(code))
        ]
        # The broker's own admin client: the service's credentials, connected at start.
        results = await self.broker.config.broker_config.admin.create_topics(wanted)
        for result in results:
            if result.error is not None:
                raise result.error
        return True

    def at_start(self, registry: Callable[[], Awaitable[list[str]]]) -> BackgroundJob:
        """A job that creates the topics of every provider in the registry once, then ends."""

        async def run(stopping: asyncio.Event) -> None:
            if not self.create:
                return
            while not stopping.is_set():
                try:
                    await self.ensure(*await registry())
                    return
                except Exception as error:
                    log.warning(
                        "provider topics not created yet (%s); trying again", type(error).__name__
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), RETRY_S)

        return run
