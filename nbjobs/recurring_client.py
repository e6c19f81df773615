"""Recurring jobs on the client side: define (add or update by id), trigger, pause, resume, remove.

Everything is checked before anything is stored: the cron expression and time zone (`nbjobs.cron`),
the misfire and overlap policies, the job options, the function and its arguments. The scheduler
side (turning due fire times into jobs) is `nbjobs.server.recurring`.

`Client` delegates here; its own options keep the recurring-only ones (`tz`, `misfire`,
`misfire_limit`, `misfire_grace`, `overlap`, `start`, `end`) apart from job options, so
`nb.options(tz=…)` can serve `recurring` while `enqueue` refuses them with a clear message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from .clock import Clock, seconds_of, utcnow
from .cron import (
    CronSchedule,
    check_window,
    every_from_timedelta,
    parse_schedule,
    parse_zone,
    upcoming_fire,
    validate_policies,
)
from .errors import (
    FunctionNotFoundError,
    InvalidJobError,
    InvalidScheduleError,
    RecurringNotFoundError,
    is_seconds,
)
from .model import RECURRING_ID_MAX, JobOptions, NewJob, resolve_when, unstorable_character
from .payload import Codec, Target, unresolvable
from .storage import Store
from .storage.base import RecurringRecord, RecurringSpec

#: Options only recurring definitions take, with their defaults.
RECURRING_DEFAULTS: dict[str, Any] = {
    "tz": "UTC", "misfire": "once", "misfire_limit": 100, "misfire_grace": None, "overlap": "allow",
    "start": None, "end": None,
}
RECURRING_OPTIONS = frozenset(RECURRING_DEFAULTS)
MAX_ID_LENGTH = RECURRING_ID_MAX  #: the id column's width


class RecurringClient(Protocol):
    """What this module needs from `client.Client` (a protocol: the client layer imports us)."""

    store: Store
    codec: Codec
    clock: Clock
    notifier: Any
    recurring_defaults: dict[str, Any]

    def trigger(self, recurring_id: str, /) -> Any: ...

    def pause(self, recurring_id: str, /) -> None: ...

    def resume(self, recurring_id: str, /) -> None: ...

    def remove_recurring(self, recurring_id: str, /) -> bool: ...


def split_options(options: dict[str, Any]) -> dict[str, Any]:
    """Take the recurring-only options out of `options` (in place), checked now; return them."""
    taken = {name: options.pop(name) for name in RECURRING_OPTIONS & set(options)}
    if "tz" in taken:
        if not isinstance(taken["tz"], str):
            raise InvalidScheduleError(
                f"tz must be an IANA time zone name such as 'Europe/Berlin', got {taken['tz']!r}"
            )
        taken["tz"] = parse_zone(taken["tz"]).key
    if taken.get("misfire_grace") is not None:
        taken["misfire_grace"] = grace_seconds(taken["misfire_grace"])
    policy = {**RECURRING_DEFAULTS, **taken}
    validate_policies(policy["misfire"], policy["misfire_limit"], policy["overlap"])
    window(policy, utcnow())  # refused now; a delay ('2d') is counted from `recurring`'s call
    return taken


def grace_seconds(value: object) -> float:
    """`misfire_grace` in seconds: a duration ('2h'), a timedelta or seconds, above zero."""
    seconds = seconds_of(value)
    if not is_seconds(seconds, zero=False):
        raise InvalidScheduleError(
            f"misfire_grace must be a positive duration such as '2h', a timedelta or seconds, got "
            f"{value!r}; leave it out to run late fire times however late"
        )
    return float(seconds)


def window(policy: Mapping[str, Any], now: datetime) -> tuple[datetime | None, datetime | None]:
    """The `start` and `end` options as aware UTC times: a datetime (naive = local), an ISO time
    string, a date, or a delay from `now` ('2d', a timedelta, seconds), as `schedule` reads them.
    In whole seconds, as fire times are: `start="10s"` then fires on the second, not 0.37 s past it."""
    found: list[datetime | None] = []
    for what in ("start", "end"):
        value = policy[what]
        try:
            at = None if value is None else resolve_when(value, now, what)
        except InvalidJobError as exc:
            raise InvalidScheduleError(str(exc)) from None
        found.append(None if at is None else at.replace(microsecond=0))
    start, end = found
    check_window(start, end)
    return start, end


def refuse_options(recurring_options: Mapping[str, Any]) -> None:
    """Refuse recurring-only options on a single job: they would be silently meaningless there."""
    if recurring_options:
        names = sorted(recurring_options)
        raise InvalidJobError(
            f"option(s) {names} apply only to recurring jobs: use nb.options({names[0]}=…).recurring(id, "
            "cron, fn, …), or leave them out to enqueue or schedule a single job"
        )


def check_id(recurring_id: object) -> str:
    """The id if it is a non-empty string that fits the database, else InvalidScheduleError."""
    if not isinstance(recurring_id, str) or not recurring_id.strip():
        raise InvalidScheduleError(
            f"a recurring job needs a non-empty string id such as 'nightly-report', got {recurring_id!r}"
        )
    if len(recurring_id) > MAX_ID_LENGTH:
        raise InvalidScheduleError(
            f"recurring job id {recurring_id[:40]!r}… is {len(recurring_id)} characters; use at most "
            f"{MAX_ID_LENGTH}"
        )
    bad = unstorable_character(recurring_id)
    if bad is not None:
        raise InvalidScheduleError(
            f"recurring job id {recurring_id!r} contains {bad}, which the database cannot store; remove it"
        )
    return recurring_id


# -- definitions ------------------------------------------------------------------------------------
def define(
    client: RecurringClient,
    recurring_id: str,
    cron: str | timedelta,
    fn: Target,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: JobOptions,
) -> Recurring:
    """Add or update the definition `recurring_id`: run `fn(*args, **kwargs)` on `cron`.

    An update keeps the definition's history and pause, and its planned next fire when the expression
    and time zone are unchanged (re-running a notebook cell neither loses nor repeats a fire).
    """
    rid = check_id(recurring_id)
    policy = {**RECURRING_DEFAULTS, **client.recurring_defaults}
    if isinstance(cron, timedelta):
        cron = every_from_timedelta(cron)
    now = client.clock.now()
    start, end = window(policy, now)
    schedule = parse_schedule(cron, policy["tz"], start=start, end=end)
    validate_policies(policy["misfire"], policy["misfire_limit"], policy["overlap"])
    first = upcoming_fire(schedule, now)
    if first is None:
        until = end.isoformat() if end else "?"
        if end is not None and end <= now:
            raise InvalidScheduleError(f"end {until} has passed: give a later end, or leave it out")
        since = now if start is None or start < now else start
        raise InvalidScheduleError(
            f"{schedule.expr!r} has no fire time between {since.isoformat(timespec='seconds')} and its "
            f"end {until}: give a later end, or leave it out"
        )
    ref, payload = client.codec.encode(fn, args, kwargs, options.serializer)
    spec = RecurringSpec(
        id=rid, cron=schedule.expr, tz=schedule.tz, function=ref, payload=payload, options=options,
        misfire=policy["misfire"], misfire_limit=policy["misfire_limit"],
        misfire_grace=policy["misfire_grace"], overlap=policy["overlap"], start=start, end=end,
        next_fire=first,
    )
    client.store.upsert_recurring(spec, now)
    client.notifier.schedule_changed.set()  # the local scheduler recomputes its next wake-up
    return Recurring(client, rid)


def schedule_of(record: RecurringRecord) -> CronSchedule:
    """A stored definition's schedule, with its window."""
    return parse_schedule(record.cron, record.tz, start=record.start, end=record.end)


