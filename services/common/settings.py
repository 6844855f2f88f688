"""Settings groups every service shares; each service adds its own under its env prefix.

Read once at start (`Settings()`), passed down, and never read from the environment again.
A missing or bad value fails at start with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:19092"
    # The embedded broker hangs on InitProducerId, so idempotence is a setting: on for real Kafka.
    enable_idempotence: bool = False
    security_protocol: Literal["PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    graceful_timeout_s: float = Field(default=15.0, gt=0)
    # How long a fetch waits for records. The embedded broker does not answer a waiting fetch
    # when a record arrives, so every hop would wait this long: keep it short there.
    fetch_max_wait_ms: int = Field(default=500, ge=1, le=10_000)
    # How often a pattern subscription (every provider's inbound topic) asks for the list of
    # topics: a topic created since is read within about this long. Kafka's default, 5
    # minutes, is too slow for a provider plugging in; each refresh is one metadata request.
    metadata_max_age_ms: int = Field(default=30_000, ge=100, le=300_000)


class MongoSettings(BaseModel):
    url: str = "mongodb://127.0.0.1:27117/?directConnection=true"
    database: str = ""  # empty: imaging_<service>
    server_selection_timeout_ms: int = Field(default=5_000, ge=100)
    # How long a processed mark (the event ids a service applied) is kept. Longer than the
    # canonical topics' retention (400 days), so that no event still on Kafka can be applied
    # again when it is read again (a replay, a reset group) after its mark is gone.
    processed_retention_days: int = Field(default=450, ge=1)


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class OtelSettings(BaseModel):
    exporter: Literal["none", "otlp", "console"] = "none"
    endpoint: str | None = None


class RetrySettings(BaseModel):
    """Bounded retries for a failing handler before its event is dead-lettered."""

    attempts: int = Field(default=3, ge=1, le=20)
    backoff_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=5.0, ge=0)
    # An outage of the store or broker is retried this long in place before the record is
    # handed back to Kafka (not committed) to be redelivered: outages never dead-letter.
    outage_budget_s: float = Field(default=20.0, ge=0)


class ClockSettings(BaseModel):
    """`system` in production; `file` for simulated time shared by a whole run."""

    mode: Literal["system", "file"] = "system"
    file: Path | None = None


class ServiceSettings(BaseSettings):
    """Base of each service's settings; subclasses set `env_prefix`."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore", frozen=True)

    kafka: KafkaSettings = KafkaSettings()
    mongo: MongoSettings = MongoSettings()
    http: HttpSettings = HttpSettings()
    otel: OtelSettings = OtelSettings()
    retry: RetrySettings = RetrySettings()
    clock: ClockSettings = ClockSettings()
    config_dir: Path = Path("config")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    outbox_relay_interval_s: float = Field(default=1.0, gt=0)
    consumer_group: str = ""  # empty: the service's name

    def database_name(self, service: str) -> str:
        return self.mongo.database or f"imaging_{service}"

    def group(self, service: str) -> str:
        return self.consumer_group or service
