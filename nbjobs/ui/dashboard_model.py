"""The dashboard's pure page model: paging, filters, columns and which actions a job allows.

No widgets and no database here, so paging and action rules are tested on plain values; the widget
layer (`dashboard`) asks this model what to read and what to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import states
from ..errors import ConfigurationError
from ..model import JobState
from ..storage import JobFilter

S = JobState
PAGE_SIZES = (10, 20, 50, 100)
#: Order of the state tabs, as in Hangfire.
STATE_ORDER = (S.ENQUEUED, S.SCHEDULED, S.PROCESSING, S.SUCCEEDED, S.FAILED, S.DELETED, S.AWAITING)
#: Everything a person can do from the dashboard; `authorize(action, target)` decides each one.
JOB_ACTIONS = ("requeue", "delete", "cancel")
RECURRING_ACTIONS = ("trigger", "pause", "resume", "remove")
QUEUE_ACTIONS = ("pause_queue", "resume_queue")
REASON = "from dashboard"
PAST = {"requeue": "requeued", "delete": "deleted", "cancel": "cancelled"}

#: Columns per state, after id and job: what a person looks for in that list.
STATE_COLUMNS: dict[JobState, tuple[str, ...]] = {
    S.ENQUEUED: ("queue", "priority", "enqueued"),
    S.SCHEDULED: ("queue", "due", "attempts"),
    S.AWAITING: ("queue", "parent", "created"),
    S.PROCESSING: ("queue", "server", "elapsed", "progress"),
    S.SUCCEEDED: ("queue", "finished", "duration", "latency"),
    S.FAILED: ("queue", "finished", "attempts", "exception"),
    S.DELETED: ("queue", "finished", "reason"),
}


def allowed_actions(state: JobState) -> tuple[str, ...]:
    """Actions that make sense for a job in `state` (the state machine decides, not the UI)."""
    out = []
    if state in states.sources(states.Event.REQUEUE):
        out.append("requeue")
    if state in states.sources(states.Event.DELETE) or state is S.PROCESSING:
        out.append("delete")
    if not state.is_final:
        out.append("cancel")
    return tuple(out)


@dataclass
class JobsPage:
    """One state's job list: filters and a keyset cursor stack (never OFFSET over a big table)."""

    state: JobState = S.ENQUEUED
    page_size: int = 20
    search: str = ""
    queue: str | None = None
    #: before_id of each page shown so far; the last one is the current page.
    cursors: list[int | None] = field(default_factory=lambda: [None])
    has_next: bool = False
    last_id: int | None = None

    def reset(self, **changes: Any) -> None:
        """Change filters (state, page_size, search, queue) and go back to the first page."""
        for name, value in changes.items():
            setattr(self, name, value)
        if "page_size" in changes and self.page_size not in PAGE_SIZES:
            raise ConfigurationError(f"page size must be one of {PAGE_SIZES}, got {self.page_size}")
        self.cursors = [None]
        self.has_next = False
        self.last_id = None

    @property
    def page(self) -> int:
        return len(self.cursors)

    def filter(self) -> JobFilter:
        """What to read for the current page: one row more than shown, to know whether a next exists."""
        return JobFilter(
            states=(self.state,),
            queues=(self.queue,) if self.queue else (),
            search=self.search.strip() or None,
            before_id=self.cursors[-1],
            limit=self.page_size + 1,
        )

    def accept(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Take the rows read for `filter()`; return the ones to show."""
        shown = list(rows[: self.page_size])
        self.has_next = len(rows) > self.page_size
        self.last_id = shown[-1]["id"] if shown else None
        return shown

    def next(self) -> bool:
        if not self.has_next or self.last_id is None:
            return False
        self.cursors.append(self.last_id)
        return True

    def previous(self) -> bool:
        if len(self.cursors) <= 1:
            return False
        self.cursors.pop()
        return True

    def pages(self, total: int | None) -> int | None:
        """Number of pages when the total is known (no search or queue filter), else None."""
        if total is None or self.search.strip() or self.queue:
            return None
        return max(1, -(-total // self.page_size))


@dataclass(frozen=True)
class ActionOutcome:
    """What one (bulk) action did, for the status line."""

    action: str
    done: tuple[int, ...] = ()
    refused: tuple[int, ...] = ()  #: not authorized
    failed: tuple[tuple[int, str], ...] = ()  #: (id, why)

    def message(self) -> str:
        parts = []
        past = PAST.get(self.action, self.action)
        if self.done:
            parts.append(f"{past} {_ids(self.done)}")
        if self.refused:
            parts.append(f"not allowed to {self.action} {_ids(self.refused)}")
        for job_id, why in self.failed:
            parts.append(f"could not {self.action} job {job_id}: {why}")
        return "; ".join(parts) or f"nothing to {self.action}"

    @property
    def ok(self) -> bool:
        return bool(self.done) and not self.refused and not self.failed


def _ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return f"job{'s' if len(ids) > 1 else ''} {shown}{more}"


def confirm_text(action: str, count: int) -> str:
    return f"{action.capitalize()} {count} job{'s' if count != 1 else ''}?"
