"""MongoDB adapter of the reporting service: referrals (with examination and deadline), reports, parked events.

Every query the hot path makes is served by an index: a referral by id, a provider's
worklist and overdue count by (provider, state, deadline), a patient's priors by
(NHS number, completion time), a referral's reports by referral id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from pathway_schemas.values import CareSetting, Modality, Priority
from services.common.store import Tx
from services.reporting.service import Referral, State

Document = dict[str, Any]

REFERRALS = "referrals"
REPORTS = "reports"
PARKED = "parked"


def to_referral(doc: Document) -> Referral:
    priority = doc.get("confirmed_priority") or doc.get("requested_priority")
    return Referral(
        referral_id=doc["_id"],
        state=State(doc.get("state", State.PENDING)),
        nhs_number=doc.get("nhs_number"),
        practice_ods=doc.get("practice_ods"),
        care_setting=CareSetting(doc["care_setting"]) if doc.get("care_setting") else None,
        priority=Priority(priority) if priority else None,
        examination_code=doc.get("examination_code"),
        modality=Modality(doc["modality"]) if doc.get("modality") else None,
        accepted=bool(doc.get("accepted", False)),
        cancelled=bool(doc.get("cancelled", False)),
        provider_ods=doc.get("provider_ods"),
        site_id=doc.get("site_id"),
        study_instance_uid=(doc.get("study") or {}).get("study_instance_uid"),
        completed_at=doc.get("completed_at"),
        due_at=doc.get("due_at"),
        rule=doc.get("rule"),
        final_report_id=doc.get("final_report_id"),
        has_parked=bool(doc.get("has_parked", False)),
    )


class ReportingRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.referrals = db[REFERRALS]
        self.reports = db[REPORTS]
        self.parked = db[PARKED]

    async def ensure_indexes(self) -> None:
        await self.referrals.create_index(
            [("provider_ods", ASCENDING), ("state", ASCENDING), ("due_at", ASCENDING)]
        )
        await self.referrals.create_index([("nhs_number", ASCENDING), ("completed_at", DESCENDING)])
        await self.reports.create_index([("referral_id", ASCENDING), ("issued_at", ASCENDING)])
        await self.parked.create_index([("referral_id", ASCENDING), ("parked_at", ASCENDING)])
        await self.parked.create_index([("parked_at", ASCENDING)])

    # ------------------------------------------------------------------ referrals

    async def referral_document(self, referral_id: str, tx: Tx | None = None) -> Document | None:
        return await self.referrals.find_one(
            {"_id": referral_id}, session=tx.session if tx else None
        )

    async def referral(self, referral_id: str, tx: Tx | None = None) -> Referral | None:
        doc = await self.referral_document(referral_id, tx)
        return to_referral(doc) if doc else None

    async def update_referral(self, tx: Tx, referral_id: str, fields: Document) -> Referral:
        """Set fields on a referral, creating it in the pending state if this is the first news of it."""
        doc = await self.referrals.find_one_and_update(
            {"_id": referral_id},
            {"$set": {**fields, "updated_at": tx.now}, "$setOnInsert": _new_referral(fields)},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=tx.session,
        )
        if doc is None:  # pragma: no cover - an upsert always returns the document
            raise LookupError(f"referral {referral_id} vanished during its own upsert")
        return to_referral(doc)

    async def update_referral_if(
        self, tx: Tx, referral_id: str, state: State, fields: Document
    ) -> bool:
        """Set fields only while the referral is in `state`: guards a transition against a racing writer."""
        result = await self.referrals.update_one(
            {"_id": referral_id, "state": state.value},
            {"$set": {**fields, "updated_at": tx.now}},
            session=tx.session,
        )
        return result.modified_count == 1

    async def worklist(self, provider_ods: str, limit: int) -> list[Document]:
        cursor = (
            self.referrals.find({"provider_ods": provider_ods, "state": State.COMPLETED.value})
            .sort("due_at", ASCENDING)
            .limit(limit)
        )
        return [doc async for doc in cursor]

    async def priors(self, nhs_number: str, before: datetime, limit: int) -> list[Document]:
        """The patient's completed examinations before a moment, from every provider, newest first."""
        if limit == 0:
            return []
        cursor = (
            self.referrals.find({"nhs_number": nhs_number, "completed_at": {"$lt": before}})
            .sort("completed_at", DESCENDING)
            .limit(limit)
        )
        return [doc async for doc in cursor]

    async def assigned_providers(self) -> set[str]:
        """Providers with referrals assigned, configured or not (one added through
        scheduling's registry while this service runs is known from its bookings)."""
        return {code for code in await self.referrals.distinct("provider_ods") if code}

    async def count_overdue(self, provider_ods: str, now: datetime) -> int:
        return await self.referrals.count_documents(
            {"provider_ods": provider_ods, "state": State.COMPLETED.value, "due_at": {"$lt": now}}
        )

    # ------------------------------------------------------------------ reports

    async def report(self, report_id: str, tx: Tx | None = None) -> Document | None:
        return await self.reports.find_one({"_id": report_id}, session=tx.session if tx else None)

    async def insert_report(self, tx: Tx, report: Document) -> None:
        await self.reports.insert_one(report, session=tx.session)

    async def add_addendum(self, tx: Tx, report_id: str, addendum: Document) -> bool:
        """Append an addendum; the report's own fields are never touched. False: already there."""
        result = await self.reports.update_one(
            {"_id": report_id, "addenda.addendum_id": {"$ne": addendum["addendum_id"]}},
            {"$push": {"addenda": addendum}},
            session=tx.session,
        )
        return result.modified_count == 1

    async def reports_of(self, referral_ids: list[str]) -> list[Document]:
        if not referral_ids:
            return []
        cursor = self.reports.find({"referral_id": {"$in": referral_ids}}).sort(
            "issued_at", ASCENDING
        )
        return [doc async for doc in cursor]

    # ------------------------------------------------------------------ parked provider events

    async def park(self, tx: Tx, parked: Document) -> None:
        await self.parked.insert_one(parked, session=tx.session)
        await self.update_referral(tx, parked["referral_id"], {"has_parked": True})

    async def parked_for(self, referral_id: str) -> list[Document]:
        """Parked events still to apply (not those the sweep is refusing), oldest first."""
        cursor = self.parked.find({"referral_id": referral_id, "refusing": {"$ne": True}}).sort(
            [("parked_at", ASCENDING), ("offset", ASCENDING)]
        )
        return [doc async for doc in cursor]

    async def delete_parked(self, parked_id: str, tx: Tx | None = None) -> None:
        await self.parked.delete_one({"_id": parked_id}, session=tx.session if tx else None)

    async def take_parked(self, parked_id: str, tx: Tx) -> bool:
        """Remove a parked event to apply it; False if the sweep has claimed it to refuse it."""
        result = await self.parked.delete_one(
            {"_id": parked_id, "refusing": {"$ne": True}}, session=tx.session
        )
        return result.deleted_count == 1

    async def claim_for_refusal(
        self, parked_id: str, tx: Tx, *, by: str, at: datetime, stale_before: datetime
    ) -> bool:
        """Mark a parked event as being refused, so that no release applies it meanwhile.

        One sweep holds the claim: its own replica may claim it again (to retry after an
        outage), another only once it is older than `stale_before` (the sweep that made it
        died before dead-lettering).
        """
        result = await self.parked.update_one(
            {
                "_id": parked_id,
                "$or": [
                    {"claimed_at": {"$exists": False}},
                    {"claimed_at": {"$lt": stale_before}},
                    {"claimed_by": by},
                ],
            },
            {"$set": {"refusing": True, "claimed_by": by, "claimed_at": at}},
            session=tx.session,
        )
        return result.matched_count == 1

    async def clear_parked_flag(self, referral_id: str) -> None:
        """Drop the referral's flag once nothing of it is parked (checked again by the sweep)."""
        if await self.parked.count_documents({"referral_id": referral_id}, limit=1) == 0:
            await self.referrals.update_one({"_id": referral_id}, {"$set": {"has_parked": False}})

    async def parked_referrals(self, limit: int) -> list[str]:
        cursor = self.parked.find({}, {"referral_id": 1}).sort("parked_at", ASCENDING).limit(limit)
        seen: dict[str, None] = {}
        async for doc in cursor:
            seen.setdefault(doc["referral_id"], None)
        return list(seen)

    async def parked_before(self, moment: datetime, limit: int) -> list[Document]:
        cursor = (
            self.parked.find({"parked_at": {"$lt": moment}})
            .sort("parked_at", ASCENDING)
            .limit(limit)
        )
        return [doc async for doc in cursor]


def _new_referral(fields: Document) -> Document:
    initial: Document = {
        "state": State.PENDING.value,
        "cancelled": False,
        "accepted": False,
        "has_parked": False,
    }
    return {k: v for k, v in initial.items() if k not in fields}
