"""Behaviour of the schema's functions and triggers, on a real PostgreSQL with pgvector.

Each test gets a fresh, fully migrated database (see conftest.py). Concurrency tests open
further connections with `connect` and run the competing side in a thread; where the
interleaving matters, the main thread waits until the other backend is blocked on a lock
(seen in pg_stat_activity) before it commits, so no test relies on sleeping.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import errors

from .factories import add_document

Conn = psycopg.Connection[dict[str, Any]]
Connect = Callable[[], Conn]

T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ISOLATION_LEVELS = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]


# ---- helpers ------------------------------------------------------------------------------


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


def set_manager(conn: Conn, agent: UUID, manager: UUID | None) -> None:
    conn.execute("UPDATE agents SET reports_to_id = %s WHERE id = %s", [manager, agent])


def agents_snapshot(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM agents ORDER BY slug").fetchall()


def insert_contact(conn: Conn, first_name: str) -> UUID:
    return insert_returning_id(conn, "INSERT INTO contacts (first_name) VALUES (%s) RETURNING id", [first_name])


def insert_organization(conn: Conn, name: str) -> UUID:
    return insert_returning_id(conn, "INSERT INTO organizations (name) VALUES (%s) RETURNING id", [name])


def add_interaction(conn: Conn, contact: UUID, occurred_at: datetime, organization: UUID | None = None) -> UUID:
    return insert_returning_id(
        conn,
        "INSERT INTO interactions (contact_id, organization_id, occurred_at) VALUES (%s, %s, %s) RETURNING id",
        [contact, organization, occurred_at],
    )


def contact_stats(conn: Conn, contact: UUID) -> tuple[datetime | None, int]:
    """The contact's last interaction and count of interactions, as kept by the triggers."""
    return row_values(conn, "SELECT last_interaction_at, interaction_count FROM contacts WHERE id = %s", [contact])


def contact_truth(conn: Conn, contact: UUID) -> tuple[datetime | None, int]:
    """The contact's last interaction and count of interactions, counted from the interactions."""
    sql = "SELECT max(occurred_at), count(*)::integer FROM interactions WHERE contact_id = %s"
    return row_values(conn, sql, [contact])


def org_last(conn: Conn, organization: UUID) -> datetime | None:
    row = one(conn, "SELECT last_interaction_at FROM organizations WHERE id = %s", [organization])
    last: datetime | None = row["last_interaction_at"]
    return last


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


def spawn(conn: Conn, now: datetime, max_per_series: int = 10) -> int:
    return int(scalar(conn, "SELECT spawn_due_task_series(%s, %s) AS n", [now, max_per_series]))


def series_runs(conn: Conn, series: UUID) -> list[datetime]:
    return column(conn, "SELECT series_run_at FROM tasks WHERE series_id = %s ORDER BY series_run_at", [series])


