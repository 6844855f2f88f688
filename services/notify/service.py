"""The notify pathway: what each event and command changes, as units of work.

Each method runs inside one `runtime.commit` (its `tx`): the state change, the work it
queues (a delivery, a message) and the events it emits are committed together, so a crash
never splits them, and a redelivered event (same cause id) changes nothing.

- A final report is queued for delivery and owes the practice an acknowledgement. A
  preliminary report is not delivered (the GP record takes final reports), but a
  non-routine finding on it is alerted at once: the alert is about the finding.
- An addendum is delivered too, flagged as a change, and owes an acknowledgement of its own
  (so the report is open again until it is acknowledged).
- A critical, urgent or unexpected significant finding raises an alert on the alert channel
  and climbs the ladder until its report version is acknowledged.
- Appointments, walk-ins and delays reach the patient; returns, queries, delays,
  cancellations, returns after DNA and wait breaches reach the referrer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pathway_schemas.base import PathwayEvent
from pathway_schemas.events import (
    AlertEscalated,
    AlertRaised,
    PatientNotified,
    ReferralAmended,
    ReferralSubmitted,
    ReferrerNotified,
    ReportAcknowledged,
    ReportAddended,
    ReportDelivered,
    ReportDeliveryFailed,
    ReportIssued,
    ReportStatus,
)
from pathway_schemas.values import FindingFlag
from services.common.errors import Denied, NotFound, Rejected
from services.common.store import Tx
from services.common.tracing import current_trace
from services.notify import notices
from services.notify.config import NotifyConfig, Rung
from services.notify.notices import Draft
from services.notify.policy import (
    Escalation,
    Level,
    alert_id,
    delivery_id,
    message_id,
    needs_alert,
    version_id,
)
from services.notify.records import ReferralRecord, addendum_fields, report_fields
from services.notify.repository import NotifyRepository

Document = dict[str, Any]


class LeaseLost(Exception):
    """Another replica took the job (or it changed) since this one claimed it: do nothing."""


@dataclass(frozen=True)
class Acknowledgement:
    report_id: str
    addendum_id: str | None
    referral_id: str
    finding_flag: FindingFlag
    acknowledged_at: datetime
    acknowledged_by: str
    action: str
    already: bool
    # Delivery (or, when never delivered, the moment it was owed): the acknowledgement clock.
    owed_since: datetime


class NotifyService:
    def __init__(
        self, repository: NotifyRepository, config: NotifyConfig, escalation: Escalation
    ) -> None:
        self.repository = repository
        self.config = config
        self.escalation = escalation

    # ------------------------------------------------------------------ referrals

    async def remember_referral(self, tx: Tx, event: ReferralSubmitted | ReferralAmended) -> None:
        await self.repository.save_referral(
            tx,
            ReferralRecord(
                referral_id=event.referral_id,
                practice_ods=event.practice_ods,
                referrer_id=event.referrer_id,
                nhs_number=event.nhs_number,
                examination_code=event.examination_code,
            ),
        )

    # ------------------------------------------------------------------ reports

    async def report_issued(self, tx: Tx, event: ReportIssued) -> None:
        await self.repository.save_report(tx, report_fields(event))
        final = event.status is ReportStatus.FINAL
        if final:
            await self._queue_delivery(
                tx, event.referral_id, event.report_id, None, event.practice_ods
            )
        if final or needs_alert(event.finding_flag):
            await self._owe_acknowledgement(
                tx,
                referral_id=event.referral_id,
                report_id=event.report_id,
                addendum_id=None,
                practice_ods=event.practice_ods,
                flag=event.finding_flag,
                status=event.status.value,
            )
        if needs_alert(event.finding_flag):
            await self._raise_alert(
                tx,
                referral_id=event.referral_id,
                report_id=event.report_id,
                addendum_id=None,
                practice_ods=event.practice_ods,
                provider_ods=event.provider_ods,
                flag=event.finding_flag,
            )

    async def report_addended(self, tx: Tx, event: ReportAddended) -> None:
        base = {
            "report_id": event.report_id,
            "referral_id": event.referral_id,
            "practice_ods": event.practice_ods,
            "provider_ods": event.provider_ods,
        }
        await self.repository.add_addendum(tx, base, addendum_fields(event))
        await self._queue_delivery(
            tx, event.referral_id, event.report_id, event.addendum_id, event.practice_ods
        )
        await self._owe_acknowledgement(
            tx,
            referral_id=event.referral_id,
            report_id=event.report_id,
            addendum_id=event.addendum_id,
            practice_ods=event.practice_ods,
            flag=event.finding_flag,
            status="addendum",
        )
        if needs_alert(event.finding_flag):
            await self._raise_alert(
                tx,
                referral_id=event.referral_id,
                report_id=event.report_id,
                addendum_id=event.addendum_id,
                practice_ods=event.practice_ods,
                provider_ods=event.provider_ods,
                flag=event.finding_flag,
            )

    async def _queue_delivery(
        self, tx: Tx, referral_id: str, report_id: str, addendum_id: str | None, practice_ods: str
    ) -> None:
        await self.repository.deliveries.add(
            tx,
            {
                "_id": delivery_id(report_id, addendum_id),
                "referral_id": referral_id,
                "report_id": report_id,
                "addendum_id": addendum_id,
                "version_id": version_id(report_id, addendum_id),
                "practice_ods": practice_ods,
            },
        )

    async def _owe_acknowledgement(
        self,
        tx: Tx,
        *,
        referral_id: str,
        report_id: str,
        addendum_id: str | None,
        practice_ods: str,
        flag: FindingFlag,
        status: str,
    ) -> None:
        vid = version_id(report_id, addendum_id)
        existing = await self.repository.version(vid, tx)
        if existing is not None:
            if not (existing["status"] == ReportStatus.PRELIMINARY.value and status == "final"):
                return  # the same version again: nothing new is owed
            # The final is a document of its own: an acknowledgement of the preliminary's
            # alert does not stand for it.
            history = [*existing.get("history", [])]
            if existing.get("acknowledged_at") is not None:
                history.append(
                    {
                        "status": existing["status"],
                        "acknowledged_at": existing["acknowledged_at"],
                        "acknowledged_by": existing["acknowledged_by"],
                        "action": existing.get("action", ""),
                    }
                )
            document = {
                **existing,
                "status": status,
                "finding_flag": flag.value,
                "opened_at": tx.now,
                "acknowledged_at": None,
                "acknowledged_by": None,
                "action": "",
                "history": history,
            }
        else:
            document = {
                "_id": vid,
                "referral_id": referral_id,
                "report_id": report_id,
                "addendum_id": addendum_id,
                "practice_ods": practice_ods,
                "finding_flag": flag.value,
                "status": status,
                "opened_at": tx.now,
                "delivered_at": None,
                "acknowledged_at": None,
                "acknowledged_by": None,
                "action": "",
                "history": [],
                # The acknowledgement, whenever it comes, joins the trace of the report.
                "trace": current_trace(),
            }
        await self.repository.put_version(tx, document)

    # ------------------------------------------------------------------ alerts

    def _organisation(self, rung: Rung, alert: Document) -> str:
        return str(alert["practice_ods"] if rung.at == "practice" else alert["provider_ods"])

    async def _raise_alert(
        self,
        tx: Tx,
        *,
        referral_id: str,
        report_id: str,
        addendum_id: str | None,
        practice_ods: str,
        provider_ods: str,
        flag: FindingFlag,
    ) -> None:
        level = self.escalation.raised(flag, tx.now)
        alert: Document = {
            "_id": alert_id(report_id, addendum_id, flag),
            "referral_id": referral_id,
            "report_id": report_id,
            "addendum_id": addendum_id,
            "version_id": version_id(report_id, addendum_id),
            "practice_ods": practice_ods,
            "provider_ods": provider_ods,
            "finding_flag": flag.value,
            "state": "open",
            "raised_at": tx.now,
            "acknowledged_at": None,
            # Each escalation continues the trace of the report that raised the alert.
            "trace": current_trace(),
            **self._level_fields(level),
        }
        if not await self.repository.add_alert(tx, alert):
            return  # this finding of this version is alerted already
        await self._queue_alert_message(tx, alert, level)
        tx.emit(
            AlertRaised(
                referral_id=referral_id,
                occurred_at=tx.now,
                alert_id=alert["_id"],
                report_id=report_id,
                finding_flag=flag,
                recipient_role=level.rung.role,
                acknowledge_by=level.acknowledge_by,
            )
        )

    @staticmethod
    def _level_fields(level: Level) -> Document:
        return {
            "level": level.level,
            "recipient_role": level.rung.role,
            "acknowledge_by": level.acknowledge_by,
            "next_escalation_at": level.next_escalation_at,
        }

    async def _queue_alert_message(self, tx: Tx, alert: Document, level: Level) -> None:
        draft = notices.alert_message(
            referral_id=alert["referral_id"],
            report_id=alert["report_id"],
            flag=FindingFlag(alert["finding_flag"]),
            level=level.level,
            role=level.rung.role,
            organisation=self._organisation(level.rung, alert),
            acknowledge_by=level.acknowledge_by,
        )
        lookup = "referrer" if level.rung.person == "referrer" else None
        await self.queue(tx, draft, alert["referral_id"], f"{alert['_id']}:{level.level}", lookup)

    async def escalate(self, tx: Tx, alert: Document) -> Level:
        """Move a due alert one rung up; LeaseLost when acknowledged or moved meanwhile."""
        flag = FindingFlag(alert["finding_flag"])
        level = self.escalation.escalated(flag, int(alert["level"]), alert["next_escalation_at"])
        if not await self.repository.move_alert(
            tx, alert, {**self._level_fields(level), "escalated_at": tx.now}
        ):
            raise LeaseLost(alert["_id"])
        await self._queue_alert_message(tx, alert, level)
        tx.emit(
            AlertEscalated(
                referral_id=alert["referral_id"],
                occurred_at=tx.now,
                alert_id=alert["_id"],
                level=level.level,
                recipient_role=level.rung.role,
                acknowledge_by=level.acknowledge_by,
            )
        )
        return level

    # ------------------------------------------------------------------ acknowledgement

    async def acknowledge(
        self,
        tx: Tx,
        *,
        practice_ods: str,
        report_id: str,
        addendum_id: str | None,
        acknowledged_by: str,
        action: str,
    ) -> Acknowledgement:
        """A clinician of the practice acknowledges one version; a repeat returns the first."""
        vid = version_id(report_id, addendum_id)
        version = await self.repository.version(vid, tx)
        what = f"report {report_id}" + (f" addendum {addendum_id}" if addendum_id else "")
        if version is None:
            raise NotFound(f"{what} has not been issued to any practice")
        if version["practice_ods"] != practice_ods:
            raise Denied(f"{what} was not sent to practice {practice_ods}")
        if version.get("acknowledged_at") is None:
            version = {
                **version,
                "acknowledged_at": tx.now,
                "acknowledged_by": acknowledged_by,
                "action": action,
            }
            await self.repository.put_version(tx, version)
            await self.repository.close_alerts(tx, vid, tx.now)
            tx.emit(
                ReportAcknowledged(
                    referral_id=version["referral_id"],
                    occurred_at=tx.now,
                    report_id=report_id,
                    addendum_id=addendum_id,
                    acknowledged_by=acknowledged_by,
                    action=action,
                )
            )
            already = False
        else:
            already = True
        return Acknowledgement(
            report_id=report_id,
            addendum_id=addendum_id,
            referral_id=version["referral_id"],
            finding_flag=FindingFlag(version["finding_flag"]),
            acknowledged_at=version["acknowledged_at"],
            acknowledged_by=version["acknowledged_by"],
            action=version.get("action", ""),
            already=already,
            owed_since=version.get("delivered_at") or version["opened_at"],
        )

    # ------------------------------------------------------------------ deliveries

    async def delivered(
        self, tx: Tx, job: Document, owner: str, *, receipt_id: str, attempts: int, transport: str
    ) -> None:
        if not await self.repository.deliveries.finish(
            tx,
            job["_id"],
            owner,
            {
                "state": "delivered",
                "attempts": attempts,
                "receipt_id": receipt_id,
                "transport": transport,
                "delivered_at": tx.now,
                "last_error": None,
            },
        ):
            raise LeaseLost(job["_id"])
        await self.repository.mark_delivered(tx, job["version_id"], tx.now)
        tx.emit(
            ReportDelivered(
                referral_id=job["referral_id"],
                occurred_at=tx.now,
                report_id=job["report_id"],
                addendum_id=job.get("addendum_id"),
                practice_ods=job["practice_ods"],
                receipt_id=receipt_id,
                attempts=attempts,
                transport=transport,
            )
        )

    async def delivery_failed(
        self, tx: Tx, job: Document, owner: str, *, attempts: int, error_class: str
    ) -> None:
        if not await self.repository.deliveries.finish(
            tx,
            job["_id"],
            owner,
            {
                "state": "failed",
                "attempts": attempts,
                "last_error": error_class,
                "failed_at": tx.now,
            },
        ):
            raise LeaseLost(job["_id"])
        draft = notices.delivery_failure_message(
            referral_id=job["referral_id"],
            report_id=job["report_id"],
            practice_ods=job["practice_ods"],
            attempts=attempts,
            error_class=error_class,
            role=self.config.alerts.delivery_failure_role,
        )
        await self.queue(tx, draft, job["referral_id"], f"failed:{job['_id']}:{job['round']}")
        tx.emit(
            ReportDeliveryFailed(
                referral_id=job["referral_id"],
                occurred_at=tx.now,
                report_id=job["report_id"],
                addendum_id=job.get("addendum_id"),
                practice_ods=job["practice_ods"],
                attempts=attempts,
                error_class=error_class,
            )
        )

    async def redeliver(self, tx: Tx, delivery_id_: str) -> Document:
        """An operator sends a failed delivery again (after fixing the endpoint, say)."""
        items = self.repository.deliveries.items
        job = await items.find_one({"_id": delivery_id_}, session=tx.session)
        if job is None:
            raise NotFound(f"no delivery {delivery_id_}")
        if job["state"] != "failed":
            raise Rejected(
                f"delivery {delivery_id_} is {job['state']}: only a failed one is redelivered"
            )
        changes = {
            "state": "pending",
            "attempts": 0,
            "round": int(job.get("round", 1)) + 1,
            "next_attempt_at": tx.now,
            "lease_until": None,
            "lease_owner": None,
        }
        await items.update_one({"_id": delivery_id_}, {"$set": changes}, session=tx.session)
        return {**job, **changes}

    # ------------------------------------------------------------------ notices and messages

    async def notify_people(self, tx: Tx, event: PathwayEvent, cause: str) -> int:
        """Queue the patient's and the referrer's notices of an event; how many were queued."""
        referral_id = str(getattr(event, "referral_id", ""))
        queued = 0
        for draft, lookup in (
            (notices.patient_notice(event), "patient"),
            (notices.referrer_notice(event), "referrer"),
        ):
            if draft is not None:
                await self.queue(tx, draft, referral_id, cause, lookup)
                queued += 1
        return queued

    async def queue(
        self, tx: Tx, draft: Draft, referral_id: str, cause: str, lookup: str | None = None
    ) -> None:
        await self.repository.messages.add(
            tx,
            {
                "_id": message_id(cause, f"{draft.channel}:{draft.kind}"),
                "referral_id": referral_id,
                "channel": draft.channel,
                "kind": draft.kind,
                "notice": draft.notice,
                "subject": draft.subject,
                "body": draft.body,
                "role": draft.role,
                "organisation": draft.organisation,
                "person": draft.person,
                "lookup": lookup,
                "gives_up": draft.gives_up,
            },
        )

    async def message_sent(self, tx: Tx, job: Document, owner: str, *, channel: str) -> None:
        if not await self.repository.messages.finish(
            tx, job["_id"], owner, {"state": "sent", "sent_at": tx.now, "channel_adapter": channel}
        ):
            raise LeaseLost(job["_id"])
        notice = job.get("notice")
        if notice is None:
            return
        if job["channel"] == "patient":
            tx.emit(
                PatientNotified(
                    referral_id=job["referral_id"],
                    occurred_at=tx.now,
                    notice=notice,
                    channel=channel,
                )
            )
        else:
            tx.emit(
                ReferrerNotified(
                    referral_id=job["referral_id"],
                    occurred_at=tx.now,
                    notice=notice,
                    channel=channel,
                )
            )

    async def message_failed(self, tx: Tx, job: Document, owner: str, *, error_class: str) -> None:
        if not await self.repository.messages.finish(
            tx,
            job["_id"],
            owner,
            {"state": "failed", "last_error": error_class, "failed_at": tx.now},
        ):
            raise LeaseLost(job["_id"])
