"""Read replicas: which server a read runs on.

`ReadRouter` holds the primary's pool and one pool per streaming replica (HQ_READ_DATABASE_URL).
A monitor thread per server reads, every `interval` seconds, the primary's WAL position
(`pg_current_wal_lsn()`) and each replica's replayed position (`pg_last_wal_replay_lsn()`). A
replica's lag is the time since the primary was first seen at a position the replica has not
replayed yet: 0 while it has replayed everything the primary had. A replica is read from while
it answers and lags at most `max_lag` seconds; otherwise reads go to another replica or to the
primary. A read that must see a write (its WAL position, `min_lsn`) goes to a replica only once
that replica has replayed it. Writes never come here: they take the primary's pool.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from knowledge.config import describe_url
from knowledge.db.errors import is_conflict, is_unavailable
from knowledge.db.pools import pooled_connection, report_up
from knowledge.errors import DatabaseUnavailable, KnowledgeError, first_line
from knowledge.health import Health
from knowledge.lsn import format_lsn, parse_lsn

__all__ = ["POLL_INTERVAL", "ReadRouter", "ReplicaReport"]

log = logging.getLogger("hq_knowledge.db")
T = TypeVar("T")

POLL_INTERVAL = 0.5
"""Seconds between two reads of each server's WAL position."""
_PRIMARY_POSITION = "SELECT pg_current_wal_lsn()::text"
# A server out of recovery (a replica promoted, or the primary itself) has replayed what it wrote.
_REPLAYED = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text"
_KEPT_POSITIONS = 100_000
"""Primary positions remembered for replicas that have replayed none of them (down ones)."""


@dataclass(frozen=True)
class ReplicaReport:
    """A replica as /healthz and /readyz list it."""

    url: str
    """Its URL, password hidden."""
    state: str
    """`ok` (read from), `lagging` (more than max_lag behind), `down` (unreachable) or `starting`
    (not checked yet)."""
    lag_seconds: float | None
    replayed_lsn: str | None
    since: datetime
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "replayed_lsn": self.replayed_lsn,
            "since": self.since.isoformat(),
            "detail": self.detail,
        }


class _Replica:
    def __init__(self, url: str, pool: ConnectionPool[Any]) -> None:
        self.url = url
        self.pool = pool
        self.name = f"replica {describe_url(url)}"
        self.state = "starting"
        self.since = datetime.now(UTC)
        self.detail = "not checked yet"
        self.replayed: int | None = None
        self.lag: float | None = None
        self.checked = 0.0  # time.monotonic() of its last successful check


