"""Usage and budgets (migration 015): usage rolled up into each agent's monthly budget, its
warnings and its hard stop, also under concurrent usage."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from psycopg import errors

from .schema_calls import Conn, Connect, column, insert_agent, one, run_together, scalar


def add_usage(
    conn: Conn,
    agent: UUID,
    cost: str | Decimal,
    input_tokens: int = 100,
    output_tokens: int = 10,
    occurred_at: str | datetime | None = None,
) -> None:
    """Insert a usage row; `occurred_at` may be an SQL expression string (e.g. month arithmetic)."""
    if isinstance(occurred_at, str):
        when_sql, params = occurred_at, []
    else:
        when_sql, params = "coalesce(%s, now())", [occurred_at]
    conn.execute(
        "INSERT INTO agent_usage (agent_id, provider, model, input_tokens, output_tokens, "
        f"cost_usd, occurred_at) VALUES (%s, 'anthropic', 'claude', %s, %s, %s, {when_sql})",
        [agent, input_tokens, output_tokens, Decimal(cost), *params],
    )


def set_budget(
    conn: Conn,
    agent: UUID,
    limit: str | None,
    hard_stop: bool = True,
    warn_ratio: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO agent_budgets (agent_id, monthly_limit_usd, hard_stop, warn_ratio) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (agent_id) DO UPDATE SET "
        "monthly_limit_usd = EXCLUDED.monthly_limit_usd, hard_stop = EXCLUDED.hard_stop, "
        "warn_ratio = EXCLUDED.warn_ratio",
        [agent, limit, hard_stop, warn_ratio],
    )


def budget(conn: Conn, agent: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM agent_budgets WHERE agent_id = %s", [agent])


def budget_notifications(conn: Conn, agent: UUID) -> list[str]:
    return column(conn, "SELECT kind FROM notifications WHERE agent_id = %s ORDER BY created_at, kind", [agent])


def check_budget(conn: Conn, agent: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM check_agent_budget(%s)", [agent])


def test_usage_rolls_up_into_agent_budget(conn: Conn) -> None:
    """Each usage row adds its cost, tokens and one call to the agent's current month."""
    agent = insert_agent(conn, "writer")
    add_usage(conn, agent, "0.25", input_tokens=1000, output_tokens=200)
    add_usage(conn, agent, "0.50", input_tokens=3000, output_tokens=700)
    other = insert_agent(conn, "other")
    add_usage(conn, other, "9")

    b = budget(conn, agent)
    assert b["period_cost_usd"] == Decimal("0.75")
    assert b["period_input_tokens"] == 4000
    assert b["period_output_tokens"] == 900
    assert b["period_calls"] == 2
    assert b["period_start"] == scalar(conn, "SELECT date_trunc('month', now())::date AS d")
    assert b["status"] == "ok"
    assert budget_notifications(conn, agent) == []


@pytest.mark.parametrize("limit_source", ["agent", "workspace"])
def test_budget_warns_once_and_exceeds_once(conn: Conn, limit_source: str) -> None:
    """Crossing 80% notifies budget.warned once, 100% budget.exceeded once, then silence."""
    agent = insert_agent(conn, "writer")
    if limit_source == "agent":
        set_budget(conn, agent, "10")
    else:
        conn.execute("UPDATE workspace SET default_monthly_budget_usd = 10")

    add_usage(conn, agent, "5")
    assert budget_notifications(conn, agent) == []
    assert budget(conn, agent)["status"] == "ok"

    add_usage(conn, agent, "3.5")
    assert budget_notifications(conn, agent) == ["budget.warned"]
    b = budget(conn, agent)
    assert b["status"] == "warned" and b["warned_at"] is not None and b["exceeded_at"] is None

    add_usage(conn, agent, "1")
    assert budget_notifications(conn, agent) == ["budget.warned"]

    add_usage(conn, agent, "1")
    for _ in range(3):
        add_usage(conn, agent, "2")

    assert sorted(budget_notifications(conn, agent)) == ["budget.exceeded", "budget.warned"]
    b = budget(conn, agent)
    assert b["status"] == "exceeded" and b["exceeded_at"] is not None
    assert b["period_cost_usd"] == Decimal("16.5")
    severity = {r["kind"]: r["severity"] for r in conn.execute("SELECT kind, severity FROM notifications").fetchall()}
    assert severity == {"budget.warned": "warning", "budget.exceeded": "error"}


def test_single_row_past_both_thresholds_warns_and_exceeds_once_each(conn: Conn) -> None:
    """One row jumping past the limit yields one budget.warned and one budget.exceeded."""
    agent = insert_agent(conn, "writer")
    set_budget(conn, agent, "10")

    add_usage(conn, agent, "25")
    add_usage(conn, agent, "1")

    assert sorted(budget_notifications(conn, agent)) == ["budget.exceeded", "budget.warned"]
    assert budget(conn, agent)["status"] == "exceeded"


