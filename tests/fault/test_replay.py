"""Replay: the recorded event log, republished whole and in random duplicated prefixes,
changes nothing.

The log is every record on the canonical topics (what the services emitted, each with its
original id) and on the providers' inbound topics (what the providers sent). Republished
with their original ids, keys and headers onto their original partitions, they are
repeats to every consumer: the services consume each other's topics and their own, and
drop a repeat by its event id, so no state moves and no new event is emitted.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from pathway_cli.actors import DEV_KEYS, Api, ApiError, Json
from pathway_cli.system import System
from pathway_schemas import topics
from tests.fault.audit import Record, quiet, read_topics, republish, short
from tests.fault.conftest import print_figures
from tests.fault.load import Load, OrderFeed, mixed_plan, steady_load

pytestmark = pytest.mark.fault

SEED = 9


async def snapshot(system: System, http: httpx.AsyncClient, referral_ids: list[str]) -> Json:
    """Every service's view of every referral, through its API, as its users would read it."""
    practice = Api(http, system.urls["request"], DEV_KEYS["A81001"])
    clinician = Api(http, system.urls["vetting"], DEV_KEYS["vetting"])
    clerk = Api(http, system.urls["scheduling"], DEV_KEYS["clerk"])
    reporter = Api(http, system.urls["reporting"], DEV_KEYS["reporter"])
    reports = Api(http, system.urls["notify"], DEV_KEYS["A81001"])

    async def read(api: Api, path: str) -> Any:
        try:
            return await api.call("GET", path)
        except ApiError as error:
            return {"status": error.status}

    state: Json = {}
    for rid in referral_ids:
        referral = await read(practice, f"/referrals/{rid}")
        report_ids = sorted(
            {
                e["detail"]["report_id"]
                for e in referral.get("timeline", [])
                if e["event_type"].endswith("report.issued.v1")
            }
        )
        state[rid] = {
            "referral": referral,
            "vetting": await read(clinician, f"/worklist/{rid}"),
            "booking": await read(clerk, f"/bookings/{rid}"),
            "examination": await read(reporter, f"/examinations/{rid}"),
            "reports": [await read(reports, f"/reports/{r}") for r in report_ids],
        }
    return state


def duplicated_prefixes(log: list[Record], rng: random.Random, count: int) -> list[Record]:
    """`count` prefixes of every partition's log, each record of a prefix sent 1-3 times."""
    by_partition: dict[tuple[str, int], list[Record]] = {}
    for record in log:
        by_partition.setdefault((record.topic, record.partition), []).append(record)
    replay: list[Record] = []
    for _ in range(count):
        for records in by_partition.values():
            for record in records[: rng.randint(0, len(records))]:
                replay += [record] * rng.randint(1, 3)
    return replay


async def test_republishing_the_event_log_whole_and_in_duplicated_prefixes_changes_nothing(
    system: System, feed: OrderFeed, http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    load = Load(system, http, feed)
    journeys = await steady_load(load, mixed_plan(8, booked_every=4), spacing=0.5, deadline=90)
    assert all(j.finished for j in journeys), [j.error for j in journeys if not j.finished]
    await quiet(system.bootstrap, system.mongo_url)

    inbound = [topics.provider_inbound(code) for code in feed.providers.systems]
    outbound = [topics.provider_outbound(code) for code in feed.providers.systems]
    log = await read_topics(system.bootstrap, [*topics.CANONICAL, *inbound])
    referral_ids = sorted({r.header("ce_subject") or "" for r in log if r.topic == topics.REFERRAL})
    before = await snapshot(system, http, referral_ids)
    orders_before = len(await read_topics(system.bootstrap, outbound))
    ids_before = Counter(r.header("ce_id") for r in log if r.topic in topics.CANONICAL)

    started = time.monotonic()
    replay = log + duplicated_prefixes(log, random.Random(SEED), count=2)
    await republish(system.bootstrap, replay)
    await quiet(system.bootstrap, system.mongo_url, timeout=180)
    elapsed = time.monotonic() - started

    after_log = await read_topics(system.bootstrap, [*topics.CANONICAL, *inbound])
    after = await snapshot(system, http, referral_ids)
    ids_after = Counter(r.header("ce_id") for r in after_log if r.topic in topics.CANONICAL)
    new_events = Counter(
        short(r.header("ce_type") or "")
        for r in after_log
        if r.topic in topics.CANONICAL and r.header("ce_id") not in ids_before
    )
    orders_after = len(await read_topics(system.bootstrap, outbound))

    print_figures(
        capsys,
        "fault test: replay",
        {
            "referrals": len(referral_ids),
            "records in the log": len(log),
            "records republished": f"{len(replay)} (the log, then 2 duplicated prefixes)",
            "new events caused": sum(new_events.values()),
            "new provider orders": orders_after - orders_before,
            "seconds to drop them all": f"{elapsed:.0f}",
        },
    )
    assert not new_events, new_events
    assert set(ids_after) == set(ids_before)
    assert orders_after == orders_before
    changed = [rid for rid in referral_ids if after[rid] != before[rid]]
    assert not changed, {rid: _difference(before[rid], after[rid]) for rid in changed[:3]}


def _difference(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            d
            for key in sorted(set(before) | set(after))
            for d in _difference(before.get(key), after.get(key), f"{path}.{key}")
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        pairs = enumerate(zip(before, after, strict=True))
        return [d for i, (b, a) in pairs for d in _difference(b, a, f"{path}[{i}]")]
    return [] if before == after else [f"{path}: {str(before)[:120]} -> {str(after)[:120]}"]
