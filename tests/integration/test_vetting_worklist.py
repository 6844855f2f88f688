"""The vetting worklist on the real broker and store: who may decide, the loops, idempotency, order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx

from pathway_schemas import topics
from pathway_schemas.events import (
    CancellationReason,
    ReferralCancelled,
    ReferralQueryAnswered,
    VettingAccepted,
    VettingQueried,
    VettingReturned,
)
from services.common.clock import FixedClock
from services.vetting.main import create_app
from services.vetting.settings import Settings
from tests.harness import TopicReader, publish, running_service
from tests.helpers import wait_until
from tests.unit.vetting.builders import T0, amended, submitted

CLINICIAN = {"X-API-Key": "dev-vetting-clinician"}
OPERATOR = {"X-API-Key": "dev-operator"}
PRACTICE = {"X-API-Key": "dev-practice-a81001"}
ACCEPT = {"protocol": "CT chest with contrast", "justified_by": "RAD0001"}


Check = Callable[[], bool | Awaitable[bool]]


async def eventually(check: Check, what: str) -> None:
    await wait_until(check, timeout=30, message=what)


def state_is(client: httpx.AsyncClient, referral_id: str, state: str) -> Check:
    async def check() -> bool:
        response = await client.get(f"/worklist/{referral_id}", headers=CLINICIAN)
        return response.status_code == 200 and response.json()["state"] == state

    return check


def count_is(client: httpx.AsyncClient, expected: int) -> Check:
    async def check() -> bool:
        return len(await worklist_ids(client)) == expected

    return check


async def worklist_ids(client: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await client.get("/worklist", headers=CLINICIAN, params=params)
    assert response.status_code == 200, response.text
    return [item["referral_id"] for item in response.json()["items"]]


def of_type(reader: TopicReader, cls: type[Any], referral_id: str) -> list[Any]:
    return [
        r.event
        for r in reader.events()
        if isinstance(r.event, cls) and r.event.referral_id == referral_id
    ]


async def test_clinicians_decide_through_return_and_query_loops_and_cancellation(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0 + timedelta(hours=1))
    returned = submitted("CCHES", occurred_at=T0)
    queried = submitted("CCHES", occurred_at=T0)
    cancelled = submitted("UABDO", occurred_at=T0)

    app = create_app(service_settings(Settings, "vetting"), clock=clock)
    async with running_service(app) as svc, TopicReader(kafka, topics.VETTING) as reader:
        client = svc.client
        await publish(kafka, [(e, topics.REFERRAL) for e in (returned, queried, cancelled)])
        await eventually(count_is(client, 3), "three referrals on the worklist")

        # Only a vetting clinician decides; an operator reads without patient identifiers.
        url = f"/worklist/{returned.referral_id}/accept"
        assert (await client.post(url, json=ACCEPT)).status_code == 401
        assert (await client.post(url, json=ACCEPT, headers=PRACTICE)).status_code == 403
        assert (await client.post(url, json=ACCEPT, headers=OPERATOR)).status_code == 403
        assert (await client.get("/worklist", headers=PRACTICE)).status_code == 403
        as_operator = (await client.get("/worklist", headers=OPERATOR)).json()["items"]
        assert len(as_operator) == 3
        assert all(i["nhs_number"] is None for i in as_operator)
        assert (
            svc.runtime.metrics.registry.get_sample_value(
                "pathway_authz_denied_total", {"service": "vetting", "channel": "http"}
            )
            == 3
        )

        # An ionising examination is not accepted without a justifying practitioner.
        refused = await client.post(url, json={"protocol": "CT chest"}, headers=CLINICIAN)
        assert refused.status_code == 422
        assert [e["field"] for e in refused.json()["errors"]] == ["justified_by"]

        # Return -> amend -> accept.
        clock.advance(timedelta(hours=1))
        back = await client.post(
            f"/worklist/{returned.referral_id}/return",
            json={"reason": "insufficient_information", "advice": "Please add the smoking history"},
            headers=CLINICIAN,
        )
        assert back.status_code == 200, back.text
        assert (back.json()["outcome"], back.json()["decided_by"]) == ("returned", "dr.vetting")
        assert returned.referral_id not in await worklist_ids(client)
        await publish(kafka, [(amended(returned, occurred_at=clock.now()), topics.REFERRAL)])
        await eventually(state_is(client, returned.referral_id, "waiting"), "amended back")
        item = (await client.get(f"/worklist/{returned.referral_id}", headers=CLINICIAN)).json()
        assert [h["kind"] for h in item["history"]] == [
            "submitted",
            "queued",
            "returned",
            "amended",
            "queued",
        ]
        assert item["history"][2]["note"] == "Please add the smoking history"
        assert item["history"][2]["by"] == "dr.vetting"
        ok = await client.post(url, json=ACCEPT, headers=CLINICIAN)
        assert ok.status_code == 200, ok.text

        # Query -> answer -> accept.
        asked = await client.post(
            f"/worklist/{queried.referral_id}/query",
            json={"question": "Any weight loss?"},
            headers=CLINICIAN,
        )
        assert asked.status_code == 200, asked.text
        query_id = asked.json()["query_id"]
        assert queried.referral_id not in await worklist_ids(client)
        answer = ReferralQueryAnswered(
            referral_id=queried.referral_id,
            occurred_at=clock.now(),
            query_id=query_id,
            answer="Yes, 5 kg in two months",
            answered_by="G1234567",
        )
        await publish(kafka, [(answer, topics.REFERRAL)])
        await eventually(state_is(client, queried.referral_id, "waiting"), "answered back")
        item = (await client.get(f"/worklist/{queried.referral_id}", headers=CLINICIAN)).json()
        trail = [
            (h["kind"], h["note"]) for h in item["history"] if h["kind"] in ("queried", "answered")
        ]
        assert trail == [("queried", "Any weight loss?"), ("answered", "Yes, 5 kg in two months")]
        clock.advance(timedelta(minutes=30))
        ok = await client.post(
            f"/worklist/{queried.referral_id}/accept", json=ACCEPT, headers=CLINICIAN
        )
        assert ok.status_code == 200, ok.text

        # A cancelled referral leaves the worklist and takes no decision.
        cancel = ReferralCancelled(
            referral_id=cancelled.referral_id,
            occurred_at=clock.now(),
            reason=CancellationReason.NO_LONGER_NEEDED,
            cancelled_by="G1234567",
        )
        await publish(kafka, [(cancel, topics.REFERRAL)])
        await eventually(state_is(client, cancelled.referral_id, "cancelled"), "cancelled")
        assert await worklist_ids(client) == []
        late = await client.post(
            f"/worklist/{cancelled.referral_id}/accept", json=ACCEPT, headers=CLINICIAN
        )
        assert late.status_code == 409
        assert late.json()["state"] == "cancelled"

        await reader.wait_for(
            lambda _: (
                len(of_type(reader, VettingAccepted, queried.referral_id)) >= 1
                and len(of_type(reader, VettingAccepted, returned.referral_id)) >= 1
            ),
            what="both acceptances",
        )
        assert len(of_type(reader, VettingReturned, returned.referral_id)) == 1
        (acceptance,) = of_type(reader, VettingAccepted, returned.referral_id)
        assert acceptance.referral_received_at == T0
        assert acceptance.justified_by == "RAD0001"
        assert [q.query_id for q in of_type(reader, VettingQueried, queried.referral_id)] == [
            query_id
        ]
        assert len(of_type(reader, VettingAccepted, queried.referral_id)) == 1
        assert of_type(reader, VettingAccepted, cancelled.referral_id) == []
        registry = svc.runtime.metrics.registry
        for cls, count in ((VettingAccepted, 2), (VettingReturned, 1), (VettingQueried, 1)):
            published = {"service": "vetting", "event_type": cls.event_type}
            assert registry.get_sample_value("pathway_events_published_total", published) == count

        # Vetting time runs from entry to decision: two hours for the return.
        assert (
            registry.get_sample_value(
                "pathway_vetting_seconds_sum", {"priority": "routine", "outcome": "returned"}
            )
            == 2 * 3600
        )
        assert (
            registry.get_sample_value(
                "pathway_vetting_decisions_total",
                {"outcome": "returned", "reason": "insufficient_information"},
            )
            == 1
        )
        assert (
            registry.get_sample_value(
                "pathway_vetting_decisions_total", {"outcome": "queried", "reason": "query"}
            )
            == 1
        )


async def test_a_double_decision_yields_one_event_and_the_worklist_keeps_its_order(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(T0 + timedelta(hours=4))
    urgent_old = submitted("CCHES", priority="urgent", occurred_at=T0)
    urgent_new = submitted("UABDO", priority="urgent", occurred_at=T0 + timedelta(hours=3))
    routine_oldest = submitted("CCHES", occurred_at=T0 - timedelta(days=1))
    routine_us = submitted("UPELV", occurred_at=T0 + timedelta(hours=2))
    raced = submitted("MKNEL", occurred_at=T0 + timedelta(hours=1))
    keyed = submitted("MKNER", occurred_at=T0 + timedelta(hours=1, minutes=30))
    everything = [urgent_old, urgent_new, routine_oldest, routine_us, raced, keyed]

    settings = service_settings(Settings, "vetting", worklist_gauges_interval_s=0.1)
    app = create_app(settings, clock=clock)
    async with running_service(app) as svc, TopicReader(kafka, topics.VETTING) as reader:
        client = svc.client
        # Published newest first, so the order below is the worklist's, not the arrival's.
        await publish(kafka, [(e, topics.REFERRAL) for e in reversed(everything)])
        await eventually(count_is(client, 6), "six referrals on the worklist")

        ids = [
            e.referral_id
            for e in (urgent_old, urgent_new, routine_oldest, raced, keyed, routine_us)
        ]
        assert await worklist_ids(client) == ids
        assert await worklist_ids(client, priority="urgent") == ids[:2]
        assert await worklist_ids(client, modality="US") == [
            urgent_new.referral_id,
            routine_us.referral_id,
        ]
        waited = [urgent_old.referral_id, routine_oldest.referral_id, raced.referral_id]
        assert await worklist_ids(client, min_age_minutes=170) == waited
        assert await worklist_ids(client, limit=1) == ids[:1]
        page = (await client.get("/worklist", headers=CLINICIAN)).json()["items"]
        assert page[0]["age_seconds"] == 4 * 3600
        assert page[0]["nhs_number"] == urgent_old.nhs_number

        registry = svc.runtime.metrics.registry

        def gauge(name: str, priority: str) -> float | None:
            value: float | None = registry.get_sample_value(name, {"priority": priority})
            return value

        # The gauges are sampled on a timer, so an earlier sample (taken while the six were
        # still arriving) may be on show: wait for one sample showing all four figures.
        await wait_until(
            lambda: (
                gauge("pathway_vetting_worklist_open", "urgent") == 2
                and gauge("pathway_vetting_worklist_open", "routine") == 4
                and gauge("pathway_vetting_worklist_oldest_seconds", "urgent") == 4 * 3600
                and gauge("pathway_vetting_worklist_oldest_seconds", "routine") == 28 * 3600
            ),
            message="worklist gauges",
        )
        clock.advance(timedelta(hours=1))
        await wait_until(
            lambda: gauge("pathway_vetting_worklist_oldest_seconds", "urgent") == 5 * 3600,
            message="ageing",
        )

        # Two clinicians accept at once without a key: one decision, the other sees it.
        body = {"protocol": "Knee protocol"}
        first, second = await asyncio.gather(
            client.post(f"/worklist/{raced.referral_id}/accept", json=body, headers=CLINICIAN),
            client.post(f"/worklist/{raced.referral_id}/accept", json=body, headers=CLINICIAN),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 409], (
            first.text,
            second.text,
        )
        winner, loser = (first, second) if first.status_code == 200 else (second, first)
        assert loser.json()["decision"] == winner.json()
        assert loser.json()["state"] == "accepted"

        # The same request twice with an Idempotency-Key: the first answer twice, one decision.
        key = {**CLINICIAN, "Idempotency-Key": "accept-7f3c"}
        url = f"/worklist/{keyed.referral_id}/accept"
        once, twice = [await client.post(url, json=body, headers=key) for _ in range(2)]
        assert (once.status_code, twice.status_code) == (200, 200)
        assert once.json() == twice.json()
        change = {"reason": "other", "advice": "changed my mind"}
        other = await client.post(f"/worklist/{keyed.referral_id}/return", json=change, headers=key)
        assert other.status_code == 409
        assert other.json()["decision"] == once.json()
        again = await client.post(url, json=body, headers=CLINICIAN)
        assert again.status_code == 409
        assert again.json()["decision"] == once.json()

        unknown = await client.post(
            "/worklist/ref_" + "0" * 32 + "/accept", json=body, headers=CLINICIAN
        )
        assert unknown.status_code == 404
        bad_reason = {"reason": "bored", "advice": "x"}
        bad = await client.post(
            f"/worklist/{urgent_new.referral_id}/return", json=bad_reason, headers=CLINICIAN
        )
        assert bad.status_code == 422

        await reader.wait_for(
            lambda _: all(of_type(reader, VettingAccepted, r.referral_id) for r in (raced, keyed)),
            what="both acceptances",
        )
        await eventually(count_is(client, 4), "decided items off the worklist")
        for referral in (raced, keyed):
            assert len(of_type(reader, VettingAccepted, referral.referral_id)) == 1
        published = {"service": "vetting", "event_type": VettingAccepted.event_type}
        assert registry.get_sample_value("pathway_events_published_total", published) == 2
        assert (
            registry.get_sample_value(
                "pathway_vetting_decisions_total", {"outcome": "accepted", "reason": "clinician"}
            )
            == 2
        )
