"""Settings of the notify service: env prefix NOTIFY_, nested groups with `__`.

The pathway policy (practice endpoints, retries, acknowledgement windows, the escalation
ladder) lives in `config/notify.json`; these settings say where things are and how often
the background workers look for due work.
"""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import HttpSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="NOTIFY_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    http: HttpSettings = HttpSettings(port=8005)
    # Empty: <config_dir>/notify.json.
    config_file: Path | None = None
    # Where the file channel writes patient, referrer and alert messages (the embedded run).
    channel_dir: Path = Path("var/notify")
    # How often each worker looks for due deliveries, messages and escalations (wall time).
    worker_interval_s: float = Field(default=1.0, gt=0)
    # A claimed delivery or message is another replica's to take after this (pathway clock).
    lease_s: float = Field(default=120.0, gt=0)
    delivery_concurrency: int = Field(default=8, ge=1, le=64)
    gauges_interval_s: float = Field(default=15.0, gt=0)
    # The local practice inbox (a stand-in GP system); off in a real deployment.
    inbox_enabled: bool = True
    # `dev:` secrets in notify.json are for a development checkout only; set false in production.
    allow_dev_secrets: bool = True
    # How far a signed request's timestamp may be from the receiver's clock.
    signature_tolerance_s: int = Field(default=300, ge=1)

    def notify_config_path(self) -> Path:
        return self.config_file or self.config_dir / "notify.json"
