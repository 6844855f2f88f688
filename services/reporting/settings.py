"""Settings of the reporting service: env prefix RE8004ING_, nested groups with `__`."""

from pydantic_settings import SettingsConfigDict

from services.common.settings import HttpSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RE8004ING_", env_nested_delimiter="__", extra="ignore", frozen=True)

    http: HttpSettings = HttpSettings(port=8004)
