"""Tasks and task series (migration 009): spawning the tasks a series owes, once, also under
concurrent spawners; the start and completion times a task's status sets."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from .schema_calls import HOUR, T0, Conn, Connect, column, insert_agent, insert_returning_id, one, run_together, scalar


def insert_series(
    conn: Conn,
    title: str = "Weekly report",
    every: timedelta = HOUR,
    next_run_at: datetime = T0,
    ends_at: datetime | None = None,
    assignee: UUID | None = None,
) -> UUID:
    return insert_returning_id(
        conn,
        "INSERT INTO task_series (title, every, next_run_at, ends_at, assignee_agent_id, "
        'task_defaults) VALUES (%s, %s, %s, %s, %s, \'{"source": "series"}\') RETURNING id',
        [title, every, next_run_at, ends_at, assignee],
    )


def series_runs(conn: Conn, series: UUID) -> list[datetime]:
    return column(conn, "SELECT series_run_at FROM tasks WHERE series_id = %s ORDER BY series_run_at", [series])


def series_row(conn: Conn, series: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM task_series WHERE id = %s", [series])


def spawn(conn: Conn, now: datetime, max_per_series: int = 10) -> int:
    """Run spawn_due_task_series at `now`: the number of tasks it created."""
    return int(scalar(conn, "SELECT spawn_due_task_series(%s, %s) AS n", [now, max_per_series]))


def test_spawn_due_task_series_creates_owed_tasks_once(conn: Conn) -> None:
    """Each occurrence up to p_now becomes one task; next_run_at moves to the next slot."""
    worker = insert_agent(conn, "worker")
    series = insert_series(conn, assignee=worker)
    now = T0 + 2 * HOUR + timedelta(minutes=30)

    assert spawn(conn, now) == 3

    assert series_runs(conn, series) == [T0, T0 + HOUR, T0 + 2 * HOUR]
    tasks = conn.execute("SELECT * FROM tasks WHERE series_id = %s ORDER BY series_run_at", [series]).fetchall()
    assert all(t["title"] == "Weekly report" for t in tasks)
    assert all(t["assignee_agent_id"] == worker for t in tasks)
    assert all(t["scheduled_for"] == t["series_run_at"] for t in tasks)
    assert all(t["metadata"] == {"source": "series"} for t in tasks)
    row = series_row(conn, series)
    assert row["next_run_at"] == T0 + 3 * HOUR
    assert row["last_run_at"] == now
    assert row["active"] is True

    assert spawn(conn, now) == 0
    assert len(series_runs(conn, series)) == 3


def test_spawn_due_task_series_does_not_duplicate_a_rewound_series(conn: Conn) -> None:
    """Occurrences that already have a task are not created again, even if next_run_at rewinds."""
    series = insert_series(conn)
    spawn(conn, T0 + HOUR)
    conn.execute("UPDATE task_series SET next_run_at = %s WHERE id = %s", [T0, series])

    assert spawn(conn, T0 + 2 * HOUR) == 1

    assert series_runs(conn, series) == [T0, T0 + HOUR, T0 + 2 * HOUR]


def test_spawn_due_task_series_ignores_series_not_yet_due_or_inactive(conn: Conn) -> None:
    """A future next_run_at or an inactive series owes nothing."""
    future = insert_series(conn, next_run_at=T0 + 5 * HOUR)
    paused = insert_series(conn, title="Paused")
    conn.execute("UPDATE task_series SET active = false WHERE id = %s", [paused])

    assert spawn(conn, T0 + HOUR) == 0

    assert series_runs(conn, future) == [] and series_runs(conn, paused) == []
    assert series_row(conn, future)["next_run_at"] == T0 + 5 * HOUR


def test_spawn_due_task_series_respects_ends_at(conn: Conn) -> None:
    """No occurrence after ends_at is created, and the finished series is deactivated."""
    series = insert_series(conn, ends_at=T0 + HOUR + timedelta(minutes=30))

    assert spawn(conn, T0 + 5 * HOUR) == 2

    assert series_runs(conn, series) == [T0, T0 + HOUR]
    assert series_row(conn, series)["active"] is False
    assert spawn(conn, T0 + 50 * HOUR) == 0
    assert len(series_runs(conn, series)) == 2


def test_spawn_due_task_series_caps_catch_up(conn: Conn) -> None:
    """A series far behind gets its newest p_max_per_series tasks (the one due now among them);
    the schedule stays on its grid."""
    series = insert_series(conn)
    now = T0 + 9 * HOUR + timedelta(minutes=30)

    assert spawn(conn, now, max_per_series=3) == 3

    assert series_runs(conn, series) == [T0 + 7 * HOUR, T0 + 8 * HOUR, T0 + 9 * HOUR]
    assert series_row(conn, series)["next_run_at"] == T0 + 10 * HOUR
    assert spawn(conn, now, max_per_series=3) == 0
    assert spawn(conn, T0 + 10 * HOUR, max_per_series=3) == 1
    assert series_runs(conn, series)[-1] == T0 + 10 * HOUR


def test_concurrent_spawners_create_each_task_once(conn: Conn, connect: Connect) -> None:
    """Schedulers on several connections released at once create every owed task exactly once."""
    all_series = [insert_series(conn, title=f"Series {i}") for i in range(6)]
    now = T0 + 4 * HOUR
    n = 3
    conns = [connect() for _ in range(n)]

    futures = run_together(n, lambda i: spawn(conns[i], now))

    assert sum(f.result() for f in futures) == 6 * 5
    for series in all_series:
        assert series_runs(conn, series) == [T0 + k * HOUR for k in range(5)]
    assert scalar(conn, "SELECT count(*) AS n FROM tasks") == 30


def test_spawner_skips_series_another_spawner_holds(conn: Conn, connect: Connect) -> None:
    """While one transaction spawns a series, a second caller skips it instead of duplicating."""
    series = insert_series(conn)
    first, second = connect(), connect()
    first.execute("BEGIN")
    assert spawn(first, T0 + HOUR) == 2

    assert spawn(second, T0 + HOUR) == 0
    first.execute("COMMIT")
    assert spawn(second, T0 + HOUR) == 0

    assert series_runs(conn, series) == [T0, T0 + HOUR]


def task_times(conn: Conn, task: UUID) -> tuple[datetime | None, datetime | None]:
    row = one(conn, "SELECT started_at, completed_at FROM tasks WHERE id = %s", [task])
    return row["started_at"], row["completed_at"]


def set_status(conn: Conn, task: UUID, status: str) -> None:
    conn.execute("UPDATE tasks SET status = %s WHERE id = %s", [status, task])


def test_tasks_track_status_sets_started_and_completed(conn: Conn) -> None:
    """in_progress stamps started_at once; done stamps completed_at; reopening clears it."""
    task = scalar(conn, "INSERT INTO tasks (title) VALUES ('Write') RETURNING id")
    assert task_times(conn, task) == (None, None)

    set_status(conn, task, "in_progress")
    started, completed = task_times(conn, task)
    assert started is not None and completed is None

    set_status(conn, task, "review")
    set_status(conn, task, "in_progress")
    assert task_times(conn, task) == (started, None)

    set_status(conn, task, "done")
    started_after, completed = task_times(conn, task)
    assert started_after == started and completed is not None and completed >= started

    set_status(conn, task, "todo")
    assert task_times(conn, task) == (started, None)


@pytest.mark.parametrize(
    ("status", "started", "completed"),
    [("todo", False, False), ("in_progress", True, False), ("done", False, True)],
)
def test_tasks_track_status_on_insert(conn: Conn, status: str, started: bool, completed: bool) -> None:
    """A task created directly in a status gets the matching timestamps."""
    task = scalar(conn, "INSERT INTO tasks (title, status) VALUES ('Write', %s) RETURNING id", [status])
    started_at, completed_at = task_times(conn, task)
    assert (started_at is not None, completed_at is not None) == (started, completed)
