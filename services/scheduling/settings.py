"""Settings of the scheduling service: env prefix SCHEDULING_, nested groups with `__`.

Everything under `policy` is local policy (pathway.md): configurable, with the brief's
values as defaults, e.g. `SCHEDULING_POLICY__DNA_LIMIT=3`.
"""

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from pathway_schemas.values import Modality
from services.common.settings import HttpSettings, ServiceSettings

DEFAULT_SLOT_MINUTES: dict[Modality, int] = {
    Modality.XR: 10,
    Modality.US: 20,
    Modality.CT: 15,
    Modality.MR: 30,
    Modality.DEXA: 20,
    Modality.FLUOROSCOPY: 30,
    Modality.NUCLEAR_MEDICINE: 30,
}


class SchedulingPolicy(BaseModel):
    """Targets from the guide and the local policy choices around them."""

    target_days_urgent: int = Field(default=7, ge=1, le=90)
    target_days_routine_desirable: int = Field(default=7, ge=1, le=90)
    target_days_routine_acceptable: int = Field(default=14, ge=1, le=90)
    slot_minutes: dict[Modality, int] = Field(default_factory=lambda: dict(DEFAULT_SLOT_MINUTES))
    offer_count: int = Field(default=5, ge=1, le=20, description="Offers sent to the patient")
    offers_per_site: int = Field(default=2, ge=1, le=10)
    choose_by_hours_routine: float = Field(default=48, gt=0)
    choose_by_hours_urgent: float = Field(default=12, gt=0)
    min_notice_minutes: int = Field(
        default=120, ge=0, description="No slot offered sooner than this"
    )
    default_booking_notice_minutes: int = Field(
        default=30, ge=0, description="The default never books an offer starting sooner than this"
    )
    search_horizon_days: int = Field(default=42, ge=7, le=365)
    search_chunk_days: int = Field(default=7, ge=1, le=60)
    capacity_retry_minutes: int = Field(
        default=60, ge=1, description="Re-search after no slot at all"
    )
    dna_limit: int = Field(
        default=2, ge=1, le=10, description="Did-not-attends before return to referrer"
    )
    walk_in_validity_days: int = Field(default=14, ge=1, le=90)
    max_deferral_days: int = Field(default=90, ge=1, le=365)
    bank_holiday_nation: str = "ENG"

    @model_validator(mode="after")
    def _complete(self) -> "SchedulingPolicy":
        missing = [m.value for m in Modality if m not in self.slot_minutes]
        if missing:
            raise ValueError(f"slot_minutes has no length for {', '.join(missing)}")
        if any(not 5 <= minutes <= 240 for minutes in self.slot_minutes.values()):
            raise ValueError("slot_minutes must be between 5 and 240 minutes")
        if self.target_days_routine_desirable > self.target_days_routine_acceptable:
            raise ValueError(
                "target_days_routine_desirable must not exceed target_days_routine_acceptable"
            )
        return self


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="SCHEDULING_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    http: HttpSettings = HttpSettings(port=8003)
    policy: SchedulingPolicy = SchedulingPolicy()
    providers_file: str = Field(
        default="providers.json", description="Under config_dir: the provider registry seed"
    )
    principals_file: str = "principals.json"
    # Real-time pacing of the background job; the deadlines themselves follow the service clock.
    deadline_check_interval_s: float = Field(default=5.0, gt=0)
    at_risk_refresh_s: float = Field(default=30.0, gt=0)
    booking_attempts: int = Field(
        default=10, ge=1, le=100, description="Retries when a slot is taken meanwhile"
    )
    # On for the embedded stack and development: a provider's topics are created when it is
    # added. Off in production, where the operator makes them (Strimzi) with its Kafka user.
    create_provider_topics: bool = False
    provider_topic_partitions: int = Field(default=3, ge=1, le=1000)
    provider_topic_replicas: int = Field(default=1, ge=1, le=7)
