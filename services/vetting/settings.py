"""Settings of the vetting service: env prefix VETTING_, nested groups with `__`."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import HttpSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="VETTING_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    http: HttpSettings = HttpSettings(port=8002)
    # The operator's policy (open access), relative to config_dir unless absolute.
    policy_file: Path = Path("vetting.json")
    principals_file: Path = Path("principals.json")
    worklist_gauges_interval_s: float = Field(default=15.0, gt=0)
