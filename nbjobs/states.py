"""The pure job state machine: which event may move a job from which states to which state.

Storage applies a transition as a compare-and-set (`UPDATE … WHERE state IN sources`), so the
sources here are also the guard that makes concurrent changes safe: zero rows updated is a lost race.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import IllegalTransitionError
from .model import FINAL_STATES, ContinueOn, JobState

S = JobState


class Event(enum.StrEnum):
    """Everything that can happen to a job."""

    PROMOTE = "promote"  #: a scheduled job is due
    RELEASE = "release"  #: a continuation's parent reached the required state
    CLAIM = "claim"  #: a server takes the job
    SUCCEED = "succeed"
    RETRY = "retry"  #: an attempt failed and another is scheduled
    FAIL = "fail"  #: an attempt failed and no attempt is left
    RETURN = "return"  #: a server gives the job back (shutdown, expired lease)
    CANCEL = "cancel"  #: a running job stopped on request
    REQUEUE = "requeue"  #: a person puts a job back in its queue now
    DELETE = "delete"  #: a person deletes a job (or a parent's failure deletes a continuation)


@dataclass(frozen=True)
class Transition:
    """Sources an event may start from, and the state it leads to."""

    sources: frozenset[JobState]
    target: JobState


TRANSITIONS: dict[Event, Transition] = {
    Event.PROMOTE: Transition(frozenset({S.SCHEDULED}), S.ENQUEUED),
    Event.RELEASE: Transition(frozenset({S.AWAITING}), S.ENQUEUED),
    Event.CLAIM: Transition(frozenset({S.ENQUEUED}), S.PROCESSING),
    Event.SUCCEED: Transition(frozenset({S.PROCESSING}), S.SUCCEEDED),
    Event.RETRY: Transition(frozenset({S.PROCESSING}), S.SCHEDULED),
    Event.FAIL: Transition(frozenset({S.PROCESSING}), S.FAILED),
    Event.RETURN: Transition(frozenset({S.PROCESSING}), S.ENQUEUED),
    Event.CANCEL: Transition(frozenset({S.PROCESSING}), S.DELETED),
    # Requeue: any job not held by a server goes to its queue now (finished, scheduled or awaiting).
    Event.REQUEUE: Transition(FINAL_STATES | {S.SCHEDULED, S.AWAITING}, S.ENQUEUED),
    # Delete: anything not running and not already deleted; running jobs are cancelled instead.
    Event.DELETE: Transition(
        frozenset({S.SCHEDULED, S.AWAITING, S.ENQUEUED, S.SUCCEEDED, S.FAILED}), S.DELETED
    ),
}


def sources(event: Event) -> frozenset[JobState]:
    """States from which `event` is legal."""
    return TRANSITIONS[event].sources


def target(event: Event) -> JobState:
    """The state `event` leads to."""
    return TRANSITIONS[event].target


def transition(current: JobState, event: Event) -> JobState:
    """Return the next state, or raise IllegalTransitionError naming what is allowed."""
    rule = TRANSITIONS[event]
    if current not in rule.sources:
        allowed = ", ".join(sorted(s.value for s in rule.sources))
        raise IllegalTransitionError(
            f"cannot {event.value} a job that is {current.value}; "
            f"{event.value} applies to jobs that are {allowed}"
        )
    return rule.target


def is_legal(current: JobState, event: Event) -> bool:
    return current in TRANSITIONS[event].sources


def continuation_state(continue_on: ContinueOn | str, parents: Iterable[JobState]) -> JobState | None:
    """What a continuation becomes given its parents' states: Enqueued (run it), Deleted (it can
    no longer run: a parent failed or was deleted while it waits for success, or every parent ended
    and none failed while it waits for a failure), or None (wait on)."""
    states = list(parents)
    on = ContinueOn(continue_on)
    if on is not ContinueOn.SUCCEEDED:
        if not all(s in FINAL_STATES for s in states):
            return None
        if on is ContinueOn.FAILED and S.FAILED not in states:
            return S.DELETED
        return S.ENQUEUED
    if any(s in (S.FAILED, S.DELETED) for s in states):
        return S.DELETED
    return S.ENQUEUED if all(s is S.SUCCEEDED for s in states) else None
