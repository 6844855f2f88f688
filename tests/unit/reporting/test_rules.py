"""What a provider's event or a reporter's command may do in each examination state."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pathway_schemas.events import ReportStatus
from pathway_schemas.values import CareSetting, Modality, Priority
from services.common.errors import Denied, Invalid, Rejected
from services.reporting.service import (
    Referral,
    State,
    authorise_provider,
    check_abandonment,
    check_addendum,
    check_arrival,
    check_completion,
    check_delay,
    check_report,
    may_reassign,
    not_in_future,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.2"
BOOKED = Referral(
    referral_id="ref_" + "0" * 32,
    nhs_number="9434765919",
    practice_ods="A81001",
    care_setting=CareSetting.GP,
    priority=Priority.ROUTINE,
    examination_code="XCHES",
    modality=Modality.XR,
    provider_ods="RXA01",
)
COMPLETED = replace(
    BOOKED, state=State.COMPLETED, study_instance_uid=STUDY, rule="next_working_day"
)


def test_a_provider_may_act_only_on_a_referral_assigned_to_it() -> None:
    assert authorise_provider(BOOKED, "RXA01") is BOOKED
    with pytest.raises(Denied):
        authorise_provider(BOOKED, "NWX02")


def test_a_referral_not_yet_known_or_booked_here_is_waited_for_not_refused() -> None:
    assert authorise_provider(None, "RXA01") is None
    assert authorise_provider(replace(BOOKED, provider_ods=None), "RXA01") is None
    assert authorise_provider(replace(BOOKED, nhs_number=None), "RXA01") is None


def test_a_cancelled_unbooked_referral_is_refused_at_once() -> None:
    with pytest.raises(Rejected, match="cancelled"):
        authorise_provider(replace(BOOKED, provider_ods=None, cancelled=True), "RXA01")


def test_arrival_is_recorded_once_and_not_after_abandonment() -> None:
    assert check_arrival(BOOKED) is True
    assert check_arrival(replace(BOOKED, state=State.ARRIVED)) is False
    assert check_arrival(COMPLETED) is False
    with pytest.raises(Rejected, match="abandoned"):
        check_arrival(replace(BOOKED, state=State.ABANDONED))
    with pytest.raises(Rejected, match="cancelled"):
        check_arrival(replace(BOOKED, cancelled=True))


def test_a_referral_is_examined_once_and_a_repeated_completion_changes_nothing() -> None:
    assert check_completion(BOOKED, STUDY) is True
    assert check_completion(replace(BOOKED, state=State.ARRIVED), STUDY) is True
    assert check_completion(COMPLETED, STUDY) is False
    assert check_completion(replace(COMPLETED, state=State.REPORTED), STUDY) is False
    with pytest.raises(Rejected, match="examined twice"):
        check_completion(COMPLETED, OTHER_STUDY)
    with pytest.raises(Rejected, match="abandoned"):
        check_completion(replace(BOOKED, state=State.ABANDONED), STUDY)


def test_a_completed_examination_cannot_be_abandoned() -> None:
    assert check_abandonment(BOOKED) is True
    assert check_abandonment(replace(BOOKED, state=State.ABANDONED)) is False
    with pytest.raises(Rejected):
        check_abandonment(COMPLETED)


@pytest.mark.parametrize("status", list(ReportStatus))
def test_a_report_needs_a_completed_examination(status: ReportStatus) -> None:
    check_report(COMPLETED, status)
    for state in (State.PENDING, State.ARRIVED, State.ABANDONED):
        with pytest.raises(Rejected, match="completed examination"):
            check_report(replace(BOOKED, state=state), status)


def test_after_a_final_report_only_an_addendum_is_accepted() -> None:
    reported = replace(COMPLETED, state=State.REPORTED)
    for status in ReportStatus:
        with pytest.raises(Rejected, match="addendum"):
            check_report(reported, status)
    check_addendum(reported)
    check_addendum(COMPLETED)
    with pytest.raises(Rejected):
        check_addendum(BOOKED)


def test_a_delay_applies_once_and_only_while_awaiting_the_final_report() -> None:
    assert check_delay(COMPLETED) is True
    assert check_delay(replace(COMPLETED, rule="mdt")) is False
    with pytest.raises(Rejected):
        check_delay(replace(COMPLETED, state=State.REPORTED))
    with pytest.raises(Rejected):
        check_delay(BOOKED)


def test_a_booking_moves_the_referral_only_until_it_is_examined() -> None:
    assert may_reassign(None)
    assert may_reassign(BOOKED)
    assert may_reassign(replace(BOOKED, state=State.ABANDONED))
    assert not may_reassign(COMPLETED)


def test_an_event_from_the_future_is_refused() -> None:
    now = datetime(2026, 6, 8, 9, 0, tzinfo=UTC)
    not_in_future(now + timedelta(minutes=4), now)
    with pytest.raises(Invalid, match="future"):
        not_in_future(now + timedelta(minutes=6), now)