class ReadRouter:
    """Where reads run: `connection()` and `run()`. With no replicas every read takes the primary's
    pool. `start()` starts the monitor threads and `close()` stops them; the pools stay the
    caller's to close."""

    def __init__(
        self,
        primary_url: str,
        primary: ConnectionPool[Any],
        replicas: Sequence[tuple[str, ConnectionPool[Any]]] = (),
        *,
        max_lag: float = 5.0,
        health: Health | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.primary = primary
        self.max_lag = max_lag
        self._primary_url = primary_url
        self._replicas = [_Replica(url, pool) for url, pool in replicas]
        self._health = health
        self._interval = interval
        self._lock = threading.Lock()
        # The primary's positions, increasing, each with when it was first seen (monotonic).
        self._positions: list[int] = []
        self._seen_at: list[float] = []
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def has_replicas(self) -> bool:
        return bool(self._replicas)

    def start(self) -> None:
        """Start watching the servers (nothing to do without replicas). Replicas are read from
        once their first check finds them close enough to the primary."""
        if not self._replicas:
            return
        for replica in self._replicas:
            self._publish(replica)
        self._threads = [threading.Thread(target=self._watch_primary, name="hq-knowledge-wal-primary", daemon=True)]
        self._threads += [
            threading.Thread(target=self._watch_replica, args=(r,), daemon=True, name=f"hq-knowledge-wal-replica-{n}")
            for n, r in enumerate(self._replicas, start=1)
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Stop the monitor threads; returns once they are done."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def report(self) -> list[ReplicaReport]:
        with self._lock:
            return [
                ReplicaReport(
                    describe_url(r.url),
                    r.state,
                    r.lag,
                    None if r.replayed is None else format_lsn(r.replayed),
                    r.since,
                    r.detail,
                )
                for r in self._replicas
            ]

    def write_position(self, conn: psycopg.Connection[Any] | None = None) -> str:
        """The primary's WAL position now (`pg_current_wal_lsn()`), read on `conn` (a connection
        to the primary that is not in a transaction) or on one from the primary's pool."""
        if conn is not None:
            return _position(conn, _PRIMARY_POSITION)
        with pooled_connection(self.primary) as fresh:
            return _position(fresh, _PRIMARY_POSITION)

    @contextlib.contextmanager
    def connection(
        self,
        min_lsn: int | None = None,
        *,
        primary_only: bool = False,
        on_replica_failure: Callable[[], None] | None = None,
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection for a read-only block: from a replica that is up, at most `max_lag`
        behind and (with `min_lsn`) has replayed that WAL position; else from the primary.
        A replica that cannot give a connection is marked down and the next one (at last the
        primary) is taken. When the block fails because of its replica (the replica went away,
        or cancelled the read to replay WAL), `on_replica_failure` is called before the error
        propagates: the caller should run the block again with `primary_only`. Errors are
        raised as `pooled_connection` raises them."""
        for replica in () if primary_only else self._candidates(min_lsn):
            with contextlib.ExitStack() as held:
                try:
                    conn = held.enter_context(pooled_connection(replica.pool))
                except KnowledgeError as e:
                    self._failed(replica, first_line(e))
                    continue
                if min_lsn is not None and not self._has_replayed(replica, conn, min_lsn):
                    continue
                try:
                    yield conn
                except Exception as e:
                    fault = _fault(e, conn)
                    if fault is not None:
                        if fault == "down":
                            self._failed(replica, first_line(e))
                        if on_replica_failure is not None:
                            on_replica_failure()
                    raise
                return
        with pooled_connection(self.primary) as conn:
            yield conn

    def run(
        self, work: Callable[[psycopg.Connection[Any]], T], min_lsn: int | None = None, *, primary_only: bool = False
    ) -> T:
        """`work(conn)` on a `connection()`; when it failed because of its replica, once more on
        the primary. `work` must only read."""
        failed: list[bool] = []
        try:
            with self.connection(
                min_lsn, primary_only=primary_only, on_replica_failure=lambda: failed.append(True)
            ) as conn:
                return work(conn)
        except Exception:
            if not failed:
                raise
        with pooled_connection(self.primary) as conn:
            return work(conn)

    # -- choosing ---------------------------------------------------------------------------

    def _candidates(self, min_lsn: int | None) -> list[_Replica]:
        """Replicas to try in order: the usable ones that have replayed `min_lsn`, taken in
        turn; when none has, the one closest to it (to be asked again)."""
        now = time.monotonic()
        fresh = max(self.max_lag, 4 * self._interval)  # a replica not heard of since is not trusted
        with self._lock:
            usable = [r for r in self._replicas if r.state == "ok" and now - r.checked <= fresh]
            ready = [r for r in usable if min_lsn is None or (r.replayed or 0) >= min_lsn]
        if ready:
            turn = next(self._turn) % len(ready)
            return ready[turn:] + ready[:turn]
        return [max(usable, key=lambda r: r.replayed or 0)] if usable else []

    def _has_replayed(self, replica: _Replica, conn: psycopg.Connection[Any], min_lsn: int) -> bool:
        if (replica.replayed or 0) >= min_lsn:
            return True
        try:
            replayed = parse_lsn(_position(conn, _REPLAYED))
        except psycopg.Error as e:
            if is_unavailable(e) or conn.broken:
                self._failed(replica, first_line(e))
            return False
        if replayed is None:
            return False
        with self._lock:
            replica.replayed = max(replica.replayed or 0, replayed)
        return replayed >= min_lsn

    # -- watching ---------------------------------------------------------------------------

    def _watch_primary(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                conn = conn if conn is not None else _monitor_connection(self._primary_url)
                position = parse_lsn(_position(conn, _PRIMARY_POSITION))
            except psycopg.Error:  # the primary's outages are the pools' to report (db._Breaker)
                _close(conn)
                conn = None
            else:
                if position is not None:
                    self._saw_primary_at(position, time.monotonic())
            self._stop.wait(self._interval)
        _close(conn)

    def _watch_replica(self, replica: _Replica) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                conn = conn if conn is not None else _monitor_connection(replica.url)
                replayed = parse_lsn(_position(conn, _REPLAYED))
            except psycopg.Error as e:
                _close(conn)
                conn = None
                self._failed(replica, first_line(e))
            else:
                report_up(replica.pool)  # its pool's breaker, if a request tripped it, need not wait
                if replayed is not None:
                    self._replayed(replica, replayed, time.monotonic())
            if self._health is not None:
                self._health.beat(replica.name)
            self._stop.wait(self._interval)
        _close(conn)

    def _saw_primary_at(self, position: int, now: float) -> None:
        with self._lock:
            if not self._positions or position > self._positions[-1]:
                self._positions.append(position)
                self._seen_at.append(now)
            # Forget the positions every replica has replayed, and the oldest beyond what is kept;
            # never the newest: a replica is read from only once the primary's position is known.
            replayed = [r.replayed for r in self._replicas if r.replayed is not None]
            drop = len(self._positions) - _KEPT_POSITIONS
            if len(replayed) == len(self._replicas):
                drop = max(drop, bisect.bisect_right(self._positions, min(replayed)))
            drop = min(drop, len(self._positions) - 1)
            if drop > 0:
                del self._positions[:drop], self._seen_at[:drop]

    def _replayed(self, replica: _Replica, replayed: int, now: float) -> None:
        with self._lock:
            known = bool(self._positions)
            behind = bisect.bisect_right(self._positions, replayed)  # the first position not replayed
            lag = now - self._seen_at[behind] if behind < len(self._positions) else 0.0
            replica.replayed, replica.checked = replayed, now
            replica.lag = lag if known else None
        if not known:
            self._set(
                replica,
                replica.state if replica.state != "ok" else "starting",
                "waiting for the primary's WAL position",
            )
        elif lag <= self.max_lag:
            self._set(replica, "ok", f"replayed up to {format_lsn(replayed)}, {lag:.1f} s behind the primary")
        else:
            self._set(
                replica,
                "lagging",
                f"{lag:.1f} s behind the primary (more than HQ_READ_MAX_LAG, "
                f"{self.max_lag:g} s; replayed up to {format_lsn(replayed)}): "
                "reads go to the primary or another replica",
            )

    def _failed(self, replica: _Replica, reason: str) -> None:
        self._set(replica, "down", f"unreachable ({reason}): reads go to the primary or another replica")

    def _set(self, replica: _Replica, state: str, detail: str) -> None:
        bad = ("down", "lagging")
        with self._lock:
            was = replica.state
            replica.detail = detail
            if state != was:
                replica.state, replica.since = state, datetime.now(UTC)
            if state == "down":
                replica.lag = None
        if state in bad and was not in bad:
            log.warning("%s is %s: %s", replica.name, state, detail)
        elif state == "ok" and was in bad:
            log.info("%s is back: reading from it again (%s)", replica.name, detail)
        self._publish(replica)

    def _publish(self, replica: _Replica) -> None:
        if self._health is not None:
            self._health.set(replica.name, replica.state, replica.detail, stale_after=max(10.0, 10 * self._interval))


def _fault(e: BaseException, conn: psycopg.Connection[Any]) -> str | None:
    """'down' when `e` says the replica went away, 'conflict' when the replica cancelled the
    read to replay WAL (a recovery conflict), None when the replica is not to blame."""
    for error in (e, e.__cause__):
        if isinstance(error, psycopg.Error):
            if is_unavailable(error):
                return "down"
            if is_conflict(error):
                return "conflict"
    if conn.broken or isinstance(e, DatabaseUnavailable):
        return "down"
    return None


def _monitor_connection(url: str) -> psycopg.Connection[Any]:
    # Over TCP, a server that vanished without closing the connection (a host gone) fails the
    # next read within seconds instead of hanging the monitor (ignored on Unix sockets).
    conn = psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=2,
        keepalives=1,
        keepalives_idle=2,
        keepalives_interval=1,
        keepalives_count=2,
        tcp_user_timeout=3000,
        application_name="hq-knowledge-replica-monitor",
    )
    conn.execute("SET statement_timeout = '2s'")
    return conn


def _position(conn: psycopg.Connection[Any], statement: str) -> str:
    row = conn.cursor(row_factory=tuple_row).execute(statement).fetchone()
    return str(row[0]) if row is not None and row[0] is not None else ""


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
