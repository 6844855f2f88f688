"""Settings of the reporting service: env prefix REPORTING_, nested groups with `__`."""

from __future__ import annotations

from datetime import time
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import HttpSettings, ServiceSettings


class TurnaroundSettings(BaseModel):
    """Local policy of the reporting clock (the guide's rules; the values here are ours)."""

    nation: Literal["ENG", "WLS", "SCT", "NIR"] = "ENG"
    # "At the time of examination" needs a number to be measurable: local policy is one hour.
    urgent_minutes: int = Field(default=60, ge=1, le=24 * 60)
    # London wall time at which a working day's reports are due. The default is the end of
    # the calendar day, so "same working day" never expires before the day does.
    working_day_ends_at: time = time(23, 59, 59)
    mdt_working_days: int = Field(default=2, ge=1, le=10)


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPORTING_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    http: HttpSettings = HttpSettings(port=8004)
    turnaround: TurnaroundSettings = TurnaroundSettings()
    providers_file: str = "providers.json"
    # A provider's event for a referral whose booking (or details) this service has not yet
    # consumed is parked this long before it is refused as "not assigned to this provider".
    park_timeout_s: float = Field(default=300.0, gt=0)
    park_sweep_interval_s: float = Field(default=5.0, gt=0)
    # A sweep that claimed an expired parked event and has not dead-lettered it this long
    # (wall time) is taken to have died: another sweep takes the claim over.
    park_claim_lease_s: float = Field(default=60.0, gt=0)
    overdue_refresh_interval_s: float = Field(default=30.0, gt=0)
    priors_limit: int = Field(default=20, ge=0, le=200)
    worklist_limit: int = Field(default=100, ge=1, le=1000)
