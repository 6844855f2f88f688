"""The HTTP API: choose and book (booking clerks, operators) and the provider registry (operators)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pathway_schemas import topics
from pathway_schemas.events import Appointment, BookedBy
from pathway_schemas.values import Modality, Priority, ShortText
from services.common.auth import Principal, Role, require
from services.common.clock import Clock
from services.common.errors import Invalid, NotFound, Rejected
from services.scheduling.model import ReferralRecord, WalkIn
from services.scheduling.provider_topics import ProviderTopics
from services.scheduling.registry import Provider
from services.scheduling.repository import BookingRepository
from services.scheduling.service import BookingContention, Scheduler
from services.scheduling.waits import wait_seconds

SLOT_ID_PATTERN = (
    r"^[A-Z0-9]{3,10}\.[A-Za-z0-9_-]{1,64}\.[A-Z]{2,4}\.[0-9]{1,2}\.[0-9]{8}T[0-9]{4}Z$"
)
ReferralIdPath = Annotated[str, Path(pattern=r"^ref_[0-9a-f]{32}$", description="The referral id")]
OdsPath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9]{3,10}$", description="The provider's ODS code")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="The same key applies a command once, however often it is sent",
    ),
]

clerk = require(Role.BOOKING_CLERK, Role.OPERATOR)
operator = require(Role.OPERATOR)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ChooseRequest(_Body):
    slot_id: str = Field(
        max_length=128,
        pattern=SLOT_ID_PATTERN,
        description="A slot id from the offers or availability, e.g. RXA01.RIV-MAIN.XR.1.20260324T0900Z",
    )
    chosen_by: Literal["patient", "clerk"] = Field(
        default="clerk",
        description="'patient' when the patient chose it (e.g. through a patient-facing app)",
    )


class RebookRequest(_Body):
    slot_id: str | None = Field(
        default=None,
        max_length=128,
        pattern=SLOT_ID_PATTERN,
        description="Omit to take the earliest free slot",
    )


class CancelRequest(_Body):
    reason: Literal["patient_request", "provider_request"]


class DeferRequest(_Body):
    reason: ShortText = Field(description="The patient's social reason (recorded for the audit)")
    available_from: date = Field(description="The first day the patient can attend (Europe/London)")


class BookingView(BaseModel):
    referral_id: str
    state: str
    priority: Priority
    modality: Modality
    examination_code: str
    received_at: AwareDatetime
    target_days: int
    target_deadline: AwareDatetime = Field(
        description="Latest appointment start within target, pauses added"
    )
    offers: list[Appointment]
    choose_by: AwareDatetime | None
    appointment: Appointment | None
    booked_by: BookedBy | None
    wait_seconds: float | None = Field(
        description="Received to appointment, less patient-elected delay"
    )
    within_target: bool | None
    within_desirable: bool | None = Field(
        description="Also within the desirable target (routine 7 days)"
    )
    excluded_delay_seconds: float
    available_from: date | None
    dna_count: int
    walk_in: WalkIn | None


class ProviderView(BaseModel):
    provider: Provider
    inbound_topic: str
    outbound_topic: str
    note: str = ""


def _view(record: ReferralRecord, scheduler: Scheduler) -> BookingView:
    appointment = record.appointment
    return BookingView(
        referral_id=record.referral_id,
        state=record.state.value,
        priority=record.priority,
        modality=record.modality,
        examination_code=record.examination_code,
        received_at=record.received_at,
        target_days=record.target_days,
        target_deadline=record.target_deadline,
        offers=record.offers,
        choose_by=record.choose_by,
        appointment=appointment,
        booked_by=record.booked_by,
        wait_seconds=wait_seconds(record.received_at, appointment.start, record.paused_seconds)
        if appointment
        else None,
        within_target=record.within_target,
        within_desirable=scheduler.within_desirable(record),
        excluded_delay_seconds=record.paused_seconds,
        available_from=record.available_day(),
        dna_count=record.dna_count,
        walk_in=record.walk_in,
    )


def bookings_router(scheduler: Scheduler) -> APIRouter:
    router = APIRouter(prefix="/bookings", tags=["bookings"])

    async def answer(referral_id: str) -> BookingView:
        return _view(await scheduler.get(referral_id), scheduler)

    @router.get("/{referral_id}", summary="The referral's offers, appointment and wait")
    async def get_booking(
        referral_id: ReferralIdPath, _: Annotated[Principal, Depends(clerk)]
    ) -> BookingView:
        return await answer(referral_id)

    @router.get("/{referral_id}/availability", summary="Free slots that could be booked now")
    async def availability(
        referral_id: ReferralIdPath,
        _: Annotated[Principal, Depends(clerk)],
        count: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> list[Appointment]:
        return await scheduler.availability(referral_id, count)

    @router.post(
        "/{referral_id}/choose",
        summary="Book a chosen slot (patient choice, or a clerk for the patient)",
    )
    async def choose(
        referral_id: ReferralIdPath,
        body: ChooseRequest,
        principal: Annotated[Principal, Depends(clerk)],
        idempotency_key: IdempotencyKey = None,
    ) -> BookingView:
        booked_by = BookedBy.PATIENT if body.chosen_by == "patient" else BookedBy.CLERK
        await _contended(
            scheduler.choose(
                referral_id, body.slot_id, booked_by=booked_by, idempotency_key=idempotency_key
            )
        )
        return await answer(referral_id)

    @router.post("/{referral_id}/rebook", summary="Move the appointment to another slot")
    async def rebook(
        referral_id: ReferralIdPath,
        body: RebookRequest,
        _: Annotated[Principal, Depends(clerk)],
        idempotency_key: IdempotencyKey = None,
    ) -> BookingView:
        await _contended(
            scheduler.rebook(referral_id, body.slot_id, idempotency_key=idempotency_key)
        )
        return await answer(referral_id)

    @router.post("/{referral_id}/cancel", summary="Cancel the appointment; the referral stays open")
    async def cancel(
        referral_id: ReferralIdPath,
        body: CancelRequest,
        _: Annotated[Principal, Depends(clerk)],
        idempotency_key: IdempotencyKey = None,
    ) -> BookingView:
        await _contended(
            scheduler.cancel(referral_id, body.reason, idempotency_key=idempotency_key)
        )
        return await answer(referral_id)

    @router.post(
        "/{referral_id}/defer", summary="Patient-elected delay (non-urgent only); 409 for urgent"
    )
    async def defer(
        referral_id: ReferralIdPath,
        body: DeferRequest,
        _: Annotated[Principal, Depends(clerk)],
        idempotency_key: IdempotencyKey = None,
    ) -> BookingView:
        await _contended(
            scheduler.defer(
                referral_id, body.reason, body.available_from, idempotency_key=idempotency_key
            )
        )
        return await answer(referral_id)

    return router


async def _contended(command: Awaitable[object]) -> None:
    try:
        await command
    except BookingContention as error:
        raise Rejected(f"{error}: try again") from None


def providers_router(
    repository: BookingRepository, clock: Clock, provider_topics: ProviderTopics
) -> APIRouter:
    router = APIRouter(prefix="/providers", tags=["providers"])

    def view(provider: Provider, note: str = "") -> ProviderView:
        return ProviderView(
            provider=provider,
            inbound_topic=topics.provider_inbound(provider.ods),
            outbound_topic=topics.provider_outbound(provider.ods),
            note=note,
        )

    @router.get("", summary="Every provider in the registry")
    async def list_providers(_: Annotated[Principal, Depends(operator)]) -> list[ProviderView]:
        return [view(p) for p in await repository.all_providers()]

    @router.get("/{ods}", summary="One provider")
    async def get_provider(
        ods: OdsPath, _: Annotated[Principal, Depends(operator)]
    ) -> ProviderView:
        provider = await repository.provider(ods.upper())
        if provider is None:
            raise NotFound(f"no provider {ods.upper()} in the registry")
        return view(provider)

    @router.put(
        "/{ods}",
        summary="Add or change a provider with its sites (no code change, no restart)",
    )
    async def put_provider(
        ods: OdsPath,
        body: Provider,
        principal: Annotated[Principal, Depends(operator)],
        response: Response,
    ) -> ProviderView:
        if body.ods != ods.upper():
            raise Invalid(f"the body's ods {body.ods} does not match the path's {ods.upper()}")
        # Topics first (where this service makes them): a provider is never offered before its
        # orders have somewhere to go, and a retry after a failure makes what is missing.
        topics_made = await provider_topics.ensure(body.ods)
        created = await repository.put_provider(body, by=principal.name, now=clock.now())
        response.status_code = 201 if created else 200
        note = ""
        if created:
            note = (
                "new provider: its slots are offered now, and its topics exist; its events "
                "on the inbound topic are read without a restart"
                if topics_made
                else "new provider: its slots are offered now; once its topics, Kafka user "
                "and ACLs exist (docs/deploy.md) its inbound events are read without a restart"
            )
        return view(body, note)

    return router
