"""Helpers for the tests of the schema's functions and triggers (tests/test_schema_*.py): rows
and values of queries, inserted ids, agents, and the threads and lock waits of the concurrency
tests.

Those tests run on a real PostgreSQL with pgvector; each gets a fresh, fully migrated database
(see conftest.py). Concurrency tests open further connections with `connect` and run the
competing side in a thread; where the interleaving matters, the main thread waits until the
other backend is blocked on a lock (seen in pg_stat_activity) before it commits, so no test
relies on sleeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

Conn = psycopg.Connection[dict[str, Any]]
Connect = Callable[[], Conn]

T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ISOLATION_LEVELS = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]


def one(conn: Conn, sql: str, params: Any = None) -> dict[str, Any]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return row


def scalar(conn: Conn, sql: str, params: Any = None) -> Any:
    return next(iter(one(conn, sql, params).values()))


def row_values(conn: Conn, sql: str, params: Any = None) -> tuple[Any, ...]:
    """The values of the one row, in column order."""
    return tuple(one(conn, sql, params).values())


def column(conn: Conn, sql: str, params: Any = None) -> list[Any]:
    """The first column of every row."""
    return [next(iter(row.values())) for row in conn.execute(sql, params).fetchall()]


def insert_returning_id(conn: Conn, sql: str, params: Any = None) -> UUID:
    """Run an INSERT ... RETURNING id and return that uuid."""
    value = scalar(conn, sql, params)
    assert isinstance(value, UUID)
    return value


def wait_until_blocked(observer: Conn, pid: int, timeout: float = 10.0) -> None:
    """Return once backend `pid` waits on a lock (row, transaction or advisory)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
        if row is not None and row["wait_event_type"] == "Lock":
            return
        time.sleep(0.005)
    raise AssertionError(f"backend {pid} never blocked on a lock")


def run_in_thread(fn: Callable[[], Any]) -> Future[Any]:
    executor = ThreadPoolExecutor(max_workers=1)
    future = executor.submit(fn)
    executor.shutdown(wait=False)
    return future


def commit_in_thread(conn: Conn, work: Callable[[], Any]) -> Future[None]:
    """Run `work` on `conn` (inside its open transaction) in a thread, then COMMIT it.

    On an error the transaction is rolled back and the error is raised by `.result()`.
    """

    def run() -> None:
        try:
            work()
            conn.execute("COMMIT")
        except psycopg.Error:
            conn.execute("ROLLBACK")
            raise

    return run_in_thread(run)


def run_together(n: int, fn: Callable[[int], Any]) -> list[Future[Any]]:
    """Run fn(0) .. fn(n-1) in n threads released at once by a barrier; wait for all."""
    barrier = threading.Barrier(n)

    def start(i: int) -> Any:
        barrier.wait(timeout=10)
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as executor:
        futures = [executor.submit(start, i) for i in range(n)]
    return futures


def insert_agent(conn: Conn, slug: str, reports_to: UUID | None = None) -> UUID:
    return insert_returning_id(
        conn,
        "INSERT INTO agents (slug, name, reports_to_id) VALUES (%s, %s, %s) RETURNING id",
        [slug, slug.title(), reports_to],
    )