def series_row(conn: Conn, series: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM task_series WHERE id = %s", [series])


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


def insert_document(conn: Conn, title: str = "Playbook", text: str = "# Hello") -> UUID:
    return add_document(conn, title, text)


def document(conn: Conn, doc: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM documents WHERE id = %s", [doc])


def insert_chunk(conn: Conn, doc: UUID, index: int, text: str = "passage") -> int:
    return int(
        scalar(
            conn,
            "INSERT INTO knowledge_chunks (document_id, chunk_index, content, indexed_text, "
            "content_hash) VALUES (%s, %s, %s, %s, hq_sha256_hex(%s)) RETURNING id",
            [doc, index, text, text, text],
        )
    )


def vector_literal(dims: int, value: float = 0.1) -> str:
    return "[" + ",".join([str(value)] * dims) + "]"


def insert_embedding(conn: Conn, chunk: int, model: str, dims: int) -> None:
    conn.execute(
        "INSERT INTO chunk_embeddings (chunk_id, model, embedding, content_hash) VALUES (%s, %s, %s::vector, 'h')",
        [chunk, model, vector_literal(dims)],
    )


def insert_folder(conn: Conn, table: str, name: str, parent: UUID | None = None) -> UUID:
    assert table in ("document_folders", "asset_folders")
    return insert_returning_id(
        conn,
        f"INSERT INTO {table} (name, parent_id) VALUES (%s, %s) RETURNING id",
        [name, parent],
    )


def drain_until_sentinel(listener: Conn, sender: Conn, channel: str) -> list[str]:
    """Payloads `listener` receives on `channel` before a sentinel `sender` sends last.

    A session's notifications arrive in commit order, so whatever `sender` notified before
    the sentinel has arrived by the time the sentinel does: no waiting on a timeout.
    """
    sender.execute("SELECT pg_notify(%s, 'sentinel')", [channel])
    payloads: list[str] = []
    for n in listener.notifies(timeout=10):
        if n.channel != channel:
            continue
        if n.payload == "sentinel":
            return payloads
        payloads.append(n.payload)
    raise AssertionError("sentinel notification never arrived")


# ---- 006 gateways -------------------------------------------------------------------------


def create_token(conn: Conn, label: str | None = "laptop") -> str:
    return str(scalar(conn, "SELECT create_gateway_token(%s) AS token", [label]))


def consume(conn: Conn, token: str | None, name: str = "gw-1") -> dict[str, Any]:
    return one(conn, "SELECT * FROM consume_gateway_token(%s, %s, 'host-1')", [token, name])


def gateway_count(conn: Conn) -> int:
    return int(scalar(conn, "SELECT count(*) AS n FROM gateways"))


def test_create_gateway_token_stores_only_the_sha256_of_the_token(conn: Conn) -> None:
    """The plain token is returned once; the table keeps its sha256 hex and nothing else of it."""
    token = create_token(conn)
    other = create_token(conn)

    assert token.startswith("hqgw_") and len(token) >= 60
    assert token != other
    rows = conn.execute(
        "SELECT t.*, row_to_json(t)::text AS as_text FROM gateway_registration_tokens t ORDER BY created_at"
    ).fetchall()
    assert len(rows) == 2
    hashes = {r["token_hash"] for r in rows}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in (token, other)}
    for r in rows:
        assert token not in r["as_text"] and other not in r["as_text"]
        assert r["label"] == "laptop"
        assert r["used_at"] is None
        assert timedelta(minutes=59) < r["expires_at"] - r["created_at"] <= HOUR


def test_consume_gateway_token_registers_one_gateway(conn: Conn) -> None:
    """A valid token yields an online gateway and is marked used and linked to it."""
    token = create_token(conn)

    gateway = consume(conn, token, name="  gw-1  ")

    assert gateway["name"] == "gw-1"
    assert gateway["hostname"] == "host-1"
    assert gateway["status"] == "online"
    assert gateway["last_heartbeat_at"] is not None
    row = one(conn, "SELECT used_at, gateway_id FROM gateway_registration_tokens")
    assert row["used_at"] is not None
    assert row["gateway_id"] == gateway["id"]
    assert gateway_count(conn) == 1


def test_consume_gateway_token_twice_raises(conn: Conn) -> None:
    """A token is single-use: the second attempt raises and registers nothing."""
    token = create_token(conn)
    first = consume(conn, token)

    with pytest.raises(errors.InvalidAuthorizationSpecification):
        consume(conn, token, name="gw-2")

    assert gateway_count(conn) == 1
    assert scalar(conn, "SELECT gateway_id FROM gateway_registration_tokens") == first["id"]


def test_consume_expired_gateway_token_raises(conn: Conn) -> None:
    """A token past its expires_at is refused and stays unused."""
    token = create_token(conn)
    conn.execute(
        "UPDATE gateway_registration_tokens "
        "SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 second'"
    )

    with pytest.raises(errors.InvalidAuthorizationSpecification):
        consume(conn, token)

    assert gateway_count(conn) == 0
    assert scalar(conn, "SELECT used_at FROM gateway_registration_tokens") is None


@pytest.mark.parametrize("wrong", ["hqgw_" + "0" * 64, "", None])
def test_consume_wrong_gateway_token_raises(conn: Conn, wrong: str | None) -> None:
    """An unknown, empty or NULL token is refused; the real token stays usable."""
    token = create_token(conn)

    with pytest.raises(errors.InvalidAuthorizationSpecification):
        consume(conn, wrong)

    assert gateway_count(conn) == 0
    assert consume(conn, token)["name"] == "gw-1"


def test_concurrent_consumers_of_one_token_register_one_gateway(conn: Conn, connect: Connect) -> None:
    """Of several callers released at once with the same token, exactly one succeeds."""
    token = create_token(conn)
    n = 4
    conns = [connect() for _ in range(n)]

    futures = run_together(n, lambda i: consume(conns[i], token, name=f"gw-{i}"))

    succeeded = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    assert len(succeeded) == 1
    assert all(isinstance(e, errors.InvalidAuthorizationSpecification) for e in failed)
    assert gateway_count(conn) == 1
    assert scalar(conn, "SELECT gateway_id FROM gateway_registration_tokens") == succeeded[0]["id"]


def test_consumer_waiting_on_a_claimed_token_fails_once_the_claim_commits(conn: Conn, connect: Connect) -> None:
    """A second consumer blocked behind an uncommitted claim re-checks the token and fails."""
    token = create_token(conn)
    first, second = connect(), connect()
    first.execute("BEGIN")
    consume(first, token, name="gw-first")

    pending = run_in_thread(lambda: consume(second, token, name="gw-second"))
    wait_until_blocked(conn, second.info.backend_pid)
    first.execute("COMMIT")

    with pytest.raises(errors.InvalidAuthorizationSpecification):
        pending.result(timeout=10)
    assert [r["name"] for r in conn.execute("SELECT name FROM gateways").fetchall()] == ["gw-first"]


# ---- 007 agents ---------------------------------------------------------------------------


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


# ---- 008 interactions ---------------------------------------------------------------------


def test_interactions_keep_contact_and_organization_last_interaction(conn: Conn) -> None:
    """Inserts raise the count and move last_interaction_at to the newest occurred_at."""
    contact = insert_contact(conn, "Ada")
    org = insert_organization(conn, "Acme")
    assert contact_stats(conn, contact) == (None, 0)

    add_interaction(conn, contact, T0, org)
    assert contact_stats(conn, contact) == (T0, 1)
    assert org_last(conn, org) == T0

    add_interaction(conn, contact, T0 + HOUR, org)
    assert contact_stats(conn, contact) == (T0 + HOUR, 2)
    assert org_last(conn, org) == T0 + HOUR


def test_backdated_interaction_counts_but_does_not_move_last_interaction(conn: Conn) -> None:
    """An insert or an update dated in the past keeps last_interaction_at at the true maximum."""
    contact = insert_contact(conn, "Ada")
    org = insert_organization(conn, "Acme")
    add_interaction(conn, contact, T0, org)
    latest = add_interaction(conn, contact, T0 + HOUR, org)

    add_interaction(conn, contact, T0 - 24 * HOUR, org)
    assert contact_stats(conn, contact) == (T0 + HOUR, 3)
    assert org_last(conn, org) == T0 + HOUR

    conn.execute("UPDATE interactions SET occurred_at = %s WHERE id = %s", [T0 - 48 * HOUR, latest])
    assert contact_stats(conn, contact) == (T0, 3)
    assert org_last(conn, org) == T0


def test_moving_an_interaction_to_another_contact_updates_both(conn: Conn) -> None:
    """Changing contact_id / organization_id recomputes the old and the new owner."""
    ada, bob = insert_contact(conn, "Ada"), insert_contact(conn, "Bob")
    acme, initech = insert_organization(conn, "Acme"), insert_organization(conn, "Initech")
    add_interaction(conn, ada, T0, acme)
    moved = add_interaction(conn, ada, T0 + HOUR, acme)
    add_interaction(conn, bob, T0 - HOUR, initech)

    conn.execute(
        "UPDATE interactions SET contact_id = %s, organization_id = %s WHERE id = %s",
        [bob, initech, moved],
    )

    assert contact_stats(conn, ada) == (T0, 1)
    assert contact_stats(conn, bob) == (T0 + HOUR, 2)
    assert org_last(conn, acme) == T0
    assert org_last(conn, initech) == T0 + HOUR

    conn.execute("UPDATE interactions SET organization_id = NULL WHERE id = %s", [moved])
    assert org_last(conn, initech) == T0 - HOUR


def test_deleting_interactions_recomputes_contact_and_organization(conn: Conn) -> None:
    """Deletes lower the count and fall back to the newest remaining interaction, or NULL."""
    contact = insert_contact(conn, "Ada")
    org = insert_organization(conn, "Acme")
    older = add_interaction(conn, contact, T0, org)
    newer = add_interaction(conn, contact, T0 + HOUR, org)

    conn.execute("DELETE FROM interactions WHERE id = %s", [newer])
    assert contact_stats(conn, contact) == (T0, 1)
    assert org_last(conn, org) == T0

    conn.execute("DELETE FROM interactions WHERE id = %s", [older])
    assert contact_stats(conn, contact) == (None, 0)
    assert org_last(conn, org) is None


def test_deleting_an_organization_or_contact_with_interactions(conn: Conn) -> None:
    """Deleting an organization detaches its interactions; deleting a contact removes them."""
    ada, bob = insert_contact(conn, "Ada"), insert_contact(conn, "Bob")
    org = insert_organization(conn, "Acme")
    add_interaction(conn, ada, T0, org)
    add_interaction(conn, bob, T0 + HOUR, org)

    conn.execute("DELETE FROM organizations WHERE id = %s", [org])
    assert scalar(conn, "SELECT count(*) AS n FROM interactions WHERE organization_id IS NULL") == 2
    assert contact_stats(conn, ada) == (T0, 1)

    conn.execute("DELETE FROM contacts WHERE id = %s", [ada])
    assert scalar(conn, "SELECT count(*) AS n FROM interactions") == 1
    assert contact_stats(conn, bob) == (T0 + HOUR, 1)


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_concurrent_interactions_keep_counts_right(conn: Conn, connect: Connect, isolation: str) -> None:
    """Two overlapping transactions add interactions for one contact and one organization.

    Whatever commits, the contact's count and last_interaction_at and the organization's
    last_interaction_at match the interactions table: no update is lost.
    """
    ada, bob = insert_contact(conn, "Ada"), insert_contact(conn, "Bob")
    org = insert_organization(conn, "Acme")
    first, second = connect(), connect()
    first.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    second.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    second.execute("SELECT count(*) FROM interactions")
    add_interaction(first, ada, T0 + HOUR, org)
    add_interaction(first, bob, T0 + 2 * HOUR, org)

    pending = commit_in_thread(second, lambda: add_interaction(second, ada, T0, org))
    wait_until_blocked(conn, second.info.backend_pid)
    first.execute("COMMIT")
    try:
        pending.result(timeout=10)
    except errors.SerializationFailure:
        assert isolation != "READ COMMITTED"

    for contact in (ada, bob):
        assert contact_stats(conn, contact) == contact_truth(conn, contact)
    assert org_last(conn, org) == T0 + 2 * HOUR
    if isolation == "READ COMMITTED":
        assert contact_stats(conn, ada) == (T0 + HOUR, 2)


# ---- 009 tasks and series -----------------------------------------------------------------


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


# ---- 015 usage and budgets ----------------------------------------------------------------


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


# ---- 017 setup wizard ---------------------------------------------------------------------


def workspace(conn: Conn) -> dict[str, Any]:
    return one(conn, "SELECT * FROM workspace")


def audit_rows(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM audit_log ORDER BY id").fetchall()


def complete_setup(
    conn: Conn,
    name: str | None = "Acme HQ",
    email: str | None = "ada@example.com",
    timezone: str | None = "Europe/Paris",
) -> dict[str, Any]:
    return one(
        conn,
        "SELECT * FROM complete_setup(%s, 'Ada', %s, %s, 250, '{\"theme\": \"dark\"}')",
        [name, email, timezone],
    )


def test_complete_setup_fills_the_workspace_and_audits_once(conn: Conn) -> None:
    """complete_setup records the profile, marks setup complete and writes one audit row."""
    assert workspace(conn)["setup_completed_at"] is None

    returned = complete_setup(conn, name="  Acme HQ  ")

    ws = workspace(conn)
    assert returned == ws
    assert ws["name"] == "Acme HQ"
    assert (ws["owner_name"], ws["owner_email"]) == ("Ada", "ada@example.com")
    assert ws["timezone"] == "Europe/Paris"
    assert ws["default_monthly_budget_usd"] == Decimal(250)
    assert ws["preferences"] == {"theme": "dark"}
    assert ws["setup_step"] == "done"
    assert ws["setup_completed_at"] is not None
    audit = audit_rows(conn)
    assert len(audit) == 1
    assert audit[0]["action"] == "workspace.setup_completed"
    assert audit[0]["actor_kind"] == "operator"
    assert audit[0]["details"] == {"name": "Acme HQ", "owner_email": "ada@example.com"}


def test_complete_setup_twice_raises_and_changes_nothing(conn: Conn) -> None:
    """A replayed setup request is refused; the workspace and audit log stay as they were."""
    complete_setup(conn)
    before, audit_before = workspace(conn), audit_rows(conn)

    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="already completed"):
        complete_setup(conn, name="Other", email="eve@example.com", timezone="UTC")

    assert workspace(conn) == before
    assert audit_rows(conn) == audit_before


@pytest.mark.parametrize(
    "bad",
    [
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"email": "not-an-email"},
        {"email": "two@@example.com"},
        {"email": "ada lovelace@example.com"},
        {"timezone": "Mars/Olympus_Mons"},
        {"timezone": None},
    ],
)
def test_complete_setup_rejects_bad_input(conn: Conn, bad: dict[str, Any]) -> None:
    """Empty name, malformed email or unknown time zone raise and leave setup incomplete."""
    before = workspace(conn)

    with pytest.raises(errors.InvalidParameterValue):
        complete_setup(conn, **bad)

    assert workspace(conn) == before
    assert audit_rows(conn) == []


