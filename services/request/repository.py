"""MongoDB adapter of the referral records (the service's own database).

One document per referral: the request as recorded, the projection of its state, and its
timeline (tens of entries, so it is read and written whole within one unit of work).
Events about a referral this service never recorded are kept too, in a document without
a request, so that nothing received is lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.common.store import Tx
from services.request.service import EarlierReferral
from services.request.timeline import Projection, TimelineEntry

Document = dict[str, Any]

# Moved on by every write of a referral document: the optimistic check of timeline writes.
REVISION = "rev"

# The W3C trace context of the referral's submission: commands made later, in HTTP calls of
# their own, continue the referral's trace. Only these headers: never baggage, which a caller
# fills as it likes.
TRACE = "trace"
TRACE_HEADERS = ("traceparent", "tracestate")

# The duplicate check reads at most this many earlier referrals for one patient and examination.
DUPLICATE_LOOKBACK = 100


@dataclass(frozen=True)
class PageQuery:
    practice_ods: str | None
    state: str | None
    submitted_from: datetime | None
    submitted_to: datetime | None
    after: tuple[datetime, str] | None
    limit: int


class ReferralRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.referrals = db["referrals"]

    async def ensure_indexes(self) -> None:
        # The duplicate check: never a scan of all referrals.
        await self.referrals.create_index(
            [("nhs_number", ASCENDING), ("examination_code", ASCENDING)]
        )
        # Idempotent submission; sparse so that timelines without a request are not indexed.
        await self.referrals.create_index(
            [("practice_ods", ASCENDING), ("idempotency_key", ASCENDING)], unique=True, sparse=True
        )
        await self.referrals.create_index(
            [("practice_ods", ASCENDING), ("submitted_at", DESCENDING), ("_id", DESCENDING)]
        )
        await self.referrals.create_index(
            [
                ("practice_ods", ASCENDING),
                ("state", ASCENDING),
                ("submitted_at", DESCENDING),
                ("_id", DESCENDING),
            ]
        )
        await self.referrals.create_index([("submitted_at", DESCENDING), ("_id", DESCENDING)])

    async def get(
        self, referral_id: str, session: AsyncClientSession | None = None
    ) -> Document | None:
        return await self.referrals.find_one({"_id": referral_id}, session=session)

    async def trace_of(self, referral_id: str) -> dict[str, str]:
        """The submission's trace kept with a referral; empty when none was kept (or no referral)."""
        document = await self.referrals.find_one({"_id": referral_id}, projection={TRACE: 1})
        return trace_context(document.get(TRACE) if document else None)

    async def by_idempotency_key(self, practice_ods: str, key: str) -> Document | None:
        return await self.referrals.find_one({"practice_ods": practice_ods, "idempotency_key": key})

    async def earlier_referrals(
        self, tx: Tx, nhs_number: str, examination_code: str
    ) -> list[EarlierReferral]:
        cursor = (
            self.referrals.find(
                {"nhs_number": nhs_number, "examination_code": examination_code},
                {"_id": 1, "open": 1, "examined_at": 1},
                session=tx.session,
            )
            .sort("submitted_at", DESCENDING)
            .limit(DUPLICATE_LOOKBACK)
        )
        return [
            EarlierReferral(
                referral_id=d["_id"], open=bool(d.get("open")), examined_at=d.get("examined_at")
            )
            async for d in cursor
        ]

    async def insert(self, tx: Tx, document: Document) -> None:
        await self.referrals.insert_one(document, session=tx.session)

    async def update(self, tx: Tx, referral_id: str, fields: Document) -> None:
        # Every write moves the revision on, so that a timeline write (outside any
        # transaction) never overwrites a change it did not read.
        await self.referrals.update_one(
            {"_id": referral_id}, {"$set": fields, "$inc": {REVISION: 1}}, session=tx.session
        )

    async def save_timeline(
        self,
        referral_id: str,
        read: Document | None,
        timeline: Sequence[TimelineEntry],
        projection: Projection,
        now: datetime,
    ) -> bool:
        """Write the timeline if the document is still as `read`; False when it changed."""
        fields = {**projection_fields(timeline, projection), "updated_at": now}
        if read is None:
            try:
                await self.referrals.insert_one({"_id": referral_id, REVISION: 1, **fields})
            except DuplicateKeyError:
                return False
            return True
        # A missing revision (a document written before revisions) matches None.
        result = await self.referrals.update_one(
            {"_id": referral_id, REVISION: read.get(REVISION)},
            {"$set": fields, "$inc": {REVISION: 1}},
        )
        return result.matched_count == 1

    async def page(self, query: PageQuery) -> list[Document]:
        """One page of referrals, newest first, without their timelines."""
        conditions: list[Document] = []
        if query.practice_ods is not None:
            conditions.append({"practice_ods": query.practice_ods})
        else:
            conditions.append({"submitted_at": {"$exists": True}})
        if query.state is not None:
            conditions.append({"state": query.state})
        if query.submitted_from is not None:
            conditions.append({"submitted_at": {"$gte": query.submitted_from}})
        if query.submitted_to is not None:
            conditions.append({"submitted_at": {"$lt": query.submitted_to}})
        if query.after is not None:
            at, last_id = query.after
            conditions.append(
                {
                    "$or": [
                        {"submitted_at": {"$lt": at}},
                        {"submitted_at": at, "_id": {"$lt": last_id}},
                    ]
                }
            )
        cursor = (
            self.referrals.find({"$and": conditions}, {"timeline": 0})
            .sort([("submitted_at", DESCENDING), ("_id", DESCENDING)])
            .limit(query.limit)
        )
        return [d async for d in cursor]


def trace_context(carrier: Mapping[str, str] | None) -> dict[str, str]:
    """The trace headers of a carrier, to keep with a referral."""
    return {k: v for k, v in (carrier or {}).items() if k in TRACE_HEADERS and isinstance(v, str)}


def projection_fields(timeline: Sequence[TimelineEntry], projection: Projection) -> Document:
    return {
        "timeline": [e.to_document() for e in timeline],
        "state": projection.state.value,
        "open": projection.open,
        "examined_at": projection.examined_at,
        "open_query_id": projection.open_query_id,
        "return_event_id": projection.return_event_id,
        "providers": list(projection.providers),
    }
