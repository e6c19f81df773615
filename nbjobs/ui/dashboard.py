"""The dashboard: Hangfire's pages as ipywidgets, refreshed by a background timer.

It reads through the store's listing methods (keyset pages, trigger-kept counters) and acts only
through the client, so every action is one of the client's guarded transitions with its history row
("from dashboard"). Pure pieces live in `dashboard_model` (paging, action rules) and
`dashboard_views` (HTML); the recurring page is in `dashboard_recurring`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..capture import as_shown
from ..errors import ConfigurationError, JobNotFoundError, NbJobsError
from ..model import JobRecord, JobState
from ..redact import DEFAULT_PATTERNS, Redactor
from ..storage import JobFilter
from . import dashboard_views as views
from .dashboard_detail import arguments_preview, result_preview
from .dashboard_model import (
    JOB_ACTIONS,
    PAGE_SIZES,
    REASON,
    STATE_ORDER,
    ActionOutcome,
    JobsPage,
    allowed_actions,
    confirm_text,
)

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("nbjobs.ui")

Authorize = Callable[[str, Any], bool]
INTERVALS = (("1 s", 1.0), ("2 s", 2.0), ("5 s", 5.0), ("10 s", 10.0), ("30 s", 30.0), ("60 s", 60.0))
OUTPUT_TAIL = 40  #: output chunks shown before "show all"
OUTPUT_ALL = 20_000  #: chunks read for "show all" (a bound, so one job cannot stall the page)
#: Overview chart ranges: (label, buckets, seconds per bucket, caption).
RANGES = {"hour": (60, 60.0, "per minute, last hour"), "day": (96, 900.0, "per 15 minutes, last day")}


class _Row:
    """One reusable list row: selection box, id button (opens the job) and the cells."""

    def __init__(self, dash: Dashboard) -> None:
        self.job_id: int | None = None
        self.check = w.Checkbox(value=False, indent=False, layout=w.Layout(width="26px", margin="2px 0"))
        self.open = w.Button(description="", tooltip="open job details",
                             layout=w.Layout(width="76px", height="26px", margin="1px 4px 0 0"))
        self.cells = w.HTML()
        self.box = w.HBox([self.check, self.open, self.cells], layout=w.Layout(align_items="flex-start"))
        self.check.observe(lambda ch: dash._on_check(self, ch["new"]), names="value")
        self.open.on_click(lambda _b: self.job_id is not None and dash.open_job(self.job_id))
        if dash.read_only:
            self.check.layout.visibility = "hidden"

    def show(self, row: dict[str, Any] | None, state: JobState, selected: bool, now: Any) -> None:
        if row is None:
            self.job_id = None
            self.box.layout.display = "none"
            return
        self.job_id = int(row["id"])
        self.open.description = f"#{self.job_id}"
        self.check.value = selected
        self.cells.value = views.list_row(row, state, now)
        self.box.layout.display = None


def _check_settings(refresh: float | None, authorize: Authorize | None) -> None:
    """Refuse settings that would misbehave later: a negative refresh spun the timer in a tight loop."""
    if refresh is not None and (isinstance(refresh, bool) or not isinstance(refresh, int | float)
                                or not (refresh == 0 or 0 < refresh < math.inf)):
        raise ConfigurationError(
            f"refresh must be a number of seconds > 0 (e.g. 2), or 0 or None for no timer; got {refresh!r}"
        )
    if authorize is not None and not callable(authorize):
        raise ConfigurationError(
            f"authorize must be a function (action, job) -> bool, or None; got {authorize!r} "
            "(read_only=True hides every action)"
        )


class Dashboard(w.VBox):  # type: ignore[misc]  # ipywidgets ships no type hints
    """`engine.dashboard()`: Overview, Jobs, Job, Recurring, Servers and Retries pages."""

    def __init__(
        self,
        engine: Engine,
        *,
        read_only: bool = False,
        authorize: Authorize | None = None,
        refresh: float | None = 2.0,
        redact: Iterable[str] = DEFAULT_PATTERNS,
        page_size: int = 20,
    ) -> None:
        # Settings are checked before the widget exists, which then needs no closing.
        _check_settings(refresh, authorize)
        redactor = Redactor(redact)
        page = JobsPage()
        page.reset(page_size=page_size)
        super().__init__()
        self.engine = engine
        self.store = engine.store
        self.read_only = read_only
        self.authorize = authorize
        self.redactor = redactor
        self.page = page
        self.selected: set[int] = set()
        self.detail_id: int | None = None
        self.last_refresh_ms = 0.0
        self.refreshes = 0  #: completed refreshes (tests and the status bar watch it)
        self._refresh_failed = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        # The thread that is setting checkbox values during a refresh: its changes are not user
        # selections (a click handled meanwhile on the kernel's thread still is).
        self._filling: int | None = None
        self._args_cache: dict[int, list[tuple[str, str]] | str] = {}
        self._pending: tuple[str, list[int]] | None = None
        self._build()
        # Count frontend views (an ipywidgets feature that is off by default): once shown and then
        # no longer on screen (output cleared, cell re-run) the timer reads nothing.
        self._was_shown = False
        self._view_count = 0
        self.observe(self._on_views, names="_view_count")
        self.interval = float(refresh or 2.0)
        if self.interval not in dict(INTERVALS).values():
            self.interval_pick.options = (*INTERVALS, (f"{self.interval:g} s", self.interval))
        self.interval_pick.value = self.interval
        self.refresh()
        self._thread: threading.Thread | None = None
        if refresh:
            self._thread = threading.Thread(target=self._run, name="nbjobs-dashboard", daemon=True)
            self._thread.start()

    # -- layout ---------------------------------------------------------------------------------
    def _build(self) -> None:
        from .dashboard_queues import QueueControls
        from .dashboard_recurring import RecurringPage

        self.header = w.HTML(views.STYLE + views.title(self.engine.url))
        self.interval_pick = w.Dropdown(options=INTERVALS, value=2.0, description="Refresh",
                                        layout=w.Layout(width="160px"))
        self.pause = w.ToggleButton(value=False, description="Pause", icon="pause",
                                    tooltip="stop refreshing", layout=w.Layout(width="90px"))
        self.refresh_now = w.Button(description="Refresh", icon="refresh", layout=w.Layout(width="100px"))
        self.clock_label = w.HTML(layout=w.Layout(flex="0 0 auto"))
        self.status = w.HTML()
        self.interval_pick.observe(self._on_interval, names="value")
        self.pause.observe(lambda ch: setattr(self.pause, "icon", "play" if ch["new"] else "pause"),
                           names="value")
        self.refresh_now.on_click(lambda _b: self.refresh())

        self.chart_range = w.ToggleButtons(options=[("Last hour", "hour"), ("Last day", "day")], value="hour",
                                           style={"button_width": "90px"})
        self.chart_range.observe(lambda _ch: self.refresh(), names="value")
        self.overview_html = w.HTML()
        self.activity_html = w.HTML()
        self.queue_controls = QueueControls(self)
        self.overview = w.VBox([self.overview_html, self.chart_range, self.activity_html,
                                self.queue_controls.box])
        self.jobs_page = self._build_jobs()
        self.detail_page = self._build_detail()
        self.recurring = RecurringPage(self)
        self.servers = w.HTML()
        self.retries = w.HTML()
        pages: list[tuple[str, w.Widget]] = [("Overview", self.overview), ("Jobs", self.jobs_page),
                                             ("Job", self.detail_page)]
        if self.recurring.available:
            pages.append(("Recurring", self.recurring.box))
        pages += [("Servers", self.servers), ("Retries", self.retries)]
        self.page_names = [name for name, _ in pages]
        self.tabs = w.Tab(children=[p for _, p in pages])
        self.tabs.titles = tuple(self.page_names)
        self.tabs.observe(lambda _ch: self.refresh(), names="selected_index")
        bar = w.HBox([self.header, self.clock_label, w.Box(layout=w.Layout(flex="1 1 auto")),
                      self.interval_pick, self.pause, self.refresh_now],
                     layout=w.Layout(align_items="center"))
        self.children = (bar, self.tabs, self.status)
        self.add_class("nbjobs-dashboard")

    def _build_jobs(self) -> w.VBox:
        self.state_buttons = {
            s: w.Button(description=s.value.capitalize(), layout=w.Layout(width="auto"))
            for s in STATE_ORDER
        }
        for s, b in self.state_buttons.items():
            b.on_click(lambda _b, s=s: self.show_state(s))
        self.search = w.Text(placeholder="search function, name or id", continuous_update=False,
                             layout=w.Layout(width="260px"))
        self.queue = w.Combobox(placeholder="all queues", ensure_option=False, continuous_update=False,
                                layout=w.Layout(width="160px"))
        self.size = w.Dropdown(options=PAGE_SIZES, value=self.page.page_size, description="Per page",
                               layout=w.Layout(width="150px"))
        self.search.observe(lambda ch: self._refilter(search=ch["new"]), names="value")
        self.queue.observe(lambda ch: self._refilter(queue=ch["new"].strip() or None), names="value")
        self.size.observe(lambda ch: self._refilter(page_size=ch["new"]), names="value")
        self.prev = w.Button(description="\u2039 Newer", layout=w.Layout(width="90px"))
        self.next = w.Button(description="Older \u203a", layout=w.Layout(width="90px"))
        self.page_label = w.HTML()
        self.prev.on_click(lambda _b: self._turn(self.page.previous()))
        self.next.on_click(lambda _b: self._turn(self.page.next()))
        self.list_head = w.HTML()
        # Spacers with the row widgets' own layouts, so header cells line up with row cells.
        head_row = w.HBox([w.HTML(layout=w.Layout(width="26px", margin="2px 0")),
                           w.HTML(layout=w.Layout(width="76px", margin="1px 4px 0 0")), self.list_head])
        self.rows: list[_Row] = []  # created on the first visit, so opening the dashboard stays quick
        self.rows_box = w.VBox()
        controls: list[w.Widget] = [self.search, self.queue, self.size]
        parts: list[w.Widget] = [w.HBox(list(self.state_buttons.values())), w.HBox(controls)]
        if not self.read_only:
            self.select_all = w.Checkbox(value=False, description="select page", indent=False,
                                         layout=w.Layout(width="110px"))
            self.select_all.observe(self._on_select_all, names="value")
            self.bulk = {a: w.Button(description=f"{a.capitalize()} selected",
                                     button_style="danger" if a != "requeue" else "warning",
                                     layout=w.Layout(width="auto")) for a in JOB_ACTIONS}
            for action, b in self.bulk.items():
                b.on_click(lambda _b, a=action: self.ask(a, sorted(self.selected)))
            self.confirm_text = w.HTML()
            self.confirm_yes = w.Button(description="Confirm", button_style="danger")
            self.confirm_no = w.Button(description="Keep")
            self.confirm_yes.on_click(lambda _b: self.confirm())
            self.confirm_no.on_click(lambda _b: self._ask_done("nothing changed"))
            self.confirm_box = w.HBox([self.confirm_text, self.confirm_yes, self.confirm_no],
                                      layout=w.Layout(display="none"))
            parts.append(w.HBox([self.select_all, *self.bulk.values()]))
            parts.append(self.confirm_box)
        parts += [head_row, self.rows_box, w.HBox([self.prev, self.page_label, self.next])]
        return w.VBox(parts)

    def _build_detail(self) -> w.VBox:
        self.job_id_box = w.Text(placeholder="job id", continuous_update=False,
                                 layout=w.Layout(width="140px"))
        self.job_open = w.Button(description="Open", layout=w.Layout(width="80px"))
        self.job_open.on_click(lambda _b: self._open_typed())
        self.job_id_box.observe(lambda _ch: self._open_typed(), names="value")
        self.show_all = w.ToggleButton(value=False, description="Show all output",
                                       layout=w.Layout(width="150px"))
        self.show_all.observe(lambda _ch: self.refresh(), names="value")
        self.job_actions: dict[str, w.Button] = {}
        if not self.read_only:
            for action in JOB_ACTIONS:
                b = w.Button(description=action.capitalize(),
                             button_style="warning" if action == "requeue" else "danger",
                             layout=w.Layout(width="90px"))
                b.on_click(lambda _b, a=action: self.detail_id is not None and self.act(a, [self.detail_id]))
                self.job_actions[action] = b
        self.detail_html = w.HTML('<div class="nbjobs-dash nbjobs-muted">Click a job id in Jobs, '
                                  "or type one above.</div>")
        top = w.HBox([self.job_id_box, self.job_open, *self.job_actions.values(), self.show_all])
        return w.VBox([top, self.detail_html])

    # -- refresh --------------------------------------------------------------------------------
    @property
    def visible(self) -> str:
        index = self.tabs.selected_index or 0
        return self.page_names[index]

    def show(self, page: str) -> None:
        """Switch to a page by name (as a click on its tab would)."""
        self.tabs.selected_index = self.page_names.index(page)

    def refresh(self) -> None:
        """Re-read what the visible page shows, and nothing else."""
        started = time.perf_counter()
        with self._lock:
            try:
                getattr(self, f"_refresh_{self.visible.lower()}")()
            except Exception as exc:
                log.warning("dashboard refresh failed: %s", exc, exc_info=True)
                self.set_status(f"refresh failed: {exc}", ok=False)
                self._refresh_failed = True
            else:
                if self._refresh_failed:  # the database is back: drop the stale error
                    self._refresh_failed = False
                    self.set_status("")
            self.last_refresh_ms = (time.perf_counter() - started) * 1000
            self.refreshes += 1
            now = self.engine.clock.now()
            self.clock_label.value = (f'<span class="nbjobs-muted" style="white-space:nowrap">'
                                      f"{now:%H:%M:%S} UTC · {self.last_refresh_ms:.0f} ms</span>")

    def _refresh_overview(self) -> None:
        buckets, width, caption = RANGES[self.chart_range.value]
        since = self.engine.clock.now() - timedelta(seconds=buckets * width)
        self.overview_html.value = views.overview_tiles(self.store.counts(), len(self.store.list_servers()))
        lengths, paused = self.store.queue_lengths(), self.store.paused_queues()
        quotas = self.store.queue_quotas()
        self.activity_html.value = views.overview_activity(
            lengths, self.store.finished_histogram(since, width), buckets, caption, paused=paused,
            quotas=quotas)
        self.queue_controls.show([*lengths, *paused, *quotas])

    def _refresh_jobs(self) -> None:
        counts = self.store.counts()
        for s, b in self.state_buttons.items():
            b.description = views.state_label(s, counts.get(s, 0))
            b.button_style = "primary" if s is self.page.state else ""
        rows = self.page.accept(self.store.query(self.page.filter()))
        while len(self.rows) < self.page.page_size:
            self.rows.append(_Row(self))
        self.rows_box.children = tuple(r.box for r in self.rows[: self.page.page_size])
        now = self.engine.clock.now()
        self.list_head.value = views.list_header(self.page.state)
        self._filling = threading.get_ident()
        try:
            for i, row in enumerate(self.rows):
                row.show(rows[i] if i < len(rows) else None, self.page.state,
                         i < len(rows) and int(rows[i]["id"]) in self.selected, now)
        finally:
            self._filling = None
        if not rows:
            self.list_head.value += ('<div class="nbjobs-dash nbjobs-muted" style="padding:6px 8px">'
                                     f"no {self.page.state.value} jobs</div>")
        pages = self.page.pages(counts.get(self.page.state, 0))
        self.page_label.value = (f'<span style="padding:0 10px">page {self.page.page}'
                                 f"{f' of {pages:,}' if pages else ''}</span>")
        self.prev.disabled = self.page.page <= 1
        self.next.disabled = not self.page.has_next
        if self.queue.options == () or self.page.page == 1:
            queues = sorted(set(self.store.queue_lengths()) | {"default"})
            if tuple(queues) != tuple(self.queue.options):
                self.queue.options = tuple(queues)

    def _refresh_job(self) -> None:
        record = None if self.detail_id is None else self.store.get(self.detail_id)
        allowed = () if record is None else allowed_actions(record.state)
        for action, b in self.job_actions.items():  # set once, so buttons do not flicker per refresh
            b.disabled = action not in allowed
        if record is None:
            if self.detail_id is not None:
                self.detail_html.value = views.status(str(JobNotFoundError.of(self.detail_id)), ok=False)
            return
        tail = None if self.show_all.value else OUTPUT_TAIL
        chunks = self.store.read_logs(record.id, tail=tail if tail is not None else OUTPUT_ALL)
        children = self.store.query(JobFilter(parent_id=record.id, limit=50, newest_first=False))
        self.detail_html.value = views.detail(
            record, self.engine.clock.now(),
            arguments=arguments_preview(self.engine.codec, self.redactor, record, self._args_cache),
            history=self.store.history(record.id), output=as_shown("".join(t for _, _, t in chunks)),
            output_truncated=tail is not None and len(chunks) >= tail,
            result=result_preview(self.engine.codec, self.redactor, record),
            children=children,
            parents=() if record.parent_id else self.store.parents(record.id),
            lock_holder=self._lock_holder(record),
        )

    def _lock_holder(self, record: JobRecord) -> int | None:
        """The Processing job holding this job's lock (for a job waiting for it), if any."""
        lock = record.options.lock
        if lock is None or record.state is JobState.PROCESSING:
            return None
        holders = self.store.query(JobFilter(lock=lock, states=(JobState.PROCESSING,), limit=1))
        return int(holders[0]["id"]) if holders else None

    def _refresh_recurring(self) -> None:
        self.recurring.refresh()

    def _refresh_servers(self) -> None:
        self.servers.value = views.servers_table(
            self.store.list_servers(), self.store.running_by_server(), self.engine.clock.now())

    def _refresh_retries(self) -> None:
        rows = self.store.query(JobFilter(states=(JobState.SCHEDULED,), min_attempts=1, limit=100))
        self.retries.value = views.retries_table(rows, self.engine.clock.now())

    # -- timer ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set() or getattr(self.engine, "_closed", False):
                break
            if not self.pause.value and self.on_screen:
                self.refresh()

    def _on_interval(self, change: dict[str, Any]) -> None:
        self.interval = float(change["new"])
        self._wake.set()

    def _on_views(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self._was_shown = True
            self._wake.set()  # back on screen: refresh now

    @property
    def on_screen(self) -> bool:
        """False once every view that showed the dashboard is gone (never shown counts as on screen,
        so scripts and tests without a frontend still refresh)."""
        return not self._was_shown or bool(self._view_count)

    @property
    def refreshing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the timer and close the widgets (also what the frontend's close does)."""
        if "_stop" not in self.__dict__:  # refused settings: never built (the collector calls this too)
            return
        self._stop.set()
        self._wake.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        super().close()

    # -- selection and navigation ---------------------------------------------------------------
    def show_state(self, state: JobState | str) -> None:
        """Show the Jobs page listing jobs in `state`."""
        if self.visible != "Jobs":
            self.page.reset(state=JobState.parse(state))
            self.show("Jobs")
        else:
            self._refilter(state=JobState.parse(state))

    def _refilter(self, **changes: Any) -> None:
        self.page.reset(**changes)
        self.selected.clear()
        if not self.read_only:
            self.select_all.value = False
        self.refresh()

    def _turn(self, moved: bool) -> None:
        if moved:
            self.refresh()

    def _on_check(self, row: _Row, value: bool) -> None:
        if self._filling == threading.get_ident() or row.job_id is None:
            return
        (self.selected.add if value else self.selected.discard)(row.job_id)

    def _on_select_all(self, change: dict[str, Any]) -> None:
        for row in self.rows:
            if row.job_id is not None:
                row.check.value = bool(change["new"])

    def open_job(self, job_id: int) -> None:
        self.detail_id = int(job_id)
        self.job_id_box.value = str(job_id)
        if self.visible == "Job":
            self.refresh()
        else:
            self.show("Job")

    def _open_typed(self) -> None:
        text = self.job_id_box.value.strip().lstrip("#")
        if not text.isdigit():
            self.set_status(f"{text!r} is not a job id; type a number such as 42", ok=False)
            return
        if int(text) != self.detail_id or self.visible != "Job":
            self.open_job(int(text))

    # -- actions --------------------------------------------------------------------------------
    def set_status(self, message: str, ok: bool = True) -> None:
        self.status.value = views.status(message, ok)

    def allowed(self, action: str, target: Any) -> bool:
        """Whether the person may do `action` on `target` (a JobRecord, a recurring record, or a
        queue's name for "pause_queue" / "resume_queue")."""
        if self.read_only:
            return False
        if self.authorize is None:
            return True
        try:
            return bool(self.authorize(action, target))
        except Exception:
            log.warning("authorize(%r) raised; refusing", action, exc_info=True)
            return False

    def ask(self, action: str, job_ids: list[int]) -> None:
        """Bulk action, step 1: show how many jobs it would touch and wait for Confirm."""
        if not job_ids:
            self.set_status(f"select jobs to {action} first (tick their boxes)", ok=False)
            return
        self._pending = (action, job_ids)
        question = confirm_text(action, len(job_ids))
        self.confirm_text.value = f'<div class="nbjobs-dash" style="padding:4px 8px"><b>{question}</b></div>'
        self.confirm_box.layout.display = None

    def confirm(self) -> None:
        """Bulk action, step 2."""
        pending, self._pending = self._pending, None
        self.confirm_box.layout.display = "none"
        if pending is not None:
            self.act(*pending)

    def _ask_done(self, message: str) -> None:
        self._pending = None
        self.confirm_box.layout.display = "none"
        self.set_status(message)

    def act(self, action: str, job_ids: list[int]) -> ActionOutcome:
        """Requeue, delete or cancel jobs through the client; each one is authorized on its own."""
        if action not in JOB_ACTIONS:
            raise ValueError(f"unknown action {action!r}; use one of {JOB_ACTIONS}")
        done: list[int] = []
        refused: list[int] = []
        failed: list[tuple[int, str]] = []
        client = self.engine.client
        with self._lock:
            for job_id in job_ids:
                record = self.store.get(job_id)
                if record is None:
                    failed.append((job_id, "it no longer exists (deleted or expired meanwhile)"))
                    continue
                if not self.allowed(action, record):
                    refused.append(job_id)
                    continue
                try:
                    getattr(client, action)(job_id, reason=REASON)
                except NbJobsError as exc:
                    failed.append((job_id, str(exc)))
                else:
                    done.append(job_id)
            outcome = ActionOutcome(action, tuple(done), tuple(refused), tuple(failed))
            self.selected.difference_update(done)
            self.refresh()
            self.set_status(outcome.message(), outcome.ok)
        return outcome
