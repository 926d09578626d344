"""The agents' reporting lines (migration 007): the chain of managers, and no cycle, also under
concurrent reassignments."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from psycopg import errors

from .schema_calls import ISOLATION_LEVELS, Conn, Connect, commit_in_thread, insert_agent, wait_until_blocked


def set_manager(conn: Conn, agent: UUID, manager: UUID | None) -> None:
    conn.execute("UPDATE agents SET reports_to_id = %s WHERE id = %s", [manager, agent])


def agents_snapshot(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM agents ORDER BY slug").fetchall()


def test_agent_reports_chain_lists_the_agent_then_its_managers_by_depth(conn: Conn) -> None:
    """agent_reports_chain: depth 0 is the agent itself, then each manager up the chain."""
    c = insert_agent(conn, "c")
    b = insert_agent(conn, "b", reports_to=c)
    a = insert_agent(conn, "a", reports_to=b)

    chain = conn.execute("SELECT * FROM agent_reports_chain(%s)", [a]).fetchall()

    assert [(r["depth"], r["agent_id"], r["slug"]) for r in chain] == [
        (0, a, "a"),
        (1, b, "b"),
        (2, c, "c"),
    ]
    assert chain[2]["name"] == "C"
    limited = conn.execute("SELECT agent_id FROM agent_reports_chain(%s, 1)", [a]).fetchall()
    assert [r["agent_id"] for r in limited] == [a, b]
    top = conn.execute("SELECT agent_id FROM agent_reports_chain(%s)", [c]).fetchall()
    assert [r["agent_id"] for r in top] == [c]


def test_manager_assignment_closing_a_cycle_is_rejected(conn: Conn) -> None:
    """With a -> b -> c, making c report to a raises and leaves every agent unchanged."""
    c = insert_agent(conn, "c")
    b = insert_agent(conn, "b", reports_to=c)
    a = insert_agent(conn, "a", reports_to=b)
    before = agents_snapshot(conn)

    with pytest.raises(errors.CheckViolation, match="cycle"):
        set_manager(conn, c, a)
    with pytest.raises(errors.CheckViolation, match="cycle"):
        set_manager(conn, b, a)

    assert agents_snapshot(conn) == before


def test_agent_cannot_report_to_itself(conn: Conn) -> None:
    """A self-report is rejected and the agent keeps its manager."""
    m = insert_agent(conn, "manager")
    a = insert_agent(conn, "a", reports_to=m)
    before = agents_snapshot(conn)

    with pytest.raises(errors.CheckViolation):
        set_manager(conn, a, a)

    assert agents_snapshot(conn) == before


def test_manager_reassignment_without_cycle_is_allowed(conn: Conn) -> None:
    """Moving an agent to another manager (no loop) works: the trigger is not over-eager."""
    c = insert_agent(conn, "c")
    b = insert_agent(conn, "b", reports_to=c)
    a = insert_agent(conn, "a", reports_to=b)

    set_manager(conn, a, c)
    set_manager(conn, b, None)
    set_manager(conn, c, b)

    chain = conn.execute("SELECT agent_id FROM agent_reports_chain(%s)", [a]).fetchall()
    assert [r["agent_id"] for r in chain] == [a, c, b]


@pytest.mark.parametrize("isolation", ISOLATION_LEVELS)
def test_concurrent_opposite_manager_assignments_cannot_both_commit(
    conn: Conn, connect: Connect, isolation: str
) -> None:
    """a -> b and b -> a in two overlapping transactions: the second one fails, no cycle."""
    a = insert_agent(conn, "a")
    b = insert_agent(conn, "b")
    first, second = connect(), connect()
    first.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    second.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    second.execute("SELECT count(*) FROM agents")
    set_manager(first, a, b)

    pending = commit_in_thread(second, lambda: set_manager(second, b, a))
    wait_until_blocked(conn, second.info.backend_pid)
    first.execute("COMMIT")

    with pytest.raises((errors.CheckViolation, errors.SerializationFailure)):
        pending.result(timeout=10)
    managers = {r["slug"]: r["reports_to_id"] for r in agents_snapshot(conn)}
    assert managers == {"a": b, "b": None}
