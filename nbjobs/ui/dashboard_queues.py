"""The Overview's queue controls: pause a queue on every server, or resume it.

A person watching a queue of failing jobs (a bug in their code, an API down) holds it from the
dashboard instead of a terminal: `Engine.pause_queue` / `resume_queue`, as `nbjobs pause-queue` does.
The picker lists the queues the Overview shows (with jobs waiting, paused, or with a shared quota);
the buttons are absent on a read-only dashboard, and `authorize(action, queue)` is asked with the
action ("pause_queue" or "resume_queue") and the queue's name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import ipywidgets as w

from ..errors import NbJobsError
from .dashboard_model import QUEUE_ACTIONS

if TYPE_CHECKING:
    from .dashboard import Dashboard


class QueueControls:
    """A queue picker with Pause queue and Resume queue buttons."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.pick = w.Dropdown(options=(), description="Queue", layout=w.Layout(width="280px"))
        self.buttons: dict[str, w.Button] = {}
        if not dash.read_only:
            for action in QUEUE_ACTIONS:
                button = w.Button(description=action.replace("_", " ").capitalize(),
                                  icon="pause" if action == "pause_queue" else "play",
                                  layout=w.Layout(width="auto"))
                button.on_click(lambda _b, a=action: self.act(a))
                self.buttons[action] = button
        self.box = w.HBox([self.pick, *self.buttons.values()] if self.buttons else [])

    def show(self, queues: Iterable[str]) -> None:
        """The queues to pick from (the Overview's), keeping the one picked while it is listed."""
        names = tuple(sorted(set(queues)))
        if names != tuple(self.pick.options):
            keep = self.pick.value if self.pick.value in names else (names[0] if names else None)
            self.pick.options = names
            self.pick.value = keep

    def act(self, action: str) -> bool:
        """Pause or resume the picked queue through the engine."""
        queue = self.pick.value
        verb = action.split("_")[0]
        if queue is None:
            self.dash.set_status(f"pick a queue to {verb}", ok=False)
            return False
        if not self.dash.allowed(action, queue):
            self.dash.set_status(f"not allowed to {verb} queue {queue!r}", ok=False)
            return False
        try:
            changed = getattr(self.dash.engine, action)(queue)
        except NbJobsError as exc:
            self.dash.set_status(f"could not {verb} queue {queue!r}: {exc}", ok=False)
            return False
        self.dash.refresh()
        done = "paused: no server starts its jobs" if verb == "pause" else "resumed"
        already = "was paused already" if verb == "pause" else "was not paused"
        self.dash.set_status(f"queue {queue!r} {done if changed else already}")
        return bool(changed)
