"""MongoDB adapter of the scheduling service: referrals, held slots, and the provider registry.

`bookings` holds one document per held slot, its `_id` the slot id, with a unique index
on (provider, site, modality, room, start): two replicas can never hold the same slot, the
second insert fails and its unit of work is retried against fresh state. Free slots are
never stored; a search reads only the bookings inside its window (index on modality, start).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from pathway_schemas.values import Modality, Priority
from services.common.store import Tx
from services.common.tracing import current_trace
from services.scheduling.model import ReferralRecord, State
from services.scheduling.registry import Provider
from services.scheduling.slots import Slot

Document = dict[str, Any]


class StaleRecord(Exception):
    """Another unit of work changed the referral first: run again on fresh state."""


class BookingRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.referrals = db["referrals"]
        self.bookings = db["bookings"]
        self.cancelled = db["cancelled_referrals"]
        self.providers = db["providers"]

    async def ensure_indexes(self) -> None:
        await self.bookings.create_index(
            [
                ("provider", ASCENDING),
                ("site", ASCENDING),
                ("modality", ASCENDING),
                ("room", ASCENDING),
                ("start", ASCENDING),
            ],
            unique=True,
            name="one_booking_per_slot",
        )
        await self.bookings.create_index(
            [("modality", ASCENDING), ("start", ASCENDING)], name="window"
        )
        await self.referrals.create_index([("state", ASCENDING), ("due_at", ASCENDING)], name="due")
        await self.referrals.create_index(
            [("at_risk", ASCENDING), ("priority", ASCENDING)], name="at_risk"
        )

    # ------------------------------------------------------------------ referrals

    async def get(self, referral_id: str, tx: Tx | None = None) -> ReferralRecord | None:
        document = await self.referrals.find_one({"_id": referral_id}, session=_session(tx))
        return ReferralRecord.from_document(document) if document else None

    async def save(self, tx: Tx, record: ReferralRecord) -> None:
        """Write the record if nobody changed it since it was read (optimistic, by version)."""
        if record.due_at is not None and record.due_trace_at != record.due_at:
            record.due_trace = current_trace()
            record.due_trace_at = record.due_at
        document = record.to_document()
        document["updated_at"] = tx.now
        if record.version == 0:
            document["version"] = 1
            await self.referrals.insert_one(document, session=tx.session)
            return
        document["version"] = record.version + 1
        result = await self.referrals.replace_one(
            {"_id": record.referral_id, "version": record.version}, document, session=tx.session
        )
        if result.matched_count == 0:
            raise StaleRecord(record.referral_id)

    async def due(self, now: datetime, limit: int) -> list[ReferralRecord]:
        """Offers past their choose-by deadline and walk-ins past their validity, oldest first."""
        cursor = (
            self.referrals.find(
                {
                    "state": {"$in": [State.OFFERED.value, State.WALK_IN.value]},
                    "due_at": {"$lte": now},
                }
            )
            .sort("due_at", ASCENDING)
            .limit(limit)
        )
        return [ReferralRecord.from_document(d) async for d in cursor]

    async def count_at_risk(self) -> dict[Priority, int]:
        return {
            p: await self.referrals.count_documents({"at_risk": True, "priority": p.value})
            for p in Priority
        }

    async def was_cancelled(self, tx: Tx, referral_id: str) -> bool:
        return await self.cancelled.find_one({"_id": referral_id}, session=tx.session) is not None

    async def remember_cancelled(self, tx: Tx, referral_id: str) -> None:
        """A cancellation that overtook the acceptance: the late acceptance must book nothing."""
        await self.cancelled.update_one(
            {"_id": referral_id}, {"$setOnInsert": {"at": tx.now}}, upsert=True, session=tx.session
        )

    # ------------------------------------------------------------------ held slots

    async def hold(self, tx: Tx, slot: Slot, referral_id: str) -> None:
        """Hold a slot; a DuplicateKeyError means another booking got it first (retry the work)."""
        await self.bookings.insert_one(
            {
                "_id": slot.id,
                "provider": slot.provider_ods,
                "site": slot.site_id,
                "modality": slot.modality.value,
                "room": slot.room,
                "start": slot.start,
                "end": slot.end,
                "referral_id": referral_id,
                "state": "held",
                "held_at": tx.now,
            },
            session=tx.session,
        )

    async def release(self, tx: Tx, slot_id: str) -> None:
        await self.bookings.delete_one({"_id": slot_id}, session=tx.session)

    async def mark(self, tx: Tx, slot_id: str, state: str) -> None:
        """A used slot stays held (its time has passed) with what happened in it."""
        await self.bookings.update_one(
            {"_id": slot_id}, {"$set": {"state": state}}, session=tx.session
        )

    async def held_ids(self, tx: Tx | None, slot_ids: Iterable[str]) -> set[str]:
        ids = list(slot_ids)
        if not ids:
            return set()
        cursor = self.bookings.find({"_id": {"$in": ids}}, {"_id": 1}, session=_session(tx))
        return {d["_id"] async for d in cursor}

    async def booked_in_window(
        self, tx: Tx | None, modality: Modality, start: datetime, end: datetime
    ) -> set[str]:
        cursor = self.bookings.find(
            {"modality": modality.value, "start": {"$gte": start, "$lt": end}},
            {"_id": 1},
            session=_session(tx),
        )
        return {d["_id"] async for d in cursor}

    async def holder(self, slot_id: str) -> str | None:
        document = await self.bookings.find_one({"_id": slot_id}, {"referral_id": 1})
        return str(document["referral_id"]) if document else None

    # ------------------------------------------------------------------ provider registry

    async def all_providers(self, tx: Tx | None = None) -> list[Provider]:
        cursor = self.providers.find({}, session=_session(tx)).sort("_id", ASCENDING)
        return [Provider.model_validate(d["config"]) async for d in cursor]

    async def provider(self, ods: str) -> Provider | None:
        document = await self.providers.find_one({"_id": ods})
        return Provider.model_validate(document["config"]) if document else None

    async def put_provider(self, provider: Provider, *, by: str, now: datetime) -> bool:
        """Store a provider's configuration; True when it is new."""
        result = await self.providers.update_one(
            {"_id": provider.ods},
            {
                "$set": {"config": _config(provider), "updated_at": now, "updated_by": by},
                "$setOnInsert": {"created_at": now},
            },
            upsert=True,
        )
        return result.upserted_id is not None

    async def seed(self, providers: Iterable[Provider], now: datetime) -> list[str]:
        """Write the file's providers whose entry is new or edited since the last seed.

        A provider changed through the admin API keeps that change until its entry in the
        file is edited; providers added only through the API are kept. Returns the codes written.
        """
        written = []
        for provider in providers:
            fingerprint = provider.fingerprint()
            existing = await self.providers.find_one({"_id": provider.ods}, {"seed_fingerprint": 1})
            if existing is not None and existing.get("seed_fingerprint") == fingerprint:
                continue
            await self.providers.update_one(
                {"_id": provider.ods},
                {
                    "$set": {
                        "config": _config(provider),
                        "seed_fingerprint": fingerprint,
                        "updated_at": now,
                        "updated_by": "providers-file",
                    },
                    "$setOnInsert": {"created_at": now},
                },
                upsert=True,
            )
            written.append(provider.ods)
        return written


def _config(provider: Provider) -> Document:
    return provider.model_dump(mode="json", by_alias=True)


def _session(tx: Tx | None) -> AsyncClientSession | None:
    return tx.session if tx is not None else None