def get(client: RecurringClient, recurring_id: str) -> RecurringRecord:
    """The stored definition, or RecurringNotFoundError."""
    record = client.store.get_recurring(recurring_id)
    if record is None:
        raise _not_found(recurring_id)
    return record


def trigger(client: RecurringClient, recurring_id: str) -> int:
    """Store one run of the definition now (its schedule is unchanged); return the job id."""
    record = get(client, recurring_id)
    problem = unresolvable(record.function)
    if problem is not None:
        raise FunctionNotFoundError(
            f"recurring job {recurring_id!r} cannot run: {problem}; restore the function, or define the "
            "recurring job again with its new name"
        )
    job = NewJob(function=record.function, payload=record.payload, options=record.options,
                 recurring_id=record.id, reason=f"triggered by hand from schedule {record.id}")
    job_id = client.store.trigger_recurring(record.id, job, client.clock.now())
    if job_id is None:
        raise _not_found(recurring_id)
    client.notifier.work.set()
    return job_id


def pause(client: RecurringClient, recurring_id: str) -> None:
    """Stop firing until `resume`; fire times while paused are not made up later."""
    if not client.store.set_recurring_paused(recurring_id, True, client.clock.now()):
        raise _not_found(recurring_id)
    client.notifier.schedule_changed.set()


def resume(client: RecurringClient, recurring_id: str) -> None:
    """Fire again from the next fire time after now (a definition that is not paused is left alone)."""
    record = get(client, recurring_id)
    if not record.paused:
        return
    now = client.clock.now()
    upcoming = upcoming_fire(schedule_of(record), now)  # None: its end passed while it was paused
    if not client.store.set_recurring_paused(recurring_id, False, now, next_fire=upcoming):
        raise _not_found(recurring_id)
    client.notifier.schedule_changed.set()


def remove(client: RecurringClient, recurring_id: str) -> bool:
    """Delete the definition (its jobs stay); False if there was none."""
    removed = client.store.remove_recurring(recurring_id)
    client.notifier.schedule_changed.set()
    return removed


def _not_found(recurring_id: str) -> RecurringNotFoundError:
    return RecurringNotFoundError(
        f"no recurring job {recurring_id!r}; nb.recurring_jobs() lists them, nb.recurring(id, cron, fn) "
        "adds one"
    )


class Recurring:
    """A handle on one recurring definition (what `nb.recurring(...)` returns); reads storage when asked."""

    def __init__(self, client: RecurringClient, recurring_id: str) -> None:
        self.client = client
        self.id = recurring_id

    def record(self) -> RecurringRecord:
        """The definition as stored now, with what its schedule has done."""
        return get(self.client, self.id)

    @property
    def next_fire(self) -> datetime | None:
        return self.record().next_fire

    def trigger(self) -> Any:
        """Run it once now; returns the Job."""
        return self.client.trigger(self.id)

    def pause(self) -> Recurring:
        self.client.pause(self.id)
        return self

    def resume(self) -> Recurring:
        self.client.resume(self.id)
        return self

    def remove(self) -> bool:
        return self.client.remove_recurring(self.id)

    def __repr__(self) -> str:
        record = self.client.store.get_recurring(self.id)
        if record is None:
            return f"<Recurring {self.id!r}: removed>"
        where = record.cron if record.tz == "UTC" else f"{record.cron} ({record.tz})"
        if record.paused:
            status = "paused"
        elif record.next_fire is None:
            status = "ended" if record.end is not None else "no next fire"
        else:
            status = f"next {record.next_fire.isoformat()}"
        error = f", error: {record.error}" if record.error else ""
        return f"<Recurring {self.id!r} {where} → {record.function}, {status}{error}>"
