"""What-if runs: a service exactly as shipped, but with its Kafka consumers' fetch wait shortened.

The embedded broker does not answer a waiting fetch as soon as a record arrives, so each
hop between services waits on the consumer's `fetch_max_wait_ms` (aiokafka's default is
500). `python -m benchmarks.run --what-if-fetch-wait-ms 20`
starts the services through these modules to measure what shortening it would give; the
setting itself belongs in the runtime kit (see docs/benchmark.md).
"""

from __future__ import annotations

import os
import runpy
from typing import Any

FETCH_WAIT_ENV = "PATHWAY_BENCHMARK_FETCH_MAX_WAIT_MS"


def run(service: str) -> None:
    import aiokafka  # type: ignore[import-untyped,unused-ignore]

    wait_ms = int(os.environ.get(FETCH_WAIT_ENV, "20"))
    original = aiokafka.AIOKafkaConsumer.__init__

    def shortened(self: Any, *topics: str, **settings: Any) -> None:
        settings["fetch_max_wait_ms"] = wait_ms
        original(self, *topics, **settings)

    aiokafka.AIOKafkaConsumer.__init__ = shortened
    runpy.run_module(f"services.{service}", run_name="__main__", alter_sys=True)
