"""Settings of the scheduling service: env prefix SCHEDULING_, nested groups with `__`."""

from pydantic_settings import SettingsConfigDict

from services.common.settings import HttpSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SCHEDULING_", env_nested_delimiter="__", extra="ignore", frozen=True)

    http: HttpSettings = HttpSettings(port=8003)
