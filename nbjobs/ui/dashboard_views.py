"""HTML for the dashboard: pure functions from plain values to markup, themed with JupyterLab's CSS
variables (with fallbacks, so the page also reads well in Voilà and in light or dark themes)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..model import JobRecord, JobState, ServerInfo, StateChange
from .dashboard_model import STATE_COLUMNS, STATE_ORDER

S = JobState
#: Mid-tone colours that keep white text readable on light and dark backgrounds.
COLORS: dict[JobState, str] = {
    S.ENQUEUED: "#2f6fd6", S.SCHEDULED: "#7c4dbd", S.AWAITING: "#6b7785", S.PROCESSING: "#d9771b",
    S.SUCCEEDED: "#25884a", S.FAILED: "#cf3b3b", S.DELETED: "#555d66",
}
#: Width in px of each list column, shared by the header and every row so they line up.
WIDTHS = {
    "job": 300, "queue": 90, "priority": 60, "enqueued": 110, "due": 110, "attempts": 70, "parent": 80,
    "created": 110, "server": 150, "elapsed": 90, "progress": 170, "finished": 110, "duration": 90,
    "latency": 90, "exception": 380,
}
TITLES = {"job": "Job", "due": "Due", "exception": "Exception", "parent": "Parent"}
NONE = "\u2013"  #: shown for a missing value  #: checkbox + id button in front of each row

STYLE = """<style>
.nbjobs-dash { font-family: var(--jp-ui-font-family, system-ui, -apple-system, sans-serif);
  font-size: var(--jp-ui-font-size1, 13px); color: var(--jp-ui-font-color1, #1f2328); }
.nbjobs-dash table.nbjobs-table { border-collapse: collapse; table-layout: fixed; margin: 0; }
.nbjobs-dash table.nbjobs-table.nbjobs-wide { width: 100%; }
.nbjobs-dash table.nbjobs-table th { text-align: left; font-weight: 600; padding: 5px 8px;
  color: var(--jp-ui-font-color2, #57606a); background: var(--jp-layout-color2, #f3f4f6);
  border-bottom: 2px solid var(--jp-border-color1, #c8ccd0); }
.nbjobs-dash table.nbjobs-table td { padding: 4px 8px; vertical-align: top; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap;
  border-bottom: 1px solid var(--jp-border-color2, #e3e6e8); }
.nbjobs-dash table.nbjobs-table tr:hover td { background: var(--jp-layout-color2, #f6f8fa); }
.nbjobs-dash table.nbjobs-kv td:first-child { color: var(--jp-ui-font-color2, #57606a); width: 130px; }
.nbjobs-dash table.nbjobs-kv td { white-space: normal; word-break: break-word; }
.nbjobs-badge { display: inline-block; padding: 1px 9px; border-radius: 10px; color: #fff;
  font-size: 11px; font-weight: 600; letter-spacing: .02em; }
.nbjobs-muted { color: var(--jp-ui-font-color2, #6e7781); font-size: 11px; }
.nbjobs-err { color: var(--jp-error-color1, #cf3b3b); }
.nbjobs-bar { display: inline-block; width: 100px; height: 8px; border-radius: 4px; vertical-align: middle;
  background: var(--jp-layout-color3, #d0d7de); overflow: hidden; margin-right: 6px; }
.nbjobs-bar > span { display: block; height: 100%; background: #2f6fd6; }
.nbjobs-tiles { display: flex; flex-wrap: wrap; gap: 8px; margin: 4px 0 10px 0; }
.nbjobs-tile { min-width: 104px; padding: 8px 12px; border-radius: 6px; border-left: 5px solid;
  background: var(--jp-layout-color2, #f3f4f6); }
.nbjobs-tile b { display: block; font-size: 20px; font-weight: 600; }
.nbjobs-dash h4 { margin: 10px 0 4px 0; font-size: var(--jp-ui-font-size2, 15px); font-weight: 600; }
.nbjobs-dash pre.nbjobs-pre { background: var(--jp-layout-color2, #f6f8fa);
  color: var(--jp-content-font-color1, #1f2328); border: 1px solid var(--jp-border-color2, #e3e6e8);
  padding: 8px; max-height: 320px; overflow: auto; font-size: 12px; white-space: pre-wrap; margin: 0; }
.nbjobs-status { padding: 2px 4px; }
.nbjobs-status.ok { color: var(--jp-success-color1, #25884a); }
.nbjobs-status.error { color: var(--jp-error-color1, #cf3b3b); }
.nbjobs-chart rect.s { fill: #25884a; } .nbjobs-chart rect.f { fill: #cf3b3b; }
.nbjobs-chart text { fill: var(--jp-ui-font-color2, #6e7781); font-size: 10px; }
.nbjobs-chart line { stroke: var(--jp-border-color1, #c8ccd0); }
</style>"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def title(url: str) -> str:
    """The header: the database without its password, long paths shortened (full on hover)."""
    try:
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:
        shown = "(database)"
    short = shown if len(shown) <= 60 else shown[:24] + "\u2026" + shown[-34:]
    return (f'<div class="nbjobs-dash" style="white-space:nowrap"><b>nbjobs</b> '
            f'<span class="nbjobs-muted" title="{esc(shown)}">{esc(short)}</span></div>')


def badge(state: JobState | str | None) -> str:
    if state is None:
        return '<span class="nbjobs-muted">\u2013</span>'
    st = JobState(state)
    return (f'<span class="nbjobs-badge nbjobs-state-{st.value}" style="background:{COLORS[st]}">'
            f"{esc(st.value)}</span>")


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "\u2013"
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {sec:02d}s"
    return f"{hours // 24}d {hours % 24}h"


def when(at: datetime | None, now: datetime) -> str:
    """Relative time with the exact UTC time on hover."""
    if at is None:
        return '<span class="nbjobs-muted">\u2013</span>'
    delta = (at - now).total_seconds()
    text = f"in {seconds_text(delta)}" if delta > 0.5 else f"{seconds_text(delta)} ago"
    return f'<span title="{at.strftime("%Y-%m-%d %H:%M:%S UTC")}">{esc(text)}</span>'


def exact(at: datetime | None, now: datetime) -> str:
    """Absolute UTC time (the date only when not today): the Job page uses it so its HTML stays
    byte-identical between refreshes of an unchanged job, which keeps the browser from replacing
    the DOM (and dropping a user's text selection in a traceback) every refresh."""
    if at is None:
        return '<span class="nbjobs-muted">\u2013</span>'
    full = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    text = at.strftime("%H:%M:%S UTC") if at.date() == now.date() else full
    return f'<span title="{full}">{esc(text)}</span>'


def span(start: datetime | None, end: datetime | None) -> str:
    return esc(seconds_text((end - start).total_seconds())) if start and end else "\u2013"


def progress_bar(fraction: float | None, message: str | None = None) -> str:
    if fraction is None:
        return f'<span class="nbjobs-muted">{esc(message) or NONE}</span>'
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<span class="nbjobs-bar"><span style="width:{pct:.0f}%"></span></span>{pct:.0f}%'
            + (f' <span class="nbjobs-muted">{esc(message)}</span>' if message else ""))


def job_label(row: Mapping[str, Any]) -> str:
    name, function = row.get("name"), row.get("function", "")
    short = str(function).split(":")[-1]
    if name:
        return f'<b title="{esc(function)}">{esc(name)}</b> <span class="nbjobs-muted">{esc(short)}</span>'
    return f'<span title="{esc(function)}">{esc(function)}</span>'


def cell(row: Mapping[str, Any], column: str, now: datetime) -> str:
    """One list cell for a row of `Store.query`."""
    if column == "job":
        return job_label(row)
    if column in ("queue", "priority", "attempts"):
        return esc(row.get(column))
    if column == "enqueued":
        return when(row.get("enqueued_at"), now)
    if column == "created":
        return when(row.get("created_at"), now)
    if column == "due":
        return when(row.get("run_at"), now)
    if column == "finished":
        return when(row.get("finished_at"), now)
    if column == "parent":
        return f"#{esc(row['parent_id'])}" if row.get("parent_id") else "\u2013"
    if column == "server":
        return esc(row.get("server_id") or "\u2013")
    if column == "elapsed":
        return span(row.get("started_at"), now)
    if column == "progress":
        return progress_bar(row.get("progress"), row.get("progress_message"))
    if column == "duration":
        return span(row.get("started_at"), row.get("finished_at"))
    if column == "latency":
        return span(row.get("enqueued_at") or row.get("created_at"), row.get("started_at"))
    if column == "exception":
        kind, message = row.get("error_type"), row.get("error_message") or ""
        if not kind:
            return "\u2013"
        return (f'<span class="nbjobs-err" title="{esc(message[:500])}"><b>{esc(kind)}</b> '
                f"{esc(message.splitlines()[0][:200] if message else '')}</span>")
    raise KeyError(f"unknown column {column!r}")


def _colgroup(columns: Sequence[str]) -> str:
    return "<colgroup>" + "".join(f'<col style="width:{WIDTHS[c]}px">' for c in columns) + "</colgroup>"


def list_header(state: JobState) -> str:
    columns = ("job", *STATE_COLUMNS[state])
    heads = "".join(f"<th>{esc(TITLES.get(c, c.capitalize()))}</th>" for c in columns)
    return ('<div class="nbjobs-dash"><table '
            f'class="nbjobs-table nbjobs-list-head">{_colgroup(columns)}<tr>{heads}</tr></table></div>')


def list_row(row: Mapping[str, Any], state: JobState, now: datetime) -> str:
    columns = ("job", *STATE_COLUMNS[state])
    cells = "".join(f"<td>{cell(row, c, now)}</td>" for c in columns)
    return (f'<div class="nbjobs-dash"><table class="nbjobs-table nbjobs-row" data-job="{esc(row["id"])}">'
            f"{_colgroup(columns)}<tr>{cells}</tr></table></div>")


def state_label(state: JobState, count: int) -> str:
    return f"{state.value.capitalize()} ({count:,})"


# -- overview -----------------------------------------------------------------------------------


def overview_tiles(counts: Mapping[JobState, int], servers: int) -> str:
    """One coloured tile per state, plus the servers up."""
    tiles = "".join(
        f'<div class="nbjobs-tile" style="border-left-color:{COLORS[s]}">'
        f'<span class="nbjobs-muted">{esc(s.value.capitalize())}</span><b>{counts.get(s, 0):,}</b></div>'
        for s in STATE_ORDER
    )
    tiles += ('<div class="nbjobs-tile" style="border-left-color:#8a939c">'
              f'<span class="nbjobs-muted">Servers up</span><b>{servers}</b></div>')
    return f'<div class="nbjobs-dash"><div class="nbjobs-tiles">{tiles}</div></div>'


def overview_activity(
    queues: Mapping[str, int],
    histogram: Mapping[tuple[JobState, int], int],
    buckets: int,
    bucket_label: str,
    paused: Mapping[str, datetime] | None = None,
    quotas: Mapping[str, Any] | None = None,
) -> str:
    """The succeeded/failed chart and the queue lengths (a paused queue says so, and a queue with
    shared quotas its rate and most running, even when empty)."""
    paused, quotas = paused or {}, quotas or {}
    names = sorted(set(queues) | set(paused) | set(quotas))
    qrows = "".join(
        f"<tr><td>{esc(q)}{' <b>paused</b>' if q in paused else ''}"
        f"{f' <span class=nbjobs-muted>{esc(str(quotas[q]))}</span>' if q in quotas else ''}</td>"
        f"<td>{queues.get(q, 0):,}</td></tr>"
        for q in names
    )
    qtable = (f'<table class="nbjobs-table"><colgroup><col style="width:200px"><col style="width:110px">'
              f"</colgroup><tr><th>Queue</th><th>Enqueued</th></tr>"
              f"{qrows or '<tr><td colspan=2 class=nbjobs-muted>no enqueued jobs</td></tr>'}</table>")
    return (f'<div class="nbjobs-dash"><h4>Succeeded and failed {esc(bucket_label)}</h4>'
            f"{chart(histogram, buckets)}<h4>Queues</h4>{qtable}</div>")


def chart(histogram: Mapping[tuple[JobState, int], int], buckets: int, width: int = 720,
          height: int = 120) -> str:
    """Stacked bars (succeeded below, failed above) as inline SVG: no plotting library needed."""
    totals = [histogram.get((S.SUCCEEDED, b), 0) + histogram.get((S.FAILED, b), 0) for b in range(buckets)]
    top = max([*totals, 1])
    bar_w = width / buckets
    parts = [f'<line x1="0" y1="{height}" x2="{width}" y2="{height}"/>']
    for b in range(buckets):
        ok, bad = histogram.get((S.SUCCEEDED, b), 0), histogram.get((S.FAILED, b), 0)
        x = b * bar_w + 0.5
        h_ok, h_bad = ok / top * (height - 4), bad / top * (height - 4)
        if ok:
            parts.append(f'<rect class="s" x="{x:.1f}" y="{height - h_ok:.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{h_ok:.1f}"><title>{ok} succeeded</title></rect>')
        if bad:
            parts.append(f'<rect class="f" x="{x:.1f}" y="{height - h_ok - h_bad:.1f}" '
                         f'width="{bar_w - 1:.1f}" height="{h_bad:.1f}"><title>{bad} failed</title></rect>')
    total_ok = sum(n for (s, _), n in histogram.items() if s is S.SUCCEEDED)
    total_bad = sum(n for (s, _), n in histogram.items() if s is S.FAILED)
    parts.append(f'<text x="2" y="10">max {top:,}/bucket</text>')
    return (f'<svg class="nbjobs-chart" width="{width}" height="{height + 2}" '
            f'viewBox="0 0 {width} {height + 2}">{"".join(parts)}</svg>'
            f'<div class="nbjobs-muted">{total_ok:,} succeeded · {total_bad:,} failed</div>')


# -- job detail ---------------------------------------------------------------------------------


def detail(
    record: JobRecord,
    now: datetime,
    *,
    arguments: Sequence[tuple[str, str]] | str,
    history: Sequence[StateChange],
    output: str,
    output_truncated: bool,
    result: str | None,
    children: Sequence[Mapping[str, Any]],
    parents: Sequence[int] = (),
    lock_holder: int | None = None,
) -> str:
    opts = record.options
    props: list[tuple[str, str]] = [
        ("Function", f"<code>{esc(record.function)}</code>"),
        ("Queue", esc(record.queue)),
        ("Attempts", f"{record.attempts} of {opts.retries + 1}"),
        ("Created", exact(record.created_at, now)),
    ]
    if record.enqueued_at:
        props.append(("Enqueued", exact(record.enqueued_at, now)))
    if record.run_at and record.state is S.SCHEDULED:
        props.append(("Due", when(record.run_at, now)))
    if record.started_at:
        props.append(("Started", exact(record.started_at, now)))
    if record.finished_at:
        props.append(("Finished", exact(record.finished_at, now)))
        props.append(("Duration", span(record.started_at, record.finished_at)))
    if record.server_id:
        props.append(("Server", esc(record.server_id)))
    if record.parent_id:
        props.append(("Parent", f"#{record.parent_id} (continue on {esc(record.continue_on.value)})"))
    elif parents:  # a continuation of several jobs
        props.append(("Parents", ", ".join(f"#{p}" for p in parents)
                      + f" (continue when {_FAN_IN_WHEN[record.continue_on.value]})"))
    if opts.lock is not None:
        held = (" (held by this job)" if record.state is S.PROCESSING
                else f" (held by #{lock_holder})" if lock_holder is not None else "")
        props.append(("Lock", esc(opts.lock) + held))
    if record.recurring_id:
        props.append(("Recurring", esc(record.recurring_id)))
    if children:
        props.append(("Continuations", ", ".join(f"#{c['id']} {badge(c['state'])}" for c in children)))
    if record.state is S.PROCESSING or record.progress is not None:
        props.append(("Progress", progress_bar(record.progress, record.progress_message)))
    if record.cancel_requested:
        props.append(("Cancel", "requested"))
    options = ", ".join(f"{k}={v!r}" for k, v in opts.to_dict().items() if v not in (None, (), []))
    props.append(("Options", f'<span class="nbjobs-muted">{esc(options)}</span>'))
    kv = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in props)
    if isinstance(arguments, str):
        args_html = f'<div class="nbjobs-muted">{esc(arguments)}</div>'
    elif arguments:
        args_html = '<table class="nbjobs-table nbjobs-kv nbjobs-args">' + "".join(
            f"<tr><td>{esc(n)}</td><td><code>{esc(v)}</code></td></tr>" for n, v in arguments
        ) + "</table>"
    else:
        args_html = '<div class="nbjobs-muted">no arguments</div>'
    hist_rows = "".join(
        f"<tr><td>{badge(h.state)}</td><td>{exact(h.at, now)}</td><td>{esc(h.reason)}</td>"
        f"<td>{esc(h.server_id or '')}</td></tr>"
        for h in reversed(history)
    )
    heading = f'Job #{record.id} {esc(record.name or "")} {badge(record.state)}'
    parts = [f'<div class="nbjobs-dash"><h4>{heading}</h4>']
    if record.error_type:  # first, as in Hangfire: it is why a person opens a failed job
        parts.append(f'<h4 class="nbjobs-err">{esc(record.error_type)}: {esc(record.error_message)}</h4>'
                     f'<pre class="nbjobs-pre nbjobs-traceback">{esc(record.error_traceback or "")}</pre>')
    parts += [f'<table class="nbjobs-table nbjobs-kv nbjobs-wide">{kv}</table>',
              f"<h4>Arguments</h4>{args_html}"]
    if result is not None:
        parts.append(f'<h4>Result</h4><pre class="nbjobs-pre">{esc(result)}</pre>')
    parts.append(
        '<h4>History</h4><table class="nbjobs-table nbjobs-wide nbjobs-history"><colgroup>'
        '<col style="width:110px"><col style="width:110px"><col><col style="width:160px"></colgroup>'
        f"<tr><th>State</th><th>When</th><th>Reason</th><th>Server</th></tr>{hist_rows}</table>"
    )
    label = "Output (tail)" if output_truncated else "Output"
    parts.append(f'<h4>{label}</h4><pre class="nbjobs-pre nbjobs-output">{esc(output) or "(none)"}</pre>')
    parts.append("</div>")
    return "".join(parts)


# -- servers, recurring, retries ----------------------------------------------------------------


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str, widths: Sequence[int] = ()
) -> str:
    cols = "".join(f'<col style="width:{w}px">' for w in widths)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="nbjobs-muted">{esc(empty)}</td></tr>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (f'<div class="nbjobs-dash"><table class="nbjobs-table">'
            f"{'<colgroup>' + cols + '</colgroup>' if cols else ''}<tr>{head}</tr>{body}</table></div>")


def servers_table(servers: Sequence[ServerInfo], running: Mapping[str, Sequence[int]], now: datetime) -> str:
    rows = [
        (esc(s.name), esc(s.host), str(s.pid), str(s.workers), esc(", ".join(s.queues)),
         when(s.started_at, now), when(s.heartbeat_at, now), str(len(running.get(s.id, ()))))
        for s in servers
    ]
    return table(["Name", "Host", "PID", "Workers", "Queues", "Started", "Heartbeat", "Running"], rows,
                 "no server is running", (220, 150, 70, 70, 160, 110, 110, 70))


def retries_table(rows: Sequence[Mapping[str, Any]], now: datetime) -> str:
    def attempt(r: Mapping[str, Any]) -> str:
        retries = _retries_of(r)
        return f"{r['attempts'] + 1} of {retries + 1}" if retries is not None else str(r["attempts"] + 1)

    body = [
        (f"#{r['id']}", job_label(r), esc(r["queue"]), attempt(r), when(r.get("run_at"), now),
         cell(r, "exception", now))
        for r in rows
    ]
    return table(["Id", "Job", "Queue", "Next attempt", "Due", "Last error"], body,
                 "no job is waiting for a retry", (80, 280, 90, 100, 110, 380))


def _retries_of(row: Mapping[str, Any]) -> int | None:
    import json

    try:
        return int(json.loads(row.get("options") or "{}").get("retries"))
    except (TypeError, ValueError):
        return None


def recurring_table(records: Sequence[Any], now: datetime) -> str:
    rows = [
        (f"<b>{esc(r.id)}</b>", f'<code title="{esc(recurring_policy(r))}">{esc(r.cron)}</code>', esc(r.tz),
         when(r.next_fire, now),
         when(r.last_fire, now), badge(r.last_job_state) + (f" #{r.last_job_id}" if r.last_job_id else ""),
         "paused" if r.paused else recurring_status(r),
         f'<span class="nbjobs-err">{esc(r.error)}</span>' if r.error else "")
        for r in records
    ]
    return table(["Id", "Cron", "Time zone", "Next", "Last", "Last job", "Status", "Error"], rows,
                 "no recurring jobs", (160, 130, 110, 100, 100, 150, 70, 260))


#: When a continuation of several jobs runs, by its `continue_on`.
_FAN_IN_WHEN = {"succeeded": "all succeeded", "finished": "all finished",
                "failed": "all ended and one failed"}


def recurring_policy(record: Any) -> str:
    """How a definition fires, beyond its expression: misfire and overlap policies, and its window."""
    parts = [f"misfire={record.misfire}", f"overlap={record.overlap}"]
    if record.misfire == "all":
        parts.insert(1, f"misfire_limit={record.misfire_limit}")
    if record.misfire_grace is not None:
        parts.append(f"misfire_grace={seconds_text(record.misfire_grace)}")
    for name, at in (("start", record.start), ("end", record.end)):
        if at is not None:
            parts.append(f"{name} {at.strftime('%Y-%m-%d %H:%M UTC')}")
    return ", ".join(parts)


def recurring_status(record: Any) -> str:
    """A definition that is not paused: ended (its end passed) or active."""
    if record.next_fire is None and record.end is not None:
        return f'<span title="its end, {record.end.strftime("%Y-%m-%d %H:%M UTC")}, has passed">ended</span>'
    return "active"


def status(message: str, ok: bool) -> str:
    if not message:
        return ""
    return f'<div class="nbjobs-dash nbjobs-status {"ok" if ok else "error"}">{esc(message)}</div>'


def seconds_ago(now: datetime, seconds: float) -> datetime:
    return now - timedelta(seconds=seconds)