def test_agent_warn_ratio_overrides_workspace_ratio(conn: Conn) -> None:
    """An agent's own warn_ratio decides when budget.warned fires."""
    agent = insert_agent(conn, "writer")
    set_budget(conn, agent, "10", warn_ratio="0.5")

    add_usage(conn, agent, "5")

    assert budget_notifications(conn, agent) == ["budget.warned"]


def test_new_month_resets_the_period_and_can_warn_again(conn: Conn) -> None:
    """A row dated in the next month starts a fresh period, which warns and exceeds anew."""
    agent = insert_agent(conn, "writer")
    set_budget(conn, agent, "10")
    add_usage(conn, agent, "12")
    assert len(budget_notifications(conn, agent)) == 2

    next_month = "date_trunc('month', now()) + interval '1 month' + interval '2 days'"
    add_usage(conn, agent, "3", input_tokens=7, output_tokens=1, occurred_at=next_month)

    b = budget(conn, agent)
    assert b["period_start"] == scalar(conn, "SELECT (date_trunc('month', now()) + interval '1 month')::date AS d")
    assert b["period_cost_usd"] == Decimal(3)
    assert (b["period_input_tokens"], b["period_output_tokens"], b["period_calls"]) == (7, 1, 1)
    assert (b["status"], b["warned_at"], b["exceeded_at"]) == ("ok", None, None)

    add_usage(conn, agent, "5.5", occurred_at=next_month)
    kinds = budget_notifications(conn, agent)
    assert kinds.count("budget.warned") == 2 and kinds.count("budget.exceeded") == 1
    assert budget(conn, agent)["status"] == "warned"


def test_usage_dated_before_the_current_period_is_not_counted(conn: Conn) -> None:
    """A late row for last month stays in agent_usage but not in this month's rollup."""
    agent = insert_agent(conn, "writer")
    set_budget(conn, agent, "10")
    add_usage(conn, agent, "1")

    add_usage(conn, agent, "50", occurred_at="date_trunc('month', now()) - interval '3 days'")

    b = budget(conn, agent)
    assert (b["period_cost_usd"], b["period_calls"]) == (Decimal(1), 1)
    assert b["period_start"] == scalar(conn, "SELECT date_trunc('month', now())::date AS d")
    assert budget_notifications(conn, agent) == []
    assert scalar(conn, "SELECT count(*) AS n FROM agent_usage") == 2


def test_agent_usage_is_append_only(conn: Conn) -> None:
    """Updating a usage record raises and leaves it (and the rollup) as it was."""
    agent = insert_agent(conn, "writer")
    add_usage(conn, agent, "1")

    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        conn.execute("UPDATE agent_usage SET cost_usd = 0")

    assert scalar(conn, "SELECT cost_usd FROM agent_usage") == Decimal(1)
    assert budget(conn, agent)["period_cost_usd"] == Decimal(1)
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="cannot be changed or deleted"):
        conn.execute("DELETE FROM agent_usage")
    assert scalar(conn, "SELECT count(*) FROM agent_usage") == 1


def test_deleting_an_agent_deletes_its_usage(conn: Conn) -> None:
    """Append-only stops direct deletes, not the cascade from deleting the agent."""
    agent = insert_agent(conn, "writer")
    add_usage(conn, agent, "1")
    conn.execute("DELETE FROM agents WHERE id = %s", [agent])
    assert scalar(conn, "SELECT count(*) FROM agent_usage") == 0


def test_budget_months_follow_the_workspace_time_zone(conn: Conn) -> None:
    """A call at 23:30 UTC on 31 January is February's in Tokyo, whatever the session's zone."""
    conn.execute("UPDATE workspace SET timezone = 'Asia/Tokyo' WHERE id = 1")
    conn.execute("SET TIME ZONE 'America/Los_Angeles'")
    agent = insert_agent(conn, "writer")
    conn.execute(
        "INSERT INTO agent_usage (agent_id, provider, model, cost_usd, occurred_at) "
        "VALUES (%s, 'p', 'm', 1, '2031-01-31 23:30:00+00')",
        [agent],
    )
    assert budget(conn, agent)["period_start"].isoformat() == "2031-02-01"
    conn.execute("UPDATE workspace SET timezone = 'UTC' WHERE id = 1")
    assert scalar(conn, "SELECT hq_month_start('2031-01-31 23:30:00+00')").isoformat() == "2031-01-01"


def test_concurrent_usage_of_one_agent_sums_exactly(conn: Conn, connect: Connect) -> None:
    """Rows inserted at once from several connections are all counted, and notify once each."""
    agent = insert_agent(conn, "writer")
    set_budget(conn, agent, "1")
    n, per_thread = 4, 25
    conns = [connect() for _ in range(n)]

    def report(i: int) -> None:
        for _ in range(per_thread):
            add_usage(conns[i], agent, "0.01", input_tokens=3, output_tokens=2)

    for f in run_together(n, report):
        f.result()

    b = budget(conn, agent)
    assert b["period_cost_usd"] == Decimal("1.00")
    assert b["period_calls"] == n * per_thread
    assert (b["period_input_tokens"], b["period_output_tokens"]) == (300, 200)
    assert b["status"] == "exceeded"
    assert sorted(budget_notifications(conn, agent)) == ["budget.exceeded", "budget.warned"]


