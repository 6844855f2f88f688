"""The request service's HTTP API on the real embedded broker and store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nhs_number
import pytest

from pathway_schemas import topics
from pathway_schemas.events import (
    ExaminationCompleted,
    PatientArrived,
    ReferralAmended,
    ReferralCancelled,
    ReferralQueryAnswered,
    ReferralSubmitted,
    VettingQueried,
    VettingReturned,
)
from services.common.clock import FixedClock
from services.request.main import create_app
from services.request.settings import Settings
from tests.harness import TopicReader, publish, running_service
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

PRACTICE_A = {"X-API-Key": "dev-practice-a81001"}
PRACTICE_B = {"X-API-Key": "dev-practice-b82002"}
VETTING = {"X-API-Key": "dev-vetting-clinician"}
PROVIDER = {"X-API-Key": "dev-provider-rxa01"}
OPERATOR = {"X-API-Key": "dev-operator"}
START = datetime(2026, 3, 27, 9, 0, tzinfo=UTC)


def synthetic_nhs_number() -> str:
    return str(nhs_number.generate(for_region=nhs_number.REGION_SYNTHETIC)[0])


def referral(nhs: str = "9434765919", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nhs_number": nhs,
        "referrer_id": "G1234567",
        "examination_code": "XCHES",
        "clinical_question": "Cough for six weeks in a smoker",
        "priority": "routine",
    }
    return {**body, **changes}


async def submit(
    client: httpx.AsyncClient, key: str, body: dict[str, Any], headers: dict[str, str] = PRACTICE_A
) -> Any:
    return await client.post("/referrals", json=body, headers={**headers, "Idempotency-Key": key})


def fields(response: httpx.Response) -> set[str]:
    return {e["field"] for e in response.json()["errors"]}


async def state_of(client: httpx.AsyncClient, referral_id: str) -> str:
    response = await client.get(f"/referrals/{referral_id}", headers=PRACTICE_A)
    return str(response.json()["state"])


async def test_submission_is_validated_advised_idempotent_and_flags_duplicates(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(START)
    app = create_app(service_settings(Settings, "request"), clock=clock)
    patient = synthetic_nhs_number()
    async with running_service(app) as svc:
        c = svc.client
        # Who may submit.
        assert (
            await c.post("/referrals", json=referral(), headers={"Idempotency-Key": "key-00001"})
        ).status_code == 401
        assert (await submit(c, "key-00001", referral(), VETTING)).status_code == 403

        # Each bad field is named; nothing is echoed back.
        missing_key = await c.post("/referrals", json=referral(), headers=PRACTICE_A)
        assert missing_key.status_code == 422
        assert fields(missing_key) == {"header:Idempotency-Key"}
        bad = await submit(
            c,
            "key-00002",
            {
                "nhs_number": "9434765918",
                "referrer_id": "G 1",
                "examination_code": "XXXXX",
                "clinical_question": "  ",
                "priority": "soon",
                "care_setting": "home",
                "colour": "blue",
            },
        )
        assert bad.status_code == 422
        assert fields(bad) == {
            "nhs_number",
            "referrer_id",
            "examination_code",
            "clinical_question",
            "priority",
            "care_setting",
            "colour",
        }
        assert "9434765918" not in bad.text
        unknown_referrer = await submit(c, "key-00003", referral(patient, referrer_id="G9999999"))
        assert unknown_referrer.status_code == 422
        assert fields(unknown_referrer) == {"referrer_id"}
        other_practice = await submit(c, "key-00004", referral(patient, practice_ods="B82002"))
        assert other_practice.status_code == 403
        assert fields(other_practice) == {"practice_ods"}
        spaced = await submit(
            c, "key-00005", referral("943 476 5919", clinical_question="Haemoptysis twice")
        )
        assert spaced.status_code == 201
        assert spaced.json()["nhs_number"] == "9434765919"

        async with TopicReader(kafka, topics.REFERRAL) as reader:
            first = await submit(c, "key-10000", referral(patient))
            assert first.status_code == 201, first.text
            created = first.json()
            assert created["state"] == "submitted"
            assert created["guidance"]["outcome"] == "indicated"
            assert "not clinical advice" in created["guidance"]["disclaimer"]
            assert created["duplicate_of"] == []
            assert created["warnings"] == []
            assert [e["event_type"] for e in created["timeline"]] == [ReferralSubmitted.event_type]
            assert created["timeline"][0]["received_at"] == created["submitted_at"]

            # The same key from the same practice: the same referral, 200.
            again = await submit(c, "key-10000", referral(patient))
            assert again.status_code == 200
            assert again.json()["referral_id"] == created["referral_id"]
            conflict = await submit(c, "key-10000", referral(patient, priority="urgent"))
            assert conflict.status_code == 409
            assert fields(conflict) == {"header:Idempotency-Key"}

            # Same patient and examination while the first is open: flagged, not blocked.
            duplicate = await submit(c, "key-10001", referral(patient, priority="urgent"))
            assert duplicate.status_code == 201
            assert duplicate.json()["duplicate_of"] == [created["referral_id"]]
            assert created["referral_id"] in " ".join(duplicate.json()["warnings"])
            # Another examination is no duplicate; its guidance is returned at once.
            back = await submit(
                c,
                "key-10002",
                referral(
                    patient, examination_code="XLSPI", clinical_question="Low back pain, 3 weeks"
                ),
            )
            assert back.status_code == 201
            assert back.json()["duplicate_of"] == []
            assert back.json()["guidance"]["outcome"] == "not_indicated"
            assert back.json()["guidance"]["rule_id"] == "example-lumbar-xr-back-pain"
            assert any(w.startswith("Guidance (not_indicated)") for w in back.json()["warnings"])

            await reader.wait_for(lambda _: len(reader.events()) >= 4, what="four submissions")
            published = {
                e.event.referral_id: e.event
                for e in reader.events()
                if isinstance(e.event, ReferralSubmitted)
            }
            assert published[duplicate.json()["referral_id"]].duplicate_of == (
                created["referral_id"],
            )
            assert published[back.json()["referral_id"]].guidance.outcome == "not_indicated"
            assert all(r.key.decode().startswith("ref_") for r in reader.records)
            assert all(patient.encode() not in r.key for r in reader.records)

        # Reading one referral: its practice, and read-only clinical roles; not another practice.
        rid = created["referral_id"]
        assert (await c.get(f"/referrals/{rid}", headers=PRACTICE_A)).status_code == 200
        assert (await c.get(f"/referrals/{rid}", headers=PRACTICE_B)).status_code == 404
        assert (await c.get(f"/referrals/{rid}", headers=PROVIDER)).status_code == 404
        assert (await c.get(f"/referrals/{rid}", headers=VETTING)).json()["referral_id"] == rid
        assert (await c.get(f"/referrals/{rid}", headers=OPERATOR)).status_code == 200
        assert (await c.get("/referrals/ref_" + "0" * 32, headers=PRACTICE_A)).status_code == 404
        bad_id = await c.get("/referrals/not-a-referral", headers=PRACTICE_A)
        assert bad_id.status_code == 422
        assert fields(bad_id) == {"path:referral_id"}

        # Listing: the caller's practice only, newest first, paginated, filtered.
        page1 = (await c.get("/referrals", params={"limit": 2}, headers=PRACTICE_A)).json()
        assert len(page1["items"]) == 2
        assert page1["next_cursor"]
        page2 = (
            await c.get(
                "/referrals",
                params={"limit": 2, "cursor": page1["next_cursor"]},
                headers=PRACTICE_A,
            )
        ).json()
        seen = [i["referral_id"] for i in page1["items"] + page2["items"]]
        assert len(seen) == len(set(seen)) == 4
        assert page2["next_cursor"] is None
        assert (await c.get("/referrals", headers=PRACTICE_B)).json()["items"] == []
        operator_view = (
            await c.get("/referrals", params={"practice": "A81001"}, headers=OPERATOR)
        ).json()
        assert len(operator_view["items"]) == 4
        in_state = await c.get("/referrals", params={"state": "cancelled"}, headers=PRACTICE_A)
        assert in_state.json()["items"] == []
        window = {
            "from": (START - timedelta(hours=1)).isoformat(),
            "to": (START + timedelta(hours=1)).isoformat(),
        }
        assert (
            len((await c.get("/referrals", params=window, headers=PRACTICE_A)).json()["items"]) == 4
        )
        later = {"from": (START + timedelta(hours=1)).isoformat()}
        assert (await c.get("/referrals", params=later, headers=PRACTICE_A)).json()["items"] == []
        bad_list = await c.get(
            "/referrals",
            params={"cursor": "bm9wZQ", "limit": 0, "state": "lost"},
            headers=PRACTICE_A,
        )
        assert bad_list.status_code == 422
        assert fields(bad_list) == {"query:limit", "query:state"}
        assert fields(
            await c.get("/referrals", params={"cursor": "bm9wZQ"}, headers=PRACTICE_A)
        ) == {"query:cursor"}
        backwards = {"from": START.isoformat(), "to": (START - timedelta(days=1)).isoformat()}
        assert fields(await c.get("/referrals", params=backwards, headers=PRACTICE_A)) == {
            "query:from",
            "query:to",
        }
        naive = await c.get(
            "/referrals", params={"from": "2026-03-27T09:00:00"}, headers=PRACTICE_A
        )
        assert naive.status_code == 422
        assert fields(naive) == {"query:from"}
        assert (
            await c.get("/referrals", params={"practice": "A81001"}, headers=PRACTICE_B)
        ).status_code == 403

        # Guidance without submitting.
        advice = await c.post(
            "/guidance",
            json={"examination_code": "MKNEL", "clinical_question": "Knee locking after twisting"},
            headers=PRACTICE_A,
        )
        assert advice.status_code == 200
        assert advice.json()["outcome"] == "specialist_only"
        no_rule = await c.post(
            "/guidance",
            json={"examination_code": "UTHYR", "clinical_question": "Neck lump"},
            headers=VETTING,
        )
        assert no_rule.json()["outcome"] == "no_rule"
        assert no_rule.json()["rule_id"] is None
        bad_advice = await c.post(
            "/guidance", json={"examination_code": "xches"}, headers=PRACTICE_A
        )
        assert bad_advice.status_code == 422
        assert fields(bad_advice) == {
            "examination_code",
            "clinical_question",
        }
        assert (await c.post("/guidance", json={}, headers=PROVIDER)).status_code == 403

        metrics = (await c.get("/metrics")).text
        assert (
            'pathway_referrals_received_total{modality="XR",outcome="accepted",priority="routine"} 3.0'
            in metrics
        )
        assert 'pathway_duplicates_flagged_total{modality="XR"} 1.0' in metrics
        assert 'pathway_guidance_outcomes_total{outcome="not_indicated"} 1.0' in metrics
        assert (
            'pathway_intake_rejections_total{channel="api",reason="unknown_referrer"} 1.0'
            in metrics
        )
        assert (
            'pathway_intake_rejections_total{channel="api",reason="idempotency_conflict"} 1.0'
            in metrics
        )
        assert 'pathway_intake_rejections_total{channel="api",reason="schema"} 2.0' in metrics
        assert patient not in metrics


async def test_cancel_answer_and_amend_follow_the_referrals_state(
    kafka: str, service_settings: Any
) -> None:
    clock = FixedClock(START)
    app = create_app(service_settings(Settings, "request"), clock=clock)
    patient = synthetic_nhs_number()
    async with running_service(app) as svc:
        c = svc.client
        ids = []
        for n, code in enumerate(("XCHES", "XKNEL", "UABDO", "XHANL")):
            response = await submit(
                c, f"lifecycle-{n:04d}", referral(patient, examination_code=code)
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["referral_id"])
        to_cancel, examined, queried, returned = ids
        cancel = {"reason": "no_longer_needed", "cancelled_by": "G1234567"}

        # Cancel before the examination; a repeat changes nothing.
        assert (
            await c.post(f"/referrals/{to_cancel}/cancel", json=cancel, headers=PRACTICE_B)
        ).status_code == 404
        bad_cancel = await c.post(
            f"/referrals/{to_cancel}/cancel", json={"reason": "bored"}, headers=PRACTICE_A
        )
        assert bad_cancel.status_code == 422
        assert fields(bad_cancel) == {"reason", "cancelled_by"}
        cancelled = await c.post(f"/referrals/{to_cancel}/cancel", json=cancel, headers=PRACTICE_A)
        assert cancelled.status_code == 200
        assert cancelled.json()["state"] == "cancelled"
        assert cancelled.json()["open"] is False
        repeat = await c.post(f"/referrals/{to_cancel}/cancel", json=cancel, headers=PRACTICE_A)
        assert repeat.status_code == 200
        assert [e["event_type"] for e in repeat.json()["timeline"]].count(
            ReferralCancelled.event_type
        ) == 1

        # After the patient arrived, and after the examination: refused with a clear message.
        arrived = PatientArrived(
            referral_id=examined,
            occurred_at=START + timedelta(days=2),
            provider_ods="RXA01",
            site_id="main",
        )
        await publish(kafka, [(arrived, topics.EXAMINATION)], source="/imaging/scheduling")
        await wait_until(
            lambda: _state_is(c, examined, "arrived"), timeout=20, message="arrival recorded"
        )
        too_late = await c.post(f"/referrals/{examined}/cancel", json=cancel, headers=PRACTICE_A)
        assert too_late.status_code == 409
        assert "examination" in too_late.json()["detail"]
        completed = ExaminationCompleted(
            referral_id=examined,
            occurred_at=START + timedelta(days=2, minutes=20),
            provider_ods="RXA01",
            site_id="main",
            study={"study_instance_uid": "1.2.826.0.1.3680043.8.498.1", "accession_number": "ACC1"},
            modality="XR",
            examination_code="XKNEL",
        )
        await publish(kafka, [(completed, topics.EXAMINATION)], source="/imaging/reporting")
        await wait_until(
            lambda: _state_is(c, examined, "examined"), timeout=20, message="examination recorded"
        )
        assert (
            await c.post(f"/referrals/{examined}/cancel", json=cancel, headers=PRACTICE_A)
        ).status_code == 409
        # The provider that examined the patient may now read the referral; another may not.
        assert (await c.get(f"/referrals/{examined}", headers=PROVIDER)).status_code == 200
        assert (
            await c.get(f"/referrals/{examined}", headers={"X-API-Key": "dev-provider-nwx02"})
        ).status_code == 404

        # The duplicate window runs from the examination: 27 days after it flagged, 29 not.
        clock.set(START + timedelta(days=29))
        within = await submit(c, "lifecycle-1000", referral(patient, examination_code="XKNEL"))
        assert within.json()["duplicate_of"] == [examined]
        await c.post(
            f"/referrals/{within.json()['referral_id']}/cancel", json=cancel, headers=PRACTICE_A
        )
        clock.set(START + timedelta(days=31))
        beyond = await submit(c, "lifecycle-1001", referral(patient, examination_code="XKNEL"))
        assert beyond.json()["duplicate_of"] == []

        async with TopicReader(kafka, topics.REFERRAL) as reader:
            # Answering a vetting query.
            answer = {"query_id": "q-1", "answer": "No previous imaging", "answered_by": "G1234567"}
            no_query = await c.post(f"/referrals/{queried}/answer", json=answer, headers=PRACTICE_A)
            assert no_query.status_code == 409
            assert fields(no_query) == {"query_id"}
            query = VettingQueried(
                referral_id=queried,
                occurred_at=START + timedelta(days=1),
                query_id="q-1",
                question="Any previous imaging?",
                decided_by="R1234",
            )
            await publish(kafka, [(query, topics.VETTING)], source="/imaging/vetting")
            await wait_until(
                lambda: _state_is(c, queried, "queried"), timeout=20, message="query recorded"
            )
            wrong = await c.post(
                f"/referrals/{queried}/answer",
                json={**answer, "query_id": "q-0"},
                headers=PRACTICE_A,
            )
            assert wrong.status_code == 409
            assert fields(wrong) == {"query_id"}
            blank = await c.post(
                f"/referrals/{queried}/answer", json={**answer, "answer": " "}, headers=PRACTICE_A
            )
            assert blank.status_code == 422
            assert fields(blank) == {"answer"}
            stranger = await c.post(
                f"/referrals/{queried}/answer",
                json={**answer, "answered_by": "G2345678"},
                headers=PRACTICE_A,
            )
            assert stranger.status_code == 422
            assert fields(stranger) == {"answered_by"}
            answered = await c.post(f"/referrals/{queried}/answer", json=answer, headers=PRACTICE_A)
            assert answered.status_code == 200
            assert answered.json()["state"] == "awaiting_vetting"
            assert answered.json()["open_query_id"] is None

            # Amending a returned referral: guidance and the duplicate check run again.
            amend = {
                "examination_code": "UABDO",
                "clinical_question": "Right upper quadrant pain",
                "amended_by": "G7654321",
            }
            early = await c.post(f"/referrals/{returned}/amend", json=amend, headers=PRACTICE_A)
            assert early.status_code == 409
            sent_back = VettingReturned(
                referral_id=returned,
                occurred_at=START + timedelta(days=1),
                reason="insufficient_information",
                advice="Please say what the hand X-ray should show",
                decided_by="R1234",
            )
            await publish(kafka, [(sent_back, topics.VETTING)], source="/imaging/vetting")
            await wait_until(
                lambda: _state_is(c, returned, "returned"), timeout=20, message="return recorded"
            )
            nothing = await c.post(
                f"/referrals/{returned}/amend", json={"amended_by": "G1234567"}, headers=PRACTICE_A
            )
            assert nothing.status_code == 422
            assert fields(nothing) == {"(body)"}
            amended = await c.post(f"/referrals/{returned}/amend", json=amend, headers=PRACTICE_A)
            assert amended.status_code == 200, amended.text
            assert amended.json()["state"] == "awaiting_vetting"
            assert amended.json()["examination_code"] == "UABDO"
            assert amended.json()["duplicate_of"] == [
                queried
            ]  # the same patient's open abdominal ultrasound
            again = await c.post(f"/referrals/{returned}/amend", json=amend, headers=PRACTICE_A)
            assert again.status_code == 409  # no longer returned

            await reader.wait_for(
                lambda rs: (
                    {dict(r.headers)["ce_type"].decode() for r in rs}
                    >= {
                        ReferralCancelled.event_type,
                        ReferralQueryAnswered.event_type,
                        ReferralAmended.event_type,
                    }
                ),
                what="cancellation, answer and amendment on the referral topic",
            )
            amendments = [e.event for e in reader.events() if isinstance(e.event, ReferralAmended)]
            assert [a.duplicate_of for a in amendments] == [(queried,)]


async def _state_is(client: httpx.AsyncClient, referral_id: str, state: str) -> Any:
    return await state_of(client, referral_id) == state
