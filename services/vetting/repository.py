"""MongoDB adapter of the vetting worklist: one document per referral, in `worklist`.

Every query here is served by an index (state, rank, entered_at): listing the worklist,
and the gauges' count and oldest item per priority, never scan decided referrals.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from pathway_schemas.values import Modality, Priority
from services.common.store import Tx
from services.common.tracing import current_trace
from services.vetting.service import RANK, State, Step, WorklistItem

Document = dict[str, Any]

COLLECTION = "worklist"
# The same order as service.worklist_order: urgent first, then the longest waiting.
WORKLIST_ORDER = [("rank", ASCENDING), ("entered_at", ASCENDING), ("_id", ASCENDING)]


class ConcurrentChange(Exception):
    """Another change to the item landed between this one's read and write.

    Not a PathwayError: a consumer retries it (the kit's bounded retries), the API answers 409.
    """


def to_document(item: WorklistItem) -> Document:
    document = item.model_dump(exclude={"referral_id"})
    document["_id"] = item.referral_id
    return document


def from_document(document: Document) -> WorklistItem:
    return WorklistItem.model_validate({**document, "referral_id": document["_id"]})


class WorklistRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.items = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.items.create_index(
            [("state", ASCENDING), *WORKLIST_ORDER], name="worklist_order"
        )
        await self.items.create_index(
            [("state", ASCENDING), ("referral.modality", ASCENDING), *WORKLIST_ORDER],
            name="worklist_by_modality",
        )

    async def load(self, referral_id: str, tx: Tx | None = None) -> WorklistItem | None:
        document = await self.items.find_one(
            {"_id": referral_id}, session=tx.session if tx else None
        )
        return from_document(document) if document else None

    async def save(
        self, tx: Tx, item: WorklistItem, *, previous: WorklistItem | None
    ) -> WorklistItem:
        """Insert a new item, or replace `previous` only if nobody changed it since it was read.

        The trace of the first event to store the item is kept with it (`trace_of`).
        """
        if previous is None or not previous.trace:
            item = item.model_copy(update={"trace": current_trace()})
        if previous is None:
            stored = item.model_copy(update={"version": 1})
            await self.items.insert_one(to_document(stored), session=tx.session)
            return stored
        stored = item.model_copy(update={"version": previous.version + 1})
        result = await self.items.replace_one(
            {"_id": item.referral_id, "version": previous.version},
            to_document(stored),
            session=tx.session,
        )
        if result.matched_count != 1:
            raise ConcurrentChange("the item changed while this decision was made: reload it")
        return stored

    async def record(self, tx: Tx, step: Step, *, previous: WorklistItem | None) -> Step:
        """Store what a rule decided and queue its events, in the same transaction."""
        stored = await self.save(tx, step.item, previous=previous)
        for event in step.events:
            tx.emit(event)
        return Step(item=stored, events=step.events, decision=step.decision)

    async def trace_of(self, referral_id: str) -> dict[str, str] | None:
        """The trace kept with an item, for a decision to continue (None: no such item)."""
        document = await self.items.find_one({"_id": referral_id}, projection={"trace": 1})
        return dict(document.get("trace") or {}) if document else None

    async def waiting(
        self,
        *,
        modality: Modality | None = None,
        priority: Priority | None = None,
        entered_before: datetime | None = None,
        limit: int = 100,
    ) -> list[WorklistItem]:
        query: Document = {"state": State.WAITING.value}
        if modality is not None:
            query["referral.modality"] = modality.value
        if priority is not None:
            query["rank"] = RANK[priority]
        if entered_before is not None:
            query["entered_at"] = {"$lte": entered_before}
        cursor = self.items.find(query).sort(WORKLIST_ORDER).limit(limit)
        return [from_document(document) async for document in cursor]

    async def open_count_and_oldest(self, priority: Priority) -> tuple[int, datetime | None]:
        query = {"state": State.WAITING.value, "rank": RANK[priority]}
        count = await self.items.count_documents(query)
        oldest = await self.items.find_one(query, sort=WORKLIST_ORDER, projection={"entered_at": 1})
        return count, (oldest["entered_at"] if oldest else None)
