"""A local practice inbox: a stand-in GP system for the embedded run, mounted under /inbox.

It receives deliveries exactly as a practice endpoint would (it checks the practice's HMAC
signature and drops repeats of a delivery id, answering with the same receipt), keeps what
it got, lists it for the practice, and offers the acknowledge action, which goes through
the same acknowledgement rules as the API. So the whole flow, report to acknowledgement,
can be watched on one machine. Off in a real deployment (NOTIFY_INBOX_ENABLED=false).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import DuplicateKeyError

from pathway_schemas.values import PersonId
from services.common.auth import Principal
from services.common.clock import Clock
from services.common.errors import Denied, NotFound
from services.notify import fhir, signing
from services.notify.api import AcknowledgementDesk, AcknowledgementView, PracticeClinician
from services.notify.config import PracticeDirectory
from services.notify.repository import NotifyRepository

Document = dict[str, Any]
MAX_BODY_BYTES = 2 * 1024 * 1024
PracticeOds = Annotated[
    str, Path(pattern=r"^[A-Z0-9]{3,10}$", description="The practice's ODS code")
]


class InboxReceipt(BaseModel):
    receipt_id: str


class InboxItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    receipt_id: str
    received_at: datetime
    report_id: str
    addendum_id: str | None
    referral_id: str | None
    change: bool = Field(description="An addendum: a change to a report already received")
    status: str | None
    finding_flag: str | None
    conclusion: str | None
    texts: list[str]
    acknowledged_at: datetime | None


class InboxAcknowledgement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    acknowledged_by: PersonId | None = None
    action: str = Field(default="", max_length=2000)


def _item(document: Document) -> InboxItem:
    resource = json.loads(document["resource"])
    conclusion = resource.get("conclusion")
    status = resource.get("status")
    return InboxItem(
        receipt_id=document["_id"],
        received_at=document["received_at"],
        report_id=document["report_id"],
        addendum_id=document.get("addendum_id"),
        referral_id=document.get("referral_id"),
        change=document["change"],
        status=status if isinstance(status, str) else None,
        finding_flag=fhir.finding_flag_of(resource),
        conclusion=conclusion if isinstance(conclusion, str) else None,
        texts=fhir.texts_of(resource),
        acknowledged_at=document.get("acknowledged_at"),
    )


def _own_practice(principal: Principal, practice_ods: str) -> None:
    if principal.organisation != practice_ods:
        raise Denied(f"this key is not for practice {practice_ods}")


def inbox_router(
    repository: NotifyRepository,
    practices: PracticeDirectory,
    desk: AcknowledgementDesk,
    clock: Clock,
    *,
    tolerance_s: int,
) -> APIRouter:
    inbox = APIRouter(prefix="/inbox", tags=["local practice inbox"])

    @inbox.post(
        "/{practice_ods}/reports",
        summary="Receive a signed report delivery (as a practice system would)",
        status_code=201,
        response_model=InboxReceipt,
        responses={401: {"description": "Bad or missing signature"}},
    )
    async def receive(practice_ods: PracticeOds, request: Request) -> Any:
        secret = practices.secret(practice_ods)
        if secret is None:
            raise HTTPException(404, f"practice {practice_ods} has no inbox here")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"a delivery is at most {MAX_BODY_BYTES} bytes")
        try:
            signing.verify(secret, body, request.headers, time.time(), tolerance_s)
        except signing.SignatureError as refused:
            raise HTTPException(401, f"signature refused: {refused}") from None
        delivery_id = request.headers.get(signing.DELIVERY_HEADER, "")
        if not 1 <= len(delivery_id) <= 128:
            raise HTTPException(400, f"send {signing.DELIVERY_HEADER}: the delivery's id")
        try:
            resource = json.loads(body)
        except ValueError:
            raise HTTPException(422, "the body is not JSON") from None
        if not isinstance(resource, dict) or resource.get("resourceType") != "DiagnosticReport":
            raise HTTPException(422, "the body is not a DiagnosticReport resource")
        report_id, addendum_id, referral_id = fhir.identifiers_of(resource)
        if report_id is None:
            raise HTTPException(422, "the DiagnosticReport carries no report id identifier")
        repeat = await repository.inbox.find_one({"delivery_id": delivery_id})
        if repeat is None:
            document = {
                "_id": f"rcpt_{uuid.uuid4().hex}",
                "delivery_id": delivery_id,
                "practice_ods": practice_ods,
                "report_id": report_id,
                "addendum_id": addendum_id,
                "referral_id": referral_id,
                "change": fhir.is_change(resource),
                "received_at": clock.now(),
                "resource": json.dumps(resource),
                "acknowledged_at": None,
            }
            try:
                await repository.inbox.insert_one(document)
                return {"receipt_id": document["_id"]}
            except DuplicateKeyError:
                repeat = await repository.inbox.find_one({"delivery_id": delivery_id})
        assert repeat is not None
        return JSONResponse(status_code=200, content={"receipt_id": repeat["_id"]})

    @inbox.get(
        "/{practice_ods}",
        summary="What the practice received, newest first",
        response_model=list[InboxItem],
    )
    async def list_inbox(
        practice_ods: PracticeOds, principal: PracticeClinician
    ) -> list[InboxItem]:
        _own_practice(principal, practice_ods)
        cursor = repository.inbox.find({"practice_ods": practice_ods}).sort("received_at", -1)
        return [_item(document) async for document in cursor.limit(200)]

    @inbox.post(
        "/{practice_ods}/reports/{receipt_id}/acknowledge",
        summary="Acknowledge a received report or addendum (the practice's acknowledge action)",
        response_model=AcknowledgementView,
    )
    async def acknowledge(
        practice_ods: PracticeOds,
        receipt_id: Annotated[str, Path(min_length=1, max_length=64)],
        request: InboxAcknowledgement,
        principal: PracticeClinician,
    ) -> AcknowledgementView:
        _own_practice(principal, practice_ods)
        item = await repository.inbox.find_one({"_id": receipt_id, "practice_ods": practice_ods})
        if item is None:
            raise NotFound(f"nothing with receipt {receipt_id} in the inbox of {practice_ods}")
        ack = await desk.acknowledge(
            practice_ods=practice_ods,
            report_id=item["report_id"],
            addendum_id=item.get("addendum_id"),
            acknowledged_by=request.acknowledged_by or principal.name,
            action=request.action,
        )
        await repository.inbox.update_one(
            {"_id": receipt_id, "acknowledged_at": None},
            {"$set": {"acknowledged_at": ack.acknowledged_at}},
        )
        return AcknowledgementView.of(ack)

    return inbox