# ---- 011 knowledge: folders ---------------------------------------------------------------


@pytest.mark.parametrize("table", ["document_folders", "asset_folders"])
def test_folder_cannot_move_under_its_own_descendant(conn: Conn, table: str) -> None:
    """Moving A under its grandchild C (or under itself) raises; the tree is unchanged."""
    a = insert_folder(conn, table, "A")
    b = insert_folder(conn, table, "B", a)
    c = insert_folder(conn, table, "C", b)
    elsewhere = insert_folder(conn, table, "Elsewhere")
    before = conn.execute(f"SELECT * FROM {table} ORDER BY name").fetchall()

    with pytest.raises(errors.CheckViolation):
        conn.execute(f"UPDATE {table} SET parent_id = %s WHERE id = %s", [c, a])
    with pytest.raises(errors.CheckViolation):
        conn.execute(f"UPDATE {table} SET parent_id = %s WHERE id = %s", [b, a])
    with pytest.raises(errors.CheckViolation):
        conn.execute(f"UPDATE {table} SET parent_id = %s WHERE id = %s", [a, a])

    assert conn.execute(f"SELECT * FROM {table} ORDER BY name").fetchall() == before
    conn.execute(f"UPDATE {table} SET parent_id = %s WHERE id = %s", [elsewhere, a])
    assert scalar(conn, f"SELECT parent_id FROM {table} WHERE id = %s", [a]) == elsewhere


