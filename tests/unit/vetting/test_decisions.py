"""A worklist item's life: decisions, returns and amendments, queries and answers, cancellation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pathway_schemas.events import (
    CancellationReason,
    ReferralCancelled,
    ReferralQueryAnswered,
    ReturnReason,
    VettingAccepted,
    VettingQueried,
    VettingQueued,
    VettingReturned,
)
from services.common.errors import Invalid, Rejected
from services.vetting.service import (
    AcceptCommand,
    HistoryKind,
    NotWaiting,
    QueryCommand,
    ReturnCommand,
    State,
    WorklistItem,
    accept,
    answer_query,
    cancel,
    enter_vetting,
    query_referrer,
    return_to_referrer,
)
from tests.unit.vetting.builders import OPEN_ACCESS, T0, amended, submitted

CLINICIAN = "dr.vetting"


def waiting(code: str = "CCHES", **overrides: object) -> WorklistItem:
    step = enter_vetting(None, submitted(code, **overrides), OPEN_ACCESS, T0)
    assert step is not None
    assert step.item.state is State.WAITING
    return step.item


def test_an_ionising_examination_is_not_accepted_without_a_justifying_practitioner() -> None:
    with pytest.raises(Invalid) as refused:
        accept(
            waiting("CCHES"),
            AcceptCommand(protocol="CT chest with contrast"),
            by=CLINICIAN,
            now=T0,
            policy=OPEN_ACCESS,
        )
    assert [e.field for e in refused.value.errors] == ["justified_by"]


def test_a_non_ionising_examination_needs_no_practitioner() -> None:
    step = accept(
        waiting("UABDO"),
        AcceptCommand(protocol="Fasting"),
        by=CLINICIAN,
        now=T0,
        policy=OPEN_ACCESS,
    )
    assert isinstance(step.events[0], VettingAccepted)
    assert step.events[0].justified_by is None
    assert not step.events[0].ionising


def test_acceptance_carries_protocol_changed_priority_practitioner_and_the_original_receipt() -> (
    None
):
    item = waiting("CCHES", priority="routine")
    decided = T0 + timedelta(hours=5)
    command = AcceptCommand(
        protocol="CT chest with contrast", priority="urgent", justified_by="RAD0001"
    )

    step = accept(
        item, command, by=CLINICIAN, now=decided, policy=OPEN_ACCESS, idempotency_key="k1"
    )

    (event,) = step.events
    assert isinstance(event, VettingAccepted)
    assert (event.protocol, event.priority.value, event.justified_by) == (
        "CT chest with contrast",
        "urgent",
        "RAD0001",
    )
    assert (event.decided_by, event.automatic, event.walk_in_allowed) == (CLINICIAN, False, False)
    assert event.referral_received_at == item.received_at == T0
    assert step.item.state is State.ACCEPTED
    assert step.item.decision_under_key("k1") == step.decision
    last = step.item.history[-1]
    assert (last.kind, last.by, last.at) == (HistoryKind.ACCEPTED, CLINICIAN, decided)


def test_a_clinician_accepting_a_listed_plain_xray_allows_walk_in_by_default() -> None:
    item = waiting("XCHES", guidance={"outcome": "specialist_only"})
    step = accept(
        item,
        AcceptCommand(protocol="PA", justified_by="RAD0001"),
        by=CLINICIAN,
        now=T0,
        policy=OPEN_ACCESS,
    )
    assert isinstance(step.events[0], VettingAccepted)
    assert step.events[0].walk_in_allowed


def test_walk_in_is_refused_for_anything_but_plain_xray() -> None:
    command = AcceptCommand(protocol="Standard", justified_by="RAD0001", walk_in_allowed=True)
    with pytest.raises(Invalid) as refused:
        accept(waiting("CCHES"), command, by=CLINICIAN, now=T0, policy=OPEN_ACCESS)
    assert [e.field for e in refused.value.errors] == ["walk_in_allowed"]


def test_a_second_decision_is_refused_with_the_first_one() -> None:
    first = return_to_referrer(
        waiting(),
        ReturnCommand(reason=ReturnReason.DUPLICATE, advice="Scanned last week"),
        by=CLINICIAN,
        now=T0,
    )
    with pytest.raises(NotWaiting) as refused:
        accept(
            first.item,
            AcceptCommand(protocol="x", justified_by="RAD0001"),
            by=CLINICIAN,
            now=T0,
            policy=OPEN_ACCESS,
        )
    assert refused.value.state is State.RETURNED
    assert refused.value.decision == first.decision


def test_return_amend_accept_loop_keeps_the_history_and_needs_a_person_again() -> None:
    event = submitted("XCHES", guidance={"outcome": "more_information_needed"})
    first = enter_vetting(None, event, OPEN_ACCESS, T0)
    assert first is not None
    returned = return_to_referrer(
        first.item,
        ReturnCommand(
            reason=ReturnReason.INSUFFICIENT_INFORMATION, advice="Please give the smoking history"
        ),
        by=CLINICIAN,
        now=T0 + timedelta(hours=1),
    )
    assert isinstance(returned.events[0], VettingReturned)
    assert returned.item.state is State.RETURNED
    assert not returned.item.on_worklist

    # The amendment now satisfies the guidance, but a clinician returned it: a clinician looks again.
    amended_at = T0 + timedelta(days=2)
    amendment = amended(event, occurred_at=amended_at, guidance={"outcome": "indicated"})
    again = enter_vetting(returned.item, amendment, OPEN_ACCESS, amended_at)
    assert again is not None
    assert again.item.state is State.WAITING
    assert isinstance(again.events[0], VettingQueued)
    assert "returned or queried before" in again.item.why
    assert again.item.entered_at == amended_at
    assert again.item.received_at == T0
    assert again.item.decision is None
    assert [e.kind.value for e in again.item.history] == [
        "submitted",
        "queued",
        "returned",
        "amended",
        "queued",
    ]

    done = accept(
        again.item,
        AcceptCommand(protocol="PA chest", justified_by="RAD0001"),
        by=CLINICIAN,
        now=amended_at + timedelta(hours=1),
        policy=OPEN_ACCESS,
    )
    assert isinstance(done.events[0], VettingAccepted)
    assert done.events[0].referral_received_at == T0


def test_an_amendment_while_waiting_keeps_its_place_and_emits_nothing() -> None:
    event = submitted("CCHES")
    item = waiting("CCHES", referral_id=event.referral_id)
    step = enter_vetting(
        item,
        amended(event, occurred_at=T0 + timedelta(hours=3), priority="urgent"),
        OPEN_ACCESS,
        T0,
    )
    assert step is not None
    assert step.events == ()
    assert step.item.entered_at == T0
    assert step.item.referral.priority.value == "urgent"
    assert step.item.rank == 0


def test_an_amendment_cannot_reopen_an_accepted_referral() -> None:
    event = submitted("XCHES")
    step = enter_vetting(None, event, OPEN_ACCESS, T0)
    assert step is not None
    assert step.item.state is State.ACCEPTED
    with pytest.raises(Rejected, match="accepted"):
        enter_vetting(step.item, amended(event), OPEN_ACCESS, T0)


def test_an_amendment_whose_submission_was_never_seen_waits_for_a_person() -> None:
    step = enter_vetting(None, amended(submitted("XCHES")), OPEN_ACCESS, T0)
    assert step is not None
    assert step.item.state is State.WAITING


def test_the_same_submission_again_changes_nothing() -> None:
    event = submitted("CCHES")
    first = enter_vetting(None, event, OPEN_ACCESS, T0)
    assert first is not None
    assert enter_vetting(first.item, event, OPEN_ACCESS, T0) is None


def answered(item: WorklistItem, query_id: str, minutes: int = 30) -> ReferralQueryAnswered:
    return ReferralQueryAnswered(
        referral_id=item.referral_id,
        occurred_at=T0 + timedelta(minutes=minutes),
        query_id=query_id,
        answer="Twenty pack-years",
        answered_by="G1234567",
    )


def test_query_answer_accept_loop_brings_it_back_with_question_and_answer() -> None:
    queried = query_referrer(
        waiting(), QueryCommand(question="Smoking history?"), by=CLINICIAN, now=T0, query_id="q_1"
    )
    assert isinstance(queried.events[0], VettingQueried)
    assert queried.events[0].query_id == "q_1"
    assert queried.item.state is State.QUERIED
    assert queried.item.open_query_id == "q_1"

    back = answer_query(queried.item, answered(queried.item, "q_1"), T0 + timedelta(minutes=31))
    assert back is not None
    assert back.item.state is State.WAITING
    assert back.item.open_query_id is None
    assert isinstance(back.events[0], VettingQueued)
    assert back.item.entered_at == T0 + timedelta(minutes=30)
    trail = [
        (e.kind.value, e.note)
        for e in back.item.history
        if e.kind in (HistoryKind.QUERIED, HistoryKind.ANSWERED)
    ]
    assert trail == [("queried", "Smoking history?"), ("answered", "Twenty pack-years")]

    assert (
        answer_query(back.item, answered(queried.item, "q_1"), T0) is None
    )  # the same answer again
    done = accept(
        back.item,
        AcceptCommand(protocol="CT chest", justified_by="RAD0001"),
        by=CLINICIAN,
        now=T0,
        policy=OPEN_ACCESS,
    )
    assert done.item.state is State.ACCEPTED


def test_an_answer_to_a_query_that_is_not_open_is_refused() -> None:
    queried = query_referrer(
        waiting(), QueryCommand(question="Which side?"), by=CLINICIAN, now=T0, query_id="q_1"
    )
    with pytest.raises(Rejected, match="no open query"):
        answer_query(queried.item, answered(queried.item, "q_other"), T0)
    with pytest.raises(Rejected):
        answer_query(None, answered(queried.item, "q_1"), T0)


def cancelled(item: WorklistItem) -> ReferralCancelled:
    return ReferralCancelled(
        referral_id=item.referral_id,
        occurred_at=T0 + timedelta(hours=1),
        reason=CancellationReason.NO_LONGER_NEEDED,
        cancelled_by="G1234567",
    )


def test_a_cancelled_referral_leaves_the_worklist_and_takes_no_decision() -> None:
    item = waiting()
    step = cancel(item, cancelled(item))
    assert step is not None
    assert step.item.state is State.CANCELLED
    assert not step.item.on_worklist
    assert step.events == ()
    assert step.item.history[-1].kind is HistoryKind.CANCELLED
    with pytest.raises(NotWaiting, match="cancelled"):
        query_referrer(
            step.item, QueryCommand(question="Still needed?"), by=CLINICIAN, now=T0, query_id="q_1"
        )
    assert cancel(step.item, cancelled(item)) is None
    with pytest.raises(Rejected):
        enter_vetting(
            step.item, amended(submitted("CCHES", referral_id=item.referral_id)), OPEN_ACCESS, T0
        )


def test_cancelling_a_referral_vetting_never_saw_does_nothing() -> None:
    assert cancel(None, cancelled(waiting())) is None
