"""Channels that carry messages to people: patients, referrers, and alert recipients.

A channel is a small interface (`name`, `send`). The embedded run writes each message as one
JSON line to a file per channel under NOTIFY_CHANNEL_DIR, or to the log; a real deployment
adds an SMS, email, NHS App or paging adapter beside them without touching the rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

log = logging.getLogger("pathway.notify.channels")


@dataclass(frozen=True)
class Recipient:
    """Who a message is for: a role at an organisation, a person where known, or the patient.

    `nhs_number` is for a channel that looks the patient's contact details up (PDS, NHS App);
    the file and log channels never write it.
    """

    role: str
    organisation: str | None = None
    person: str | None = None
    nhs_number: str | None = None


@dataclass(frozen=True)
class OutgoingMessage:
    message_id: str  # the same on every attempt: a channel may use it to drop repeats
    referral_id: str
    kind: str  # the notice (appointment_booked, returned, ...) or alert, escalation, ...
    recipient: Recipient
    subject: str
    body: str


class Channel(Protocol):
    name: str

    async def send(self, message: OutgoingMessage) -> None: ...


class ChannelError(Exception):
    """A failed send; `error_class` is a short name with no patient data."""

    def __init__(self, error_class: str) -> None:
        super().__init__(error_class)
        self.error_class = error_class


def _line(message: OutgoingMessage, sent_at: datetime) -> str:
    return json.dumps(
        {
            "message_id": message.message_id,
            "sent_at": sent_at.astimezone(UTC).isoformat(),
            "referral_id": message.referral_id,
            "kind": message.kind,
            "to": {
                "role": message.recipient.role,
                "organisation": message.recipient.organisation,
                "person": message.recipient.person,
            },
            "subject": message.subject,
            "body": message.body,
        },
        ensure_ascii=False,
    )


class FileChannel:
    """Appends each message as one JSON line to `<directory>/<channel>.jsonl`."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    async def send(self, message: OutgoingMessage) -> None:
        line = _line(message, datetime.now(UTC))
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, line)
            except OSError as error:
                raise ChannelError(type(error).__name__) from None

    def read(self) -> list[dict[str, object]]:
        """Every message written so far (for the embedded run and tests)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


class LogChannel:
    """Logs that a message went out: ids and kind only, never its text (it may be clinical)."""

    name = "log"

    def __init__(self, channel: str) -> None:
        self.channel = channel

    async def send(self, message: OutgoingMessage) -> None:
        log.info(
            "%s message %s (%s) to %s",
            self.channel,
            message.message_id,
            message.kind,
            message.recipient.role,
            extra={"referral_id": message.referral_id},
        )
