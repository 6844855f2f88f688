"""Settings of the request service: env prefix REQUEST_, nested groups with `__`."""

from pydantic_settings import SettingsConfigDict

from services.common.settings import HttpSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REQUEST_", env_nested_delimiter="__", extra="ignore", frozen=True)

    http: HttpSettings = HttpSettings(port=8001)
