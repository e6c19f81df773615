import pytest

from nbjobs.errors import IllegalTransitionError, UnknownStateError
from nbjobs.model import FINAL_STATES, JobState
from nbjobs.states import TRANSITIONS, Event, is_legal, transition

S = JobState


@pytest.mark.parametrize(
    ("current", "event", "expected"),
    [
        (S.SCHEDULED, Event.PROMOTE, S.ENQUEUED),
        (S.AWAITING, Event.RELEASE, S.ENQUEUED),
        (S.ENQUEUED, Event.CLAIM, S.PROCESSING),
        (S.PROCESSING, Event.SUCCEED, S.SUCCEEDED),
        (S.PROCESSING, Event.RETRY, S.SCHEDULED),
        (S.PROCESSING, Event.FAIL, S.FAILED),
        (S.PROCESSING, Event.RETURN, S.ENQUEUED),
        (S.PROCESSING, Event.CANCEL, S.DELETED),
        (S.FAILED, Event.REQUEUE, S.ENQUEUED),
        (S.SUCCEEDED, Event.REQUEUE, S.ENQUEUED),
        (S.DELETED, Event.REQUEUE, S.ENQUEUED),
        (S.ENQUEUED, Event.DELETE, S.DELETED),
    ],
)
def test_legal_transitions(current: JobState, event: Event, expected: JobState) -> None:
    assert transition(current, event) is expected


def test_running_job_cannot_be_requeued_or_deleted_directly() -> None:
    with pytest.raises(IllegalTransitionError, match="requeue applies to jobs that are"):
        transition(S.PROCESSING, Event.REQUEUE)
    assert not is_legal(S.PROCESSING, Event.DELETE)


def test_claim_only_from_enqueued() -> None:
    for state in JobState:
        assert is_legal(state, Event.CLAIM) == (state is S.ENQUEUED)


def test_every_final_state_can_be_requeued_and_no_event_leaves_deleted_but_requeue() -> None:
    for state in FINAL_STATES:
        assert is_legal(state, Event.REQUEUE)
    leaving_deleted = {e for e, t in TRANSITIONS.items() if S.DELETED in t.sources}
    assert leaving_deleted == {Event.REQUEUE}


def test_state_parse() -> None:
    assert JobState.parse("Failed") is S.FAILED
    with pytest.raises(UnknownStateError, match="use one of: scheduled"):
        JobState.parse("done")


def test_a_continuation_of_several_jobs_waits_for_all_and_any_failure_deletes_it() -> None:
    from nbjobs.model import ContinueOn
    from nbjobs.states import continuation_state

    ok, on_all = ContinueOn.SUCCEEDED, ContinueOn.FINISHED
    assert continuation_state(ok, [S.SUCCEEDED, S.SUCCEEDED]) is S.ENQUEUED
    assert continuation_state(ok, [S.SUCCEEDED, S.PROCESSING]) is None
    assert continuation_state(ok, [S.PROCESSING, S.FAILED]) is S.DELETED  # no need to wait
    assert continuation_state(ok, [S.DELETED, S.ENQUEUED]) is S.DELETED
    assert continuation_state(on_all, [S.SUCCEEDED, S.FAILED, S.DELETED]) is S.ENQUEUED
    assert continuation_state(on_all, [S.FAILED, S.SCHEDULED]) is None  # a retry is still to come
    assert continuation_state("finished", [S.SUCCEEDED]) is S.ENQUEUED
    assert continuation_state(ok, []) is S.ENQUEUED  # every parent pruned after succeeding


def test_a_failure_handler_runs_once_its_parents_ended_with_a_failure_and_is_deleted_without_one() -> None:
    from nbjobs.model import ContinueOn
    from nbjobs.states import continuation_state

    on_failure = ContinueOn.FAILED
    assert continuation_state(on_failure, [S.FAILED]) is S.ENQUEUED
    assert continuation_state(on_failure, [S.SUCCEEDED]) is S.DELETED
    assert continuation_state(on_failure, [S.DELETED]) is S.DELETED  # a person deleted it: no failure
    assert continuation_state(on_failure, [S.SCHEDULED]) is None  # failed an attempt: a retry is to come
    assert continuation_state(on_failure, [S.FAILED, S.PROCESSING]) is None  # all of them, then
    assert continuation_state(on_failure, [S.SUCCEEDED, S.FAILED, S.DELETED]) is S.ENQUEUED
    assert continuation_state("failed", [S.SUCCEEDED, S.SUCCEEDED]) is S.DELETED
