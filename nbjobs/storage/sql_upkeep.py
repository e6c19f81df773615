"""What servers write besides job states, on SQL: registry and heartbeats with leases, the reaper,
pruning, lease-locks, and the output and progress of running jobs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    Connection,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..model import (
    PRIVATE_QUEUE_MARK,
    ServerInfo,
    storable,
)
from .base import HeartbeatReply, ReapReport
from .schema import dependencies, history, jobs, locks, logs, paused_queues, servers
from .sql_base import (
    _RELEASE,
    S,
    SqlBase,
)


class UpkeepSqlMixin(SqlBase):
    """Server, maintenance and output methods of `SqlStore` (see `Store` for the guarantees)."""

    # -- servers and maintenance ----------------------------------------------------------------
    def register_server(self, info: ServerInfo) -> None:
        values = {
            "name": info.name, "host": info.host, "pid": info.pid, "workers": info.workers,
            "queues": json.dumps(list(info.queues)), "started_at": info.started_at,
            "heartbeat_at": info.heartbeat_at,
        }

        def body(conn: Connection) -> None:
            if not conn.execute(update(servers).where(servers.c.id == info.id).values(**values)).rowcount:
                conn.execute(insert(servers).values(id=info.id, **values))

        self._tx(body)

    def unregister_server(self, server_id: str) -> None:
        self._tx(lambda conn: conn.execute(delete(servers).where(servers.c.id == server_id)))

    def heartbeat(
        self, server_id: str, running: Sequence[int], lease_until: datetime, now: datetime
    ) -> HeartbeatReply:
        def body(conn: Connection) -> HeartbeatReply:
            known = conn.execute(
                update(servers).where(servers.c.id == server_id).values(heartbeat_at=now)
            ).rowcount
            if not running:
                return HeartbeatReply(registered=bool(known))
            held = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id.in_(list(running)),
                    jobs.c.server_id == server_id,
                    jobs.c.state == S.PROCESSING.value,
                )
                .values(lease_until=lease_until)
                .returning(jobs.c.id, jobs.c.cancel_requested)
            ).all()
            held_ids = {r.id for r in held}
            return HeartbeatReply(
                cancel_requested=frozenset(r.id for r in held if r.cancel_requested),
                lost=frozenset(set(running) - held_ids),
                registered=bool(known),
            )

        return self._tx(body)

    def list_servers(self) -> list[ServerInfo]:
        def body(conn: Connection) -> list[ServerInfo]:
            return [
                ServerInfo(
                    id=r.id, name=r.name, host=r.host, pid=r.pid, workers=r.workers,
                    queues=tuple(json.loads(r.queues)), started_at=r.started_at,
                    heartbeat_at=r.heartbeat_at,
                )
                for r in conn.execute(select(servers).order_by(servers.c.started_at))
            ]

        return self._tx(body, write=False)

    def running_by_server(self) -> dict[str, list[int]]:
        def body(conn: Connection) -> dict[str, list[int]]:
            out: dict[str, list[int]] = {}
            rows = conn.execute(
                select(jobs.c.server_id, jobs.c.id).where(jobs.c.state == S.PROCESSING.value)
            )
            for sid, jid in rows:
                out.setdefault(sid, []).append(jid)
            return out

        return self._tx(body, write=False)

    def has_work(self, server_id: str, queues: Sequence[str], now: datetime) -> bool:
        served = or_(*(~jobs.c.queue.contains(PRIVATE_QUEUE_MARK, autoescape=True) if q == "*"
                       else jobs.c.queue == q for q in queues or ["*"]))
        held = select(jobs.c.id).where(jobs.c.state == S.PROCESSING.value, jobs.c.server_id == server_id)
        ready = select(jobs.c.id).where(
            jobs.c.state == S.ENQUEUED.value, served,
            jobs.c.queue.not_in(select(paused_queues.c.queue).scalar_subquery()),
        )
        due = select(jobs.c.id).where(jobs.c.state == S.SCHEDULED.value, jobs.c.run_at <= now, served)

        def body(conn: Connection) -> bool:
            return any(conn.execute(stmt.limit(1)).first() is not None for stmt in (held, ready, due))

        return self._tx(body, write=False)

    def reap(
        self,
        now: datetime,
        *,
        server_timeout: float,
        dead_server_ids: Sequence[str] = (),
    ) -> ReapReport:
        def body(conn: Connection) -> ReapReport:
            stale = now - timedelta(seconds=server_timeout)
            removed = conn.execute(
                delete(servers)
                .where(or_(servers.c.heartbeat_at < stale, servers.c.id.in_(list(dead_server_ids))))
                .returning(servers.c.id, servers.c.queues)
            ).all()
            dead = [r.id for r in removed]
            gone = set(dead_server_ids)
            orphaned = sorted({q for r in removed if r.id in gone for q in json.loads(r.queues)
                               if PRIVATE_QUEUE_MARK in q})
            cond = jobs.c.lease_until < now
            if dead:
                cond = or_(cond, jobs.c.server_id.in_(list(dead)))
            rows = conn.execute(
                update(jobs)
                .where(jobs.c.state == S.PROCESSING.value, cond)
                .values(state=S.ENQUEUED.value, enqueued_at=now, **_RELEASE)
                .returning(jobs.c.id, jobs.c.server_id)
            ).all()
            # RETURNING gives the new (NULL) server_id; the history names the reason instead.
            reason = (
                "returned to queue: its server stopped (lease expired"
                + (f"; dead servers {', '.join(dead)})" if dead else ")")
            )
            self._history_rows(conn, ((r.id, S.ENQUEUED, reason) for r in rows), now, None)
            if rows:
                self.dialect.notify(conn, "reaped")
            return ReapReport(dead_servers=tuple(dead), returned_jobs=tuple(r.id for r in rows),
                              orphaned_queues=tuple(orphaned))

        return self._tx(body)

    def prune(self, now: datetime, *, keep_succeeded: float, keep_deleted: float, batch: int) -> int:
        def body(conn: Connection) -> int:
            cond = or_(
                and_(jobs.c.state == S.SUCCEEDED.value,
                     jobs.c.finished_at < now - timedelta(seconds=keep_succeeded)),
                and_(jobs.c.state == S.DELETED.value,
                     jobs.c.finished_at < now - timedelta(seconds=keep_deleted)),
            )
            ids = conn.execute(select(jobs.c.id).where(cond).limit(batch)).scalars().all()
            if not ids:
                return 0
            conn.execute(delete(history).where(history.c.job_id.in_(ids)))
            conn.execute(delete(logs).where(logs.c.job_id.in_(ids)))
            conn.execute(delete(dependencies).where(
                or_(dependencies.c.parent_id.in_(ids), dependencies.c.child_id.in_(ids))))
            conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
            return len(ids)

        return self._tx(body)

    def try_lock(self, name: str, owner: str, until: datetime, now: datetime,
                 taking_from: Sequence[str] = ()) -> bool:
        free = or_(locks.c.owner == owner, locks.c.expires_at < now)
        if taking_from:
            free = or_(free, locks.c.owner.in_(list(taking_from)))

        def body(conn: Connection) -> bool:
            taken = conn.execute(
                update(locks).where(locks.c.name == name, free).values(owner=owner, expires_at=until)
            ).rowcount
            if taken:
                return True
            try:
                with conn.begin_nested():
                    conn.execute(insert(locks).values(name=name, owner=owner, expires_at=until))
                return True
            except IntegrityError:
                return False

        return self._tx(body)

    # -- output and progress --------------------------------------------------------------------
    def append_logs(self, job_id: int, chunks: Sequence[tuple[datetime, str, str]]) -> None:
        if chunks:
            self._tx(
                lambda conn: conn.execute(
                    insert(logs),
                    [{"job_id": job_id, "at": at, "stream": s, "text": storable(t)} for at, s, t in chunks],
                )
            )

    def read_logs(self, job_id: int, tail: int | None = None) -> list[tuple[datetime, str, str]]:
        def body(conn: Connection) -> list[tuple[datetime, str, str]]:
            stmt = select(logs.c.at, logs.c.stream, logs.c.text).where(logs.c.job_id == job_id)
            if tail is None:
                rows = conn.execute(stmt.order_by(logs.c.id)).all()
            else:
                rows = list(reversed(conn.execute(stmt.order_by(logs.c.id.desc()).limit(tail)).all()))
            return [(r.at, r.stream, r.text) for r in rows]

        return self._tx(body, write=False)

    def read_log_entries(self, job_id: int, after: int = 0) -> list[tuple[int, str]]:
        stmt = (select(logs.c.id, logs.c.text).where(logs.c.job_id == job_id, logs.c.id > after)
                .order_by(logs.c.id))
        return self._tx(lambda conn: [(r.id, r.text) for r in conn.execute(stmt)], write=False)

    def set_progress(self, job_id: int, fraction: float | None, message: str | None) -> None:
        self._tx(
            lambda conn: conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(progress=fraction, progress_message=storable(message))
            )
        )
