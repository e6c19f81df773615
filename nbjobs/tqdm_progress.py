"""tqdm bars inside a job report the job's progress.

Data code shows its progress with tqdm already (`for batch in tqdm(loader)`); inside a job those bars
become the job's progress (its live view, the dashboard, `jobs()`), so existing code needs no
`nbjobs.progress` to be watched. tqdm's base class is wrapped once per process (`install`, when a
server starts and in each worker process), which every tqdm flavour (`tqdm.auto`, `tqdm.notebook`,
`tqdm.rich` …) inherits: a bar created in a job's thread belongs to that job, and each time tqdm
redraws it (at most every `mininterval`, 0.1 s by default) or closes it, the job's open bars are
reported through `JobContext.set_progress` (whose sink stores at a bounded rate). A bar outside a job
costs one context lookup per redraw.

Nested bars read as one: the fraction is the outer bar's with the inner one's share of its current
step added (epoch 3 of 10 and batch 50 of 100: 25 %), and the message names each bar
(`epochs: 2/10 · batches: 50/100`, as `nbjobs.progress` words it). A bar without a total gives a
count, not a fraction.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .context import JobContext, current_job_or_none

#: The open bars of each running job, outermost (oldest) first, held weakly: a bar holds its job's
#: context, so strong references here would keep both alive for ever.
_open: weakref.WeakKeyDictionary[JobContext, list[weakref.ref[Any]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_OWNER = "_nbjobs_job"


def install() -> bool:
    """Wrap tqdm's base class (once per process); False if tqdm is not installed."""
    try:
        from tqdm import std
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return False
    cls: Any = std.tqdm
    with _lock:
        if getattr(cls, "_nbjobs_reports", False):
            return True
        cls.__init__ = _after(cls.__init__, _opened)
        cls.refresh = _after(cls.refresh, _redrawn)
        cls.close = _after(cls.close, _closed)
        cls._nbjobs_reports = True
    return True


def _after(method: Callable[..., Any], then: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        then(self)
        return result

    return wrapper


def _opened(bar: Any) -> None:
    ctx = current_job_or_none()
    if ctx is None or getattr(bar, "disable", True):
        return
    setattr(bar, _OWNER, ctx)
    with _lock:
        _open.setdefault(ctx, []).append(weakref.ref(bar))
    _report(ctx)


def _redrawn(bar: Any) -> None:
    ctx = getattr(bar, _OWNER, None)
    if ctx is not None:
        _report(ctx)


def _closed(bar: Any) -> None:
    ctx = getattr(bar, _OWNER, None)
    if ctx is None:
        return
    delattr(bar, _OWNER)
    with _lock:
        refs = _open.get(ctx, [])
        outermost = bool(refs) and refs[0]() is bar
        refs[:] = [ref for ref in refs if ref() is not None and ref() is not bar]
    if outermost:  # a finished loop's last word: its end, not what an inner bar says next
        _report(ctx, [bar])
    else:
        _report(ctx)


def _report(ctx: JobContext, bars: Sequence[Any] | None = None) -> None:
    """Tell the job where its bars are, from the job's own thread only: a bar closed when it is
    collected, in another thread or after the job ended, must not write to a finished job."""
    if current_job_or_none() is not ctx:
        return
    if bars is None:
        with _lock:
            bars = [bar for bar in (ref() for ref in _open.get(ctx, ())) if bar is not None]
    if bars:
        ctx.set_progress(*describe(bars))


def describe(bars: Sequence[Any]) -> tuple[float | None, str]:
    """(fraction, message) of nested bars, outermost first: each bar adds its share of its parent's
    current step; below a bar without a total nothing finer is known."""
    fraction: float | None = None
    share = 1.0
    parts = []
    for bar in bars:
        n, total, desc = bar.n, bar.total, bar.desc
        counted = f"{_number(n)}/{_number(total)}" if total else _number(n)
        parts.append(f"{desc.rstrip(': ')}: {counted}" if desc else counted)
        if share and total:
            fraction = (fraction or 0.0) + share * min(max(n / total, 0.0), 1.0)
            share /= total
        else:
            share = 0.0
    return (None if fraction is None else min(fraction, 1.0)), " · ".join(parts)


def _number(value: float) -> str:
    return f"{int(value):d}" if float(value).is_integer() else f"{value:.3g}"