def test_concurrent_first_usage_creates_one_budget_row(conn: Conn, connect: Connect) -> None:
    """Agents with no budget row yet: simultaneous first rows create one row and lose nothing."""
    agent = insert_agent(conn, "writer")
    n = 4
    conns = [connect() for _ in range(n)]

    for f in run_together(n, lambda i: add_usage(conns[i], agent, "0.5")):
        f.result()

    assert scalar(conn, "SELECT count(*) AS n FROM agent_budgets") == 1
    assert budget(conn, agent)["period_cost_usd"] == Decimal(2)


def test_check_agent_budget_blocks_once_exceeded_with_hard_stop(conn: Conn) -> None:
    """allowed flips to false when spend reaches the limit and hard_stop is on."""
    agent = insert_agent(conn, "writer")
    set_budget(conn, agent, "10")
    add_usage(conn, agent, "9")

    before = check_budget(conn, agent)
    assert before["allowed"] is True and before["status"] == "warned"
    assert (before["spent_usd"], before["limit_usd"]) == (Decimal(9), Decimal(10))

    add_usage(conn, agent, "1")

    after = check_budget(conn, agent)
    assert after["allowed"] is False and after["status"] == "exceeded"
    assert after["period_start"] == scalar(conn, "SELECT date_trunc('month', now())::date AS d")


def test_check_agent_budget_allows_without_hard_stop_or_limit(conn: Conn) -> None:
    """Without hard_stop an exceeded agent may go on; without any limit it always may."""
    soft = insert_agent(conn, "soft")
    set_budget(conn, soft, "10", hard_stop=False)
    add_usage(conn, soft, "20")
    unlimited = insert_agent(conn, "unlimited")
    add_usage(conn, unlimited, "1000")
    fresh = insert_agent(conn, "fresh")

    soft_check = check_budget(conn, soft)
    assert soft_check["allowed"] is True and soft_check["status"] == "exceeded"
    unlimited_check = check_budget(conn, unlimited)
    assert unlimited_check["allowed"] is True and unlimited_check["limit_usd"] is None
    assert unlimited_check["spent_usd"] == Decimal(1000)
    assert check_budget(conn, fresh)["allowed"] is True

    conn.execute("UPDATE workspace SET default_monthly_budget_usd = 500")
    assert check_budget(conn, unlimited)["allowed"] is False
    assert check_budget(conn, fresh)["allowed"] is True


def test_recompute_agent_budget_rebuilds_the_sums(conn: Conn) -> None:
    """recompute_agent_budget restores the month's sums from agent_usage, old months excluded."""
    agent = insert_agent(conn, "writer")
    add_usage(conn, agent, "1.25", input_tokens=10, output_tokens=1)
    add_usage(conn, agent, "2.50", input_tokens=20, output_tokens=2)
    add_usage(conn, agent, "40", occurred_at="date_trunc('month', now()) - interval '1 day'")
    conn.execute(
        "UPDATE agent_budgets SET period_cost_usd = 0, period_input_tokens = 0, "
        "period_output_tokens = 0, period_calls = 0"
    )

    row = one(conn, "SELECT * FROM recompute_agent_budget(%s)", [agent])

    for b in (row, budget(conn, agent)):
        assert b["period_cost_usd"] == Decimal("3.75")
        assert (b["period_input_tokens"], b["period_output_tokens"]) == (30, 3)
        assert b["period_calls"] == 2
        assert b["period_start"] == scalar(conn, "SELECT date_trunc('month', now())::date AS d")


def test_recompute_after_limit_change_rederives_status(conn: Conn) -> None:
    """A raised limit plus recompute lowers the status; spend past the new limit raises it again."""
    agent = insert_agent(conn, "writer")
    set_budget(conn, agent, "10")
    add_usage(conn, agent, "11")
    assert check_budget(conn, agent)["allowed"] is False

    conn.execute("UPDATE agent_budgets SET monthly_limit_usd = 20 WHERE agent_id = %s", [agent])
    assert one(conn, "SELECT * FROM recompute_agent_budget(%s)", [agent])["status"] == "ok"
    assert check_budget(conn, agent)["allowed"] is True
    assert len(budget_notifications(conn, agent)) == 2

    add_usage(conn, agent, "6")
    assert budget(conn, agent)["status"] == "warned"
    add_usage(conn, agent, "4")

    assert budget(conn, agent)["status"] == "exceeded"
    check = check_budget(conn, agent)
    assert check["allowed"] is False and check["status"] == "exceeded"
    assert len(budget_notifications(conn, agent)) == 2