@pytest.mark.parametrize("table", ["document_folders", "asset_folders"])
@pytest.mark.parametrize("isolation", ISOLATION_LEVELS)
def test_concurrent_opposite_folder_moves_cannot_both_commit(
    conn: Conn, connect: Connect, table: str, isolation: str
) -> None:
    """Moving A under B and B under A in overlapping transactions: the second fails."""
    a = insert_folder(conn, table, "A")
    b = insert_folder(conn, table, "B")
    first, second = connect(), connect()
    first.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    second.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    second.execute(f"SELECT count(*) FROM {table}")
    first.execute(f"UPDATE {table} SET parent_id = %s WHERE id = %s", [b, a])

    pending = commit_in_thread(
        second, lambda: second.execute(f"UPDATE {table} SET parent_id = %s WHERE id = %s", [a, b])
    )
    wait_until_blocked(conn, second.info.backend_pid)
    first.execute("COMMIT")

    with pytest.raises((errors.CheckViolation, errors.SerializationFailure)):
        pending.result(timeout=10)
    parents = {r["name"]: r["parent_id"] for r in conn.execute(f"SELECT * FROM {table}")}
    assert parents == {"A": b, "B": None}


@pytest.mark.parametrize("table", ["document_folders", "asset_folders"])
def test_sibling_folder_names_are_unique_ignoring_case(conn: Conn, table: str) -> None:
    """'Sales' and 'sales' cannot be siblings, at the root or below; cousins may share a name."""
    insert_folder(conn, table, "Sales")
    with pytest.raises(errors.UniqueViolation):
        insert_folder(conn, table, "sales")

    parent = insert_folder(conn, table, "Ops")
    other = insert_folder(conn, table, "Finance")
    insert_folder(conn, table, "Reports", parent)
    with pytest.raises(errors.UniqueViolation):
        insert_folder(conn, table, "REPORTS", parent)
    moving = insert_folder(conn, table, "reports", other)
    insert_folder(conn, table, "Sales", parent)

    with pytest.raises(errors.UniqueViolation):
        conn.execute(f"UPDATE {table} SET parent_id = %s WHERE id = %s", [parent, moving])


