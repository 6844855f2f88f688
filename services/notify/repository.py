"""MongoDB adapter of the notify service (its own database; nobody else reads it).

Collections:
- `referrals`: practice, referrer and patient of each referral (from the referral topic);
- `reports`: each report's content and addenda, to build what is delivered;
- `acknowledgements`: one per report version (the report, each addendum) owed an
  acknowledgement by the practice;
- `deliveries` and `messages`: work queues of pushes to GP systems and of messages on the
  channels, written in the unit of work that decided them and worked by any replica
  (claimed with a lease, so two replicas never attempt the same one at once), each with the
  trace of the event that queued it (`trace`, W3C headers), which its worker continues;
- `alerts`: open alerts with their next escalation time, swept by any replica;
- `inbox`: what the local practice inbox (the embedded stand-in GP system) received.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.common.store import Tx
from services.common.tracing import current_trace
from services.notify.records import ReferralRecord, ReportRecord

Document = dict[str, Any]

PENDING = "pending"


class JobQueue:
    """Due work with attempts and a lease: `claim` it, then `finish` or `retry_later`."""

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.items = collection

    async def ensure_indexes(self) -> None:
        await self.items.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)])
        await self.items.create_index("referral_id")

    async def add(self, tx: Tx, job: Document) -> bool:
        """Queue a job once: a repeat with the same id changes nothing; True when it is new."""
        fields = {
            "state": PENDING,
            "attempts": 0,
            "round": 1,
            "next_attempt_at": tx.now,
            "lease_until": None,
            "lease_owner": None,
            "last_error": None,
            "created_at": tx.now,
            # The worker continues the trace of the event that queued the job.
            "trace": current_trace(),
            **job,
        }
        job_id = fields.pop("_id")
        result = await self.items.update_one(
            {"_id": job_id}, {"$setOnInsert": fields}, upsert=True, session=tx.session
        )
        return result.upserted_id is not None

    async def claim(self, now: datetime, lease_until: datetime, owner: str) -> Document | None:
        """Take the most overdue job that nobody holds (or whose holder's lease ran out)."""
        return await self.items.find_one_and_update(
            {
                "state": PENDING,
                "next_attempt_at": {"$lte": now},
                "$or": [{"lease_until": None}, {"lease_until": {"$lte": now}}],
            },
            {"$set": {"lease_until": lease_until, "lease_owner": owner}},
            sort=[("next_attempt_at", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )

    async def finish(self, tx: Tx, job_id: str, owner: str, changes: Document) -> bool:
        """Close a job this owner holds; False when the lease was lost (another took it)."""
        result = await self.items.update_one(
            {"_id": job_id, "state": PENDING, "lease_owner": owner},
            {"$set": {**changes, "lease_until": None, "lease_owner": None}},
            session=tx.session,
        )
        return result.matched_count == 1

    async def retry_later(
        self, job_id: str, owner: str, *, attempts: int, at: datetime, error: str
    ) -> None:
        await self.items.update_one(
            {"_id": job_id, "state": PENDING, "lease_owner": owner},
            {
                "$set": {
                    "attempts": attempts,
                    "next_attempt_at": at,
                    "last_error": error,
                    "lease_until": None,
                    "lease_owner": None,
                }
            },
        )

    async def release(self, job_id: str, owner: str) -> None:
        """Give a claimed job back untried (the worker is stopping)."""
        await self.items.update_one(
            {"_id": job_id, "lease_owner": owner},
            {"$set": {"lease_until": None, "lease_owner": None}},
        )

    async def count(self, state: str) -> int:
        return await self.items.count_documents({"state": state})


class NotifyRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.referrals = db["referrals"]
        self.reports = db["reports"]
        self.acknowledgements = db["acknowledgements"]
        self.alerts = db["alerts"]
        self.inbox = db["inbox"]
        self.deliveries = JobQueue(db["deliveries"])
        self.messages = JobQueue(db["messages"])

    async def ensure_indexes(self) -> None:
        await self.deliveries.ensure_indexes()
        await self.deliveries.items.create_index("report_id")
        await self.messages.ensure_indexes()
        await self.acknowledgements.create_index("report_id")
        await self.alerts.create_index("next_escalation_at")
        await self.alerts.create_index([("state", ASCENDING), ("finding_flag", ASCENDING)])
        await self.alerts.create_index("version_id")
        await self.alerts.create_index("report_id")
        await self.inbox.create_index("delivery_id", unique=True)
        await self.inbox.create_index([("practice_ods", ASCENDING), ("received_at", DESCENDING)])

    # ------------------------------------------------------------------ referrals and reports

    async def save_referral(self, tx: Tx, record: ReferralRecord) -> None:
        await self.referrals.replace_one(
            {"_id": record.referral_id},
            {"_id": record.referral_id, **record.model_dump(), "updated_at": tx.now},
            upsert=True,
            session=tx.session,
        )

    async def referral(self, referral_id: str) -> ReferralRecord | None:
        document = await self.referrals.find_one({"_id": referral_id})
        return ReferralRecord.model_validate(document) if document else None

    async def report(self, report_id: str, tx: Tx | None = None) -> ReportRecord | None:
        document = await self.reports.find_one(
            {"_id": report_id}, session=tx.session if tx else None
        )
        return ReportRecord.model_validate(document) if document else None

    async def save_report(self, tx: Tx, fields: Document) -> None:
        await self.reports.update_one(
            {"_id": fields["report_id"]},
            {"$set": fields, "$setOnInsert": {"addenda": []}},
            upsert=True,
            session=tx.session,
        )

    async def add_addendum(self, tx: Tx, base: Document, addendum: Document) -> None:
        """Keep an addendum beside its report (created bare if the report was never seen)."""
        await self.reports.update_one(
            {"_id": base["report_id"]},
            {"$setOnInsert": {**base, "addenda": []}},
            upsert=True,
            session=tx.session,
        )
        stored = await self.reports.find_one(
            {"_id": base["report_id"]}, {"addenda.addendum_id": 1}, session=tx.session
        )
        known = {a.get("addendum_id") for a in (stored or {}).get("addenda", [])}
        if addendum["addendum_id"] not in known:
            await self.reports.update_one(
                {"_id": base["report_id"]}, {"$push": {"addenda": addendum}}, session=tx.session
            )

    # ------------------------------------------------------------------ acknowledgements

    async def version(self, version_id: str, tx: Tx | None = None) -> Document | None:
        return await self.acknowledgements.find_one(
            {"_id": version_id}, session=tx.session if tx else None
        )

    async def put_version(self, tx: Tx, document: Document) -> None:
        await self.acknowledgements.replace_one(
            {"_id": document["_id"]}, document, upsert=True, session=tx.session
        )

    async def mark_delivered(self, tx: Tx, version_id: str, at: datetime) -> None:
        await self.acknowledgements.update_one(
            {"_id": version_id}, {"$set": {"delivered_at": at}}, session=tx.session
        )

    async def versions_of(self, report_id: str) -> list[Document]:
        cursor = self.acknowledgements.find({"report_id": report_id}).sort("opened_at", ASCENDING)
        return [document async for document in cursor]

    async def deliveries_of(self, report_id: str) -> list[Document]:
        cursor = self.deliveries.items.find({"report_id": report_id}).sort("created_at", ASCENDING)
        return [document async for document in cursor]

    async def list_deliveries(self, state: str, limit: int) -> list[Document]:
        cursor = (
            self.deliveries.items.find({"state": state})
            .sort("next_attempt_at", ASCENDING)
            .limit(limit)
        )
        return [document async for document in cursor]

    # ------------------------------------------------------------------ alerts

    async def add_alert(self, tx: Tx, alert: Document) -> bool:
        fields = dict(alert)
        alert_id = fields.pop("_id")
        result = await self.alerts.update_one(
            {"_id": alert_id}, {"$setOnInsert": fields}, upsert=True, session=tx.session
        )
        return result.upserted_id is not None

    async def due_alerts(self, now: datetime, limit: int) -> list[Document]:
        cursor = (
            self.alerts.find({"next_escalation_at": {"$lte": now}})
            .sort("next_escalation_at", ASCENDING)
            .limit(limit)
        )
        return [document async for document in cursor]

    async def move_alert(self, tx: Tx, alert: Document, changes: Document) -> bool:
        """Move an alert up one rung, only from the rung and due time this sweep saw."""
        result = await self.alerts.update_one(
            {
                "_id": alert["_id"],
                "state": "open",
                "level": alert["level"],
                "next_escalation_at": alert["next_escalation_at"],
            },
            {"$set": changes},
            session=tx.session,
        )
        return result.matched_count == 1

    async def close_alerts(self, tx: Tx, version_id: str, at: datetime) -> list[Document]:
        cursor = self.alerts.find({"version_id": version_id, "state": "open"}, session=tx.session)
        closing = [document async for document in cursor]
        if closing:
            await self.alerts.update_many(
                {"_id": {"$in": [a["_id"] for a in closing]}, "state": "open"},
                {
                    "$set": {
                        "state": "acknowledged",
                        "acknowledged_at": at,
                        "next_escalation_at": None,
                    }
                },
                session=tx.session,
            )
        return closing

    async def alerts_of(self, report_id: str) -> list[Document]:
        cursor = self.alerts.find({"report_id": report_id}).sort("raised_at", ASCENDING)
        return [document async for document in cursor]

    async def list_alerts(self, state: str, limit: int) -> list[Document]:
        cursor = self.alerts.find({"state": state}).sort("raised_at", DESCENDING).limit(limit)
        return [document async for document in cursor]

    async def open_alert_counts(self) -> list[tuple[str, int, int]]:
        """(finding flag, level, count) of open alerts."""
        pipeline: list[Document] = [
            {"$match": {"state": "open"}},
            {"$group": {"_id": {"flag": "$finding_flag", "level": "$level"}, "n": {"$sum": 1}}},
        ]
        cursor = await self.alerts.aggregate(pipeline)
        return [
            (row["_id"]["flag"], int(row["_id"]["level"]), int(row["n"])) async for row in cursor
        ]

    async def overdue_alert_counts(self, now: datetime) -> dict[str, int]:
        pipeline: list[Document] = [
            {"$match": {"state": "open", "acknowledge_by": {"$lt": now}}},
            {"$group": {"_id": "$finding_flag", "n": {"$sum": 1}}},
        ]
        cursor = await self.alerts.aggregate(pipeline)
        return {row["_id"]: int(row["n"]) async for row in cursor}
