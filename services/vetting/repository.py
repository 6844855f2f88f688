"""MongoDB adapter of the vetting worklist."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.common.store import Tx

Document = dict[str, Any]


class WorklistRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.items = db["worklist"]

    async def ensure_indexes(self) -> None:
        await self.items.create_index([("state", 1), ("priority", -1), ("received_at", 1)])

    async def put(self, tx: Tx, item: Document) -> None:
        await self.items.replace_one({"_id": item["_id"]}, item, upsert=True, session=tx.session)

    async def get(self, referral_id: str) -> Document | None:
        return await self.items.find_one({"_id": referral_id})