def test_document_folder_path_names_the_folders_from_the_root(conn: Conn) -> None:
    """document_folder_path / asset_folder_path give '/A/B' for B inside A."""
    a = insert_folder(conn, "document_folders", "Operations")
    b = insert_folder(conn, "document_folders", "Sales", a)
    c = insert_folder(conn, "document_folders", "EMEA", b)

    assert scalar(conn, "SELECT document_folder_path(%s) AS p", [b]) == "/Operations/Sales"
    assert scalar(conn, "SELECT document_folder_path(%s) AS p", [c]) == "/Operations/Sales/EMEA"
    assert scalar(conn, "SELECT document_folder_path(%s) AS p", [a]) == "/Operations"
    x = insert_folder(conn, "asset_folders", "Media")
    y = insert_folder(conn, "asset_folders", "Logos", x)
    assert scalar(conn, "SELECT asset_folder_path(%s) AS p", [y]) == "/Media/Logos"


# ---- 011 knowledge: documents and embeddings ----------------------------------------------


def test_document_content_change_requeues_embedding_and_notifies(conn: Conn, connect: Connect) -> None:
    """A title or content change bumps content_version, resets to pending, NOTIFYs hq_embedding."""
    listener = connect()
    listener.execute("LISTEN hq_embedding")
    doc = insert_document(conn)
    inserted = drain_until_sentinel(listener, conn, "hq_embedding")
    assert [json.loads(p) for p in inserted] == [{"kind": "document", "id": str(doc)}]
    conn.execute(
        "UPDATE documents SET embedding_status = 'indexed', embedding_attempts = 2, "
        "embedding_error = 'old' WHERE id = %s",
        [doc],
    )
    assert drain_until_sentinel(listener, conn, "hq_embedding") == []

    conn.execute("UPDATE documents SET title = 'Playbook v2' WHERE id = %s", [doc])

    d = document(conn, doc)
    assert d["content_version"] == 2
    assert d["embedding_status"] == "pending"
    assert (d["embedding_attempts"], d["embedding_error"]) == (0, None)
    payloads = drain_until_sentinel(listener, conn, "hq_embedding")
    assert [json.loads(p) for p in payloads] == [{"kind": "document", "id": str(doc)}]

    conn.execute("UPDATE documents SET embedding_status = 'indexed' WHERE id = %s", [doc])
    drain_until_sentinel(listener, conn, "hq_embedding")
    conn.execute("UPDATE documents SET content_text = '# Changed' WHERE id = %s", [doc])
    assert document(conn, doc)["content_version"] == 3
    assert document(conn, doc)["embedding_status"] == "pending"
    assert len(drain_until_sentinel(listener, conn, "hq_embedding")) == 1


