"""Settings of the notify service: env prefix NOTIFY_, nested groups with `__`."""

from pydantic_settings import SettingsConfigDict

from services.common.settings import HttpSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", env_nested_delimiter="__", extra="ignore", frozen=True)

    http: HttpSettings = HttpSettings(port=8005)
