"""What the gateway keeps on its own volume: the orders it sent, its read position, dead letters.

- `OrderBook` (SQLite, one transaction per outbound record): each order sent to the RIS with
  what a status update or result needs to become a valid event (site, slot, examination),
  and the next offset of each outbound partition, written together so that a restart
  neither loses an order nor sends one twice with a different control id. It holds no
  patient data: the NHS number goes to the RIS and is not kept.
- `DeadLetters` (JSON lines, mode 0600): every message refused or not acknowledged, with the
  reason, the HL7 error locations and the original bytes (base64, which may contain patient
  data: the file is protected like the RIS feed itself).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pathway_cli.hl7.v2 import Problem

MAX_ORIGINAL_BYTES = 512 * 1024


@dataclass(frozen=True)
class Order:
    """An order the RIS was sent, by referral id (the HL7 placer order number)."""

    referral_id: str
    examination_code: str
    modality: str
    site_id: str
    slot_id: str | None  # None: an open-access walk-in, no appointment
    cancelled: bool = False
    trace: dict[str, str] = field(default_factory=dict)

    @property
    def walk_in(self) -> bool:
        return self.slot_id is None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    referral_id TEXT PRIMARY KEY,
    examination_code TEXT NOT NULL,
    modality TEXT NOT NULL,
    site_id TEXT NOT NULL,
    slot_id TEXT,
    cancelled INTEGER NOT NULL DEFAULT 0,
    trace TEXT NOT NULL DEFAULT '{}',
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


class OrderBook:
    """Orders and read positions in one SQLite file; each outbound record is one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get(self, referral_id: str) -> Order | None:
        with self._lock:
            row = self._db.execute(
                "SELECT referral_id, examination_code, modality, site_id, slot_id, cancelled, trace"
                " FROM orders WHERE referral_id = ?",
                (referral_id,),
            ).fetchone()
        if row is None:
            return None
        return Order(
            referral_id=row[0],
            examination_code=row[1],
            modality=row[2],
            site_id=row[3],
            slot_id=row[4],
            cancelled=bool(row[5]),
            trace=json.loads(row[6]),
        )

    def positions(self, topic: str) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,)
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def record(self, order: Order | None, *, topic: str, partition: int, next_offset: int) -> None:
        """Keep the order (if any) and where to read next, in one transaction."""
        with self._transaction() as db:
            if order is not None:
                db.execute(
                    "INSERT INTO orders (referral_id, examination_code, modality, site_id, slot_id,"
                    " cancelled, trace, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(referral_id) DO UPDATE SET examination_code = excluded.examination_code,"
                    " modality = excluded.modality, site_id = excluded.site_id,"
                    " slot_id = excluded.slot_id, cancelled = excluded.cancelled,"
                    " trace = excluded.trace, updated_at = excluded.updated_at",
                    (
                        order.referral_id,
                        order.examination_code,
                        order.modality,
                        order.site_id,
                        order.slot_id,
                        int(order.cancelled),
                        json.dumps(order.trace),
                        datetime.now(UTC).isoformat(),
                    ),
                )
            db.execute(
                "INSERT INTO positions (topic, partition, next_offset) VALUES (?, ?, ?)"
                " ON CONFLICT(topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                (topic, partition, next_offset),
            )


Direction = Literal["inbound", "outbound"]


class DeadLetters:
    """Append-only JSON lines of what the gateway refused or could not deliver."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self.count = 0

    def write(
        self,
        *,
        provider: str,
        direction: Direction,
        reason: str,
        original: bytes,
        ack_code: str | None = None,
        message_type: str | None = None,
        control_id: str | None = None,
        event_id: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> dict[str, object]:
        record: dict[str, object] = {
            "dead_lettered_at": datetime.now(UTC).isoformat(),
            "provider": provider,
            "direction": direction,
            "reason": reason,
            "ack_code": ack_code,
            "message_type": message_type,
            "control_id": control_id,
            "event_id": event_id,
            "problems": [
                {"location": p.location, "code": p.code, "text": p.text} for p in problems
            ],
            "original_b64": base64.b64encode(original[:MAX_ORIGINAL_BYTES]).decode("ascii"),
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self.count += 1
        return record

    def read(self) -> list[dict[str, object]]:
        if not self.path.exists():
            return []
        return [
            json.loads(line) for line in self.path.read_text("utf-8").splitlines() if line.strip()
        ]