def test_document_tag_or_pin_change_does_not_requeue(conn: Conn, connect: Connect) -> None:
    """Changing only tags, pinned or metadata keeps the version, the status and sends no NOTIFY."""
    listener = connect()
    listener.execute("LISTEN hq_embedding")
    doc = insert_document(conn)
    conn.execute("UPDATE documents SET embedding_status = 'indexed' WHERE id = %s", [doc])
    drain_until_sentinel(listener, conn, "hq_embedding")

    conn.execute(
        "UPDATE documents SET tags = ARRAY['boot:all'], pinned = true, metadata = '{\"a\": 1}' WHERE id = %s",
        [doc],
    )

    d = document(conn, doc)
    assert (d["content_version"], d["embedding_status"]) == (1, "indexed")
    assert (d["tags"], d["pinned"]) == (["boot:all"], True)
    assert drain_until_sentinel(listener, conn, "hq_embedding") == []


def test_deleting_a_document_deletes_its_comments_chunks_and_embeddings(conn: Conn) -> None:
    """Comments, passages and their vectors go with the document; another document's stay."""
    doc, keep = insert_document(conn, "Gone"), insert_document(conn, "Kept")
    for d in (doc, keep):
        conn.execute(
            "INSERT INTO comments (entity_type, entity_id, body) VALUES ('document', %s, 'hi')",
            [d],
        )
        for i in range(2):
            insert_embedding(conn, insert_chunk(conn, d, i), "all-MiniLM-L6-v2", 384)

    conn.execute("DELETE FROM documents WHERE id = %s", [doc])

    for table, column in [("comments", "entity_id"), ("knowledge_chunks", "document_id")]:
        assert scalar(conn, f"SELECT count(*) AS n FROM {table} WHERE {column} = %s", [doc]) == 0
        assert scalar(conn, f"SELECT count(*) AS n FROM {table} WHERE {column} = %s", [keep]) > 0
    assert scalar(conn, "SELECT count(*) AS n FROM chunk_embeddings") == 2
    assert (
        scalar(
            conn,
            "SELECT count(*) AS n FROM chunk_embeddings e JOIN knowledge_chunks k ON k.id = e.chunk_id "
            "WHERE k.document_id = %s",
            [keep],
        )
        == 2
    )


