"""The operator's notify policy, read once at start from `config/notify.json`.

Practice delivery endpoints with a reference to each practice's signing secret, the retry
policy of deliveries and messages, the acknowledgement windows and the escalation ladder
(local policy, with the brief's values as defaults). A bad file or a secret that cannot be
resolved stops the service at start with a reason.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pathway_schemas.values import FindingFlag, OdsCode

log = logging.getLogger("pathway.notify.config")


class _Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Practice(_Policy):
    """Where a practice's GP system receives reports, and the reference to its signing secret.

    `secret_ref` is `env:VARIABLE`, `file:/path/to/secret`, or `dev:<text>` (a development
    checkout only: refused when NOTIFY_ALLOW_DEV_SECRETS is false).
    """

    ods: OdsCode
    transport: Literal["http"] = "http"
    endpoint: Annotated[str, Field(pattern=r"^https?://", max_length=2000)]
    secret_ref: Annotated[str, Field(pattern=r"^(env|file|dev):.+$")]


class Backoff(_Policy):
    max_attempts: int = Field(default=6, ge=1, le=100)
    initial_s: float = Field(default=30.0, gt=0)
    max_s: float = Field(default=1800.0, gt=0)

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt: doubling, capped."""
        return float(min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1)))


class DeliveryPolicy(Backoff):
    timeout_s: float = Field(default=10.0, gt=0)


class Window(_Policy):
    """How long a recipient has to acknowledge: elapsed hours, or working days (same wall time)."""

    hours: float | None = Field(default=None, gt=0)
    working_days: int | None = Field(default=None, ge=1, le=60)

    @model_validator(mode="after")
    def _exactly_one(self) -> Window:
        if (self.hours is None) == (self.working_days is None):
            raise ValueError("a window is either 'hours' or 'working_days', not both or neither")
        return self


def _default_windows() -> dict[FindingFlag, Window]:
    return {
        FindingFlag.CRITICAL: Window(hours=1),
        FindingFlag.URGENT: Window(hours=24),
        FindingFlag.UNEXPECTED_SIGNIFICANT: Window(working_days=5),
    }


class Rung(_Policy):
    """One step of the escalation ladder: who is alerted, at the practice or the provider."""

    role: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
    at: Literal["practice", "provider"]
    # "referrer": address the referral's referrer by name too (the requesting GP).
    person: Literal["referrer"] | None = None


def _default_ladder() -> tuple[Rung, ...]:
    return (
        Rung(role="requesting_gp", at="practice", person="referrer"),
        Rung(role="practice_duty_clinician", at="practice"),
        Rung(role="radiology_lead", at="provider"),
    )


class AlertPolicy(_Policy):
    windows: dict[FindingFlag, Window] = Field(default_factory=_default_windows)
    ladder: tuple[Rung, ...] = Field(default_factory=_default_ladder, min_length=1)
    nation: Literal["ENG", "WLS", "SCT", "NIR"] = "ENG"
    # Who hears on the alert channel that a report could not be delivered.
    delivery_failure_role: str = Field(default="service_desk", max_length=64)
    # Alert messages never give up; a failing alert channel is retried at least this often.
    retry_max_s: float = Field(default=60.0, gt=0)

    @field_validator("windows")
    @classmethod
    def _no_routine_window(cls, windows: dict[FindingFlag, Window]) -> dict[FindingFlag, Window]:
        if FindingFlag.ROUTINE in windows:
            raise ValueError("routine findings never escalate: remove the 'routine' window")
        missing = {f for f in FindingFlag if f is not FindingFlag.ROUTINE} - set(windows)
        if missing:
            raise ValueError(f"no acknowledgement window for {', '.join(sorted(missing))}")
        return windows


ChannelKind = Literal["file", "log"]


class Channels(_Policy):
    patient: ChannelKind = "file"
    referrer: ChannelKind = "file"
    alert: ChannelKind = "file"


class NotifyConfig(_Policy):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    note: str = Field(default="", alias="_note")
    practices: tuple[Practice, ...] = ()
    delivery: DeliveryPolicy = DeliveryPolicy()
    messages: Backoff = Backoff(max_attempts=10, initial_s=30, max_s=3600)
    alerts: AlertPolicy = AlertPolicy()
    channels: Channels = Channels()

    @field_validator("practices")
    @classmethod
    def _one_entry_per_practice(cls, practices: tuple[Practice, ...]) -> tuple[Practice, ...]:
        seen: set[str] = set()
        for practice in practices:
            if practice.ods in seen:
                raise ValueError(f"practice {practice.ods} is listed twice")
            seen.add(practice.ods)
        return practices


class PracticeDirectory:
    """The configured practices with their secrets resolved (once, at start)."""

    def __init__(self, practices: dict[str, Practice], secrets: dict[str, bytes]) -> None:
        self._practices = practices
        self._secrets = secrets

    def get(self, ods: str) -> Practice | None:
        return self._practices.get(ods)

    def secret(self, ods: str) -> bytes | None:
        return self._secrets.get(ods)

    def __contains__(self, ods: object) -> bool:
        return ods in self._practices


def resolve_secret(ref: str, *, base_dir: Path, allow_dev: bool) -> bytes:
    scheme, _, value = ref.partition(":")
    if scheme == "env":
        secret = os.environ.get(value)
        if not secret:
            raise ValueError(f"secret reference {ref!r}: environment variable {value} is not set")
        return secret.encode()
    if scheme == "file":
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        if not path.exists():
            raise ValueError(f"secret reference {ref!r}: file {path} does not exist")
        return path.read_bytes().strip()
    if scheme == "dev":
        if not allow_dev:
            raise ValueError(
                f"secret reference {ref!r} is a development secret and NOTIFY_ALLOW_DEV_SECRETS "
                "is false: reference a mounted secret (env: or file:)"
            )
        return value.encode()
    raise ValueError(f"secret reference {ref!r} must start with env:, file: or dev:")


def load_config(path: Path) -> NotifyConfig:
    if not path.exists():
        raise FileNotFoundError(
            f"notify policy {path} is missing: copy config/notify.json or set NOTIFY_CONFIG_FILE"
        )
    try:
        return NotifyConfig.model_validate(json.loads(path.read_text("utf-8")))
    except (ValidationError, json.JSONDecodeError) as error:
        raise ValueError(f"notify policy {path} is not valid: {error}") from None


def practice_directory(
    config: NotifyConfig, *, base_dir: Path, allow_dev: bool
) -> PracticeDirectory:
    secrets: dict[str, bytes] = {}
    for practice in config.practices:
        try:
            secrets[practice.ods] = resolve_secret(
                practice.secret_ref, base_dir=base_dir, allow_dev=allow_dev
            )
        except ValueError as error:
            raise ValueError(f"practice {practice.ods}: {error}") from None
    development = [p.ods for p in config.practices if p.secret_ref.startswith("dev:")]
    if development:
        log.warning("development signing secrets in use for practices %s", ", ".join(development))
    return PracticeDirectory({p.ods: p for p in config.practices}, secrets)
