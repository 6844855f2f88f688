"""Settings of the request service: env prefix REQUEST_, nested groups with `__`."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import HttpSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="REQUEST_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    http: HttpSettings = HttpSettings(port=8001)
    # Local policy: same patient and examination within this many days of the examination.
    duplicate_window_days: int = Field(default=28, ge=0, le=3650)
    practices_file: str = Field(default="practices.json", min_length=1)
    guidance_rules_file: str = Field(default="guidance_rules.json", min_length=1)
