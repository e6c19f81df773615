"""The dashboard's Recurring page: definitions with Trigger now, Pause, Resume and Remove.

Shown when the store can list recurring definitions; the actions appear when the engine offers
them (`trigger`, `pause`, `resume`, `remove_recurring`), so the page degrades to a read-only list
on an engine without them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..errors import NbJobsError
from . import dashboard_views as views
from .dashboard_model import RECURRING_ACTIONS

if TYPE_CHECKING:
    from .dashboard import Dashboard

log = logging.getLogger("nbjobs.ui")

#: Engine method behind each action.
METHODS = {"trigger": "trigger", "pause": "pause", "resume": "resume", "remove": "remove_recurring"}


class RecurringPage:
    """Table of definitions plus a picker and action buttons for one of them."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.available = callable(getattr(dash.store, "list_recurring", None))
        self.table = w.HTML()
        self.pick = w.Dropdown(options=(), description="Selected", layout=w.Layout(width="320px"))
        self.buttons: dict[str, w.Button] = {}
        if not dash.read_only:
            for action in RECURRING_ACTIONS:
                if callable(getattr(dash.engine, METHODS[action], None)):
                    b = w.Button(description="Trigger now" if action == "trigger" else action.capitalize(),
                                 button_style="danger" if action == "remove" else "",
                                 layout=w.Layout(width="auto"))
                    b.on_click(lambda _b, a=action: self.act(a))
                    self.buttons[action] = b
        controls: list[w.Widget] = [self.pick, *self.buttons.values()] if self.buttons else []
        self.box = w.VBox([w.HBox(controls), self.table] if controls else [self.table])

    def refresh(self) -> None:
        try:
            records = self.dash.store.list_recurring()
        except NotImplementedError:
            self.table.value = views.status("recurring jobs are not available with this store", ok=False)
            return
        self.table.value = views.recurring_table(records, self.dash.engine.clock.now())
        ids = tuple(r.id for r in records)
        if ids != tuple(self.pick.options):
            keep = self.pick.value if self.pick.value in ids else (ids[0] if ids else None)
            self.pick.options = ids
            self.pick.value = keep
        self._records = {r.id: r for r in records}

    def act(self, action: str) -> bool:
        """Run one recurring action on the picked definition through the engine."""
        rid = self.pick.value
        if rid is None:
            self.dash.set_status(f"pick a recurring job to {action}", ok=False)
            return False
        record: Any = getattr(self, "_records", {}).get(rid)
        if not self.dash.allowed(action, record if record is not None else rid):
            self.dash.set_status(f"not allowed to {action} recurring job {rid!r}", ok=False)
            return False
        try:
            result = getattr(self.dash.engine, METHODS[action])(rid)
        except NbJobsError as exc:
            self.dash.set_status(f"could not {action} recurring job {rid!r}: {exc}", ok=False)
            return False
        if result is False:  # remove_recurring: nothing to remove
            self.dash.refresh()
            self.dash.set_status(f"could not remove recurring job {rid!r}: it no longer exists", ok=False)
            return False
        self.dash.refresh()
        past = {"trigger": "triggered", "pause": "paused", "resume": "resumed", "remove": "removed"}[action]
        self.dash.set_status(f"{past} recurring job {rid!r}")
        return True