def hnsw_indexes(conn: Conn) -> dict[str, str]:
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes "
        "WHERE tablename = 'chunk_embeddings' AND indexdef ILIKE '%%USING hnsw%%'"
    ).fetchall()
    return {r["indexname"]: r["indexdef"] for r in rows}


def uses_index(conn: Conn, model: str, dims: int, index: str) -> bool:
    """Whether a nearest-neighbour query for `model` is planned on `index`."""
    with conn.transaction():
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute(f"SET LOCAL {setting} = off")
        plan = conn.execute(
            f"EXPLAIN SELECT chunk_id FROM chunk_embeddings WHERE model = %s "
            f"ORDER BY embedding::vector({dims}) <=> %s::vector({dims}) LIMIT 5",
            [model, vector_literal(dims)],
        ).fetchall()
    return any(index in r["QUERY PLAN"] for r in plan)


def test_default_model_embedding_inserts_and_has_a_partial_hnsw_index(conn: Conn) -> None:
    """A 384-dim vector for all-MiniLM-L6-v2 inserts; its partial HNSW index exists and is used."""
    chunk = insert_chunk(conn, insert_document(conn), 0)

    insert_embedding(conn, chunk, "all-MiniLM-L6-v2", 384)

    assert scalar(conn, "SELECT vector_dims(embedding) AS d FROM chunk_embeddings") == 384
    name = scalar(conn, "SELECT hq_embedding_index_name('all-MiniLM-L6-v2') AS n")
    indexes = hnsw_indexes(conn)
    assert name in indexes
    assert "vector(384)" in indexes[name] and "vector_cosine_ops" in indexes[name]
    assert "WHERE (model = 'all-MiniLM-L6-v2'::text)" in indexes[name]
    assert uses_index(conn, "all-MiniLM-L6-v2", 384, name)
    with pytest.raises(psycopg.errors.DataException):
        insert_embedding(conn, insert_chunk(conn, insert_document(conn, "Other"), 0), "all-MiniLM-L6-v2", 383)


def test_ensure_embedding_index_for_a_new_model_creates_its_own_partial_index(
    conn: Conn,
) -> None:
    """hq_ensure_embedding_index builds a per-model HNSW index at that model's dimension."""
    conn.execute("INSERT INTO embedding_models (name, dims) VALUES ('bge-base-en-v1.5', 768)")
    default_name = scalar(conn, "SELECT hq_embedding_index_name('all-MiniLM-L6-v2') AS n")

    name = scalar(conn, "SELECT hq_ensure_embedding_index('bge-base-en-v1.5') AS n")

    indexes = hnsw_indexes(conn)
    assert set(indexes) == {default_name, name}
    assert "vector(768)" in indexes[name]
    assert "WHERE (model = 'bge-base-en-v1.5'::text)" in indexes[name]
    assert scalar(conn, "SELECT hq_ensure_embedding_index('bge-base-en-v1.5') AS n") == name
    assert len(hnsw_indexes(conn)) == 2

    chunk = insert_chunk(conn, insert_document(conn), 0)
    insert_embedding(conn, chunk, "bge-base-en-v1.5", 768)
    insert_embedding(conn, chunk, "all-MiniLM-L6-v2", 384)
    assert uses_index(conn, "bge-base-en-v1.5", 768, name)

    with pytest.raises(errors.InvalidParameterValue):
        conn.execute("SELECT hq_ensure_embedding_index('no-such-model')")


def test_embedding_dimension_must_match_its_model_even_without_an_index(conn: Conn) -> None:
    """Models over HNSW's 2000-dimension limit get no index; the dimension check still holds."""
    conn.execute("INSERT INTO embedding_models (name, dims) VALUES ('wide', 3072)")
    assert scalar(conn, "SELECT hq_ensure_embedding_index('wide') AS n") is None
    chunk = insert_chunk(conn, insert_document(conn), 0)
    with pytest.raises(errors.DataException, match="embedding for model wide has 384 dimensions, expected 3072"):
        insert_embedding(conn, chunk, "wide", 384)
    insert_embedding(conn, chunk, "wide", 3072)
    assert scalar(conn, "SELECT count(*) FROM chunk_embeddings WHERE model = 'wide'") == 1
