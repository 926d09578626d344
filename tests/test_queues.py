"""Behaviour of the two work queues: the gateways' command queue (014_agent_commands) and the
agents' inbox with its built-in triggers and automation rules (013_agent_inbox).

Time is simulated by moving lease_expires_at / available_at into the past, never by sleeping.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]
Connect = Callable[[], Conn]
LeaseBatch = Callable[[Conn, int], list[UUID]]

NOT_LEASED = psycopg.errors.ObjectNotInPrerequisiteState  # SQLSTATE 55000


# ---- helpers ------------------------------------------------------------------------------------


def one(conn: Conn, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> dict[str, Any]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return row


def scalar(conn: Conn, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
    return next(iter(one(conn, sql, params).values()))


def add_gateway(conn: Conn, name: str = "gw") -> UUID:
    return scalar(conn, "INSERT INTO gateways (name) VALUES (%s) RETURNING id", (name,))  # type: ignore[no-any-return]


def add_agent(conn: Conn, slug: str, gateway_id: UUID | None = None) -> UUID:
    return scalar(  # type: ignore[no-any-return]
        conn,
        "INSERT INTO agents (slug, name, gateway_id) VALUES (%s, %s, %s) RETURNING id",
        (slug, slug.title(), gateway_id),
    )


def add_task(conn: Conn, title: str, assignee: UUID | None = None, status: str = "todo") -> UUID:
    return scalar(  # type: ignore[no-any-return]
        conn,
        "INSERT INTO tasks (title, assignee_agent_id, status) VALUES (%s, %s, %s) RETURNING id",
        (title, assignee, status),
    )


def add_comment(
    conn: Conn,
    task_id: UUID,
    body: str = "a comment",
    author: UUID | None = None,
    mentions: list[UUID] | None = None,
    entity_type: str = "task",
) -> UUID:
    return scalar(  # type: ignore[no-any-return]
        conn,
        """INSERT INTO comments (entity_type, entity_id, author_kind, author_agent_id, body, mentions)
           VALUES (%s, %s, %s, %s, %s, %s::uuid[]) RETURNING id""",
        (entity_type, task_id, "agent" if author else "operator", author, body, mentions or []),
    )


def add_contact(conn: Conn, first: str | None, last: str | None, **cols: Any) -> UUID:
    names = ["first_name", "last_name", *cols]
    values = [first, last, *cols.values()]
    return scalar(  # type: ignore[no-any-return]
        conn,
        f"INSERT INTO contacts ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) RETURNING id",
        tuple(values),
    )


def add_rule(conn: Conn, event: str, target: UUID | None = None, **cols: Any) -> UUID:
    cols = {"name": f"rule {event}", "event": event, "target_agent_id": target, **cols}
    if "conditions" in cols:
        cols["conditions"] = Jsonb(cols["conditions"])
    return scalar(  # type: ignore[no-any-return]
        conn,
        f"INSERT INTO automation_rules ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) RETURNING id",
        tuple(cols.values()),
    )


def add_command(
    conn: Conn,
    gateway_id: UUID | None = None,
    agent_id: UUID | None = None,
    command: str = "agent.restart",
    max_attempts: int = 3,
) -> UUID:
    return scalar(  # type: ignore[no-any-return]
        conn,
        """INSERT INTO agent_commands (gateway_id, agent_id, command, max_attempts)
           VALUES (%s, %s, %s, %s) RETURNING id""",
        (gateway_id, agent_id, command, max_attempts),
    )


def command(conn: Conn, command_id: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM agent_commands WHERE id = %s", (command_id,))


def lease_commands(conn: Conn, gateway_id: UUID, limit: int = 1) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM lease_command(%s, 60, %s)", (gateway_id, limit)).fetchall()


def failed_notifications(conn: Conn, command_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM notifications WHERE kind = 'command.failed' AND entity_id = %s",
        (str(command_id),),
    ).fetchall()


def enqueue(conn: Conn, agent_id: UUID, title: str = "work", **kw: Any) -> UUID | None:
    args = {"p_agent_id": agent_id, "p_kind": "test.work", "p_title": title, **kw}
    if "p_payload" in args:
        args["p_payload"] = Jsonb(args["p_payload"])
    named = ", ".join(f"{k} => %({k})s" for k in args)
    return scalar(conn, f"SELECT enqueue_inbox_item({named}) AS id", args)  # type: ignore[no-any-return]


def new_item(conn: Conn, agent_id: UUID, title: str = "work", **kw: Any) -> UUID:
    item_id = enqueue(conn, agent_id, title, **kw)
    assert item_id is not None, "enqueue_inbox_item returned NULL"
    return item_id


def item(conn: Conn, item_id: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM agent_inbox_items WHERE id = %s", (item_id,))


def inbox(conn: Conn, agent_id: UUID, kind: str | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT * FROM agent_inbox_items
            WHERE agent_id = %s AND (%s::text IS NULL OR kind = %s) ORDER BY created_at, id""",
        (agent_id, kind, kind),
    ).fetchall()


def fired_by_second_update(
    conn: Conn, agent_id: UUID, table: str, row_id: UUID, first: str, second: str
) -> dict[str, Any]:
    """Update the row `row_id` of `table` with `SET first`: the agent gets nothing; then with
    `SET second`: the one inbox item the agent gets, which is returned."""
    conn.execute(f"UPDATE {table} SET {first} WHERE id = %s", (row_id,))
    assert inbox(conn, agent_id) == []
    conn.execute(f"UPDATE {table} SET {second} WHERE id = %s", (row_id,))
    [item] = inbox(conn, agent_id)
    return item


def lease_items(conn: Conn, agent_id: UUID, owner: str = "worker", limit: int = 1) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM lease_inbox_item(%s, %s, 300, %s)", (agent_id, owner, limit)).fetchall()


def expire_lease(conn: Conn, table: str, row_id: UUID) -> None:
    assert table in ("agent_commands", "agent_inbox_items")
    conn.execute(
        f"UPDATE {table} SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
        (row_id,),
    )


def make_available(conn: Conn, table: str, row_id: UUID) -> None:
    assert table in ("agent_commands", "agent_inbox_items")
    conn.execute(f"UPDATE {table} SET available_at = now() WHERE id = %s", (row_id,))


def back_off(row: dict[str, Any]) -> timedelta:
    """The retry delay a fail_* call set: available_at minus the same statement's updated_at."""
    delay: timedelta = row["available_at"] - row["updated_at"]
    return delay


def lease_concurrently(connect: Connect, workers: int, lease: LeaseBatch) -> list[list[UUID]]:
    """Start `workers` threads together, each on its own connection, each calling `lease`
    until it gets nothing; return the ids every worker received."""
    conns = [connect() for _ in range(workers)]
    barrier = threading.Barrier(workers)

    def run(n: int) -> list[UUID]:
        leased: list[UUID] = []
        barrier.wait(timeout=10)
        while batch := lease(conns[n], n):
            leased.extend(batch)
        return leased

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, n) for n in range(workers)]
        return [f.result(timeout=60) for f in futures]


def assert_leased_once(leased: list[list[UUID]], expected: set[UUID]) -> None:
    counts = Counter(i for batch in leased for i in batch)
    assert [i for i, n in counts.items() if n > 1] == []
    assert set(counts) == expected
    assert sum(1 for batch in leased if batch) >= 2, "the workers did not actually compete"


# ---- 014: agent commands -------------------------------------------------------------------------


def test_concurrent_lease_command_hands_out_every_command_exactly_once(conn: Conn, connect: Connect) -> None:
    """Four gateway workers leasing at once never get the same command, and together they
    lease all 200 commands, each with one attempt."""
    gw = add_gateway(conn)
    ids = {
        r["id"]
        for r in conn.execute(
            """INSERT INTO agent_commands (gateway_id, command)
               SELECT %s, 'agent.restart' FROM generate_series(1, 200) RETURNING id""",
            (gw,),
        ).fetchall()
    }

    def lease(c: Conn, n: int) -> list[UUID]:
        return [r["id"] for r in lease_commands(c, gw, limit=1 + n % 2)]

    assert_leased_once(lease_concurrently(connect, 4, lease), ids)
    states = conn.execute(
        "SELECT status, attempts, lease_owner, count(*) AS n FROM agent_commands GROUP BY 1, 2, 3"
    ).fetchall()
    assert states == [{"status": "leased", "attempts": 1, "lease_owner": gw, "n": 200}]


def test_lease_command_only_hands_out_the_gateways_own_commands(conn: Conn) -> None:
    """A gateway leases commands addressed to it or to one of its agents (gateway_id NULL),
    never those of another gateway or of another gateway's agent."""
    gw, other = add_gateway(conn, "a"), add_gateway(conn, "b")
    mine = add_agent(conn, "mine", gw)
    theirs = add_agent(conn, "theirs", other)
    for_gateway = add_command(conn, gateway_id=gw)
    for_agent = add_command(conn, agent_id=mine)
    add_command(conn, gateway_id=other)
    add_command(conn, agent_id=theirs)

    leased = lease_commands(conn, gw, limit=10)

    assert {r["id"] for r in leased} == {for_gateway, for_agent}
    assert all(r["lease_owner"] == gw for r in leased)
    assert scalar(conn, "SELECT count(*) FROM agent_commands WHERE status = 'pending'") == 2
    assert lease_commands(conn, gw) == []
    assert len(lease_commands(conn, other, limit=10)) == 2


def test_lease_command_records_the_gateway_heartbeat(conn: Conn) -> None:
    """Leasing is the runner's heartbeat: the gateway comes online with a fresh timestamp."""
    gw = add_gateway(conn)
    lease_commands(conn, gw)
    row = one(conn, "SELECT status, last_heartbeat_at FROM gateways WHERE id = %s", (gw,))
    assert row["status"] == "online" and row["last_heartbeat_at"] is not None


def test_expired_command_lease_is_leased_again_as_a_new_attempt(conn: Conn) -> None:
    """A command whose lease is still valid is not handed out again; once the lease expired
    (the gateway died) it is, with its attempt counter raised."""
    gw = add_gateway(conn)
    cmd = add_command(conn, gateway_id=gw)
    assert [r["id"] for r in lease_commands(conn, gw)] == [cmd]
    assert lease_commands(conn, gw) == []

    expire_lease(conn, "agent_commands", cmd)
    again = lease_commands(conn, gw)

    assert [r["id"] for r in again] == [cmd]
    assert again[0]["attempts"] == 2
    assert again[0]["lease_expires_at"] > scalar(conn, "SELECT now()")


def test_expired_running_command_is_leased_again(conn: Conn) -> None:
    """A started (running) command whose lease expired is re-leased, and started_at is reset."""
    gw = add_gateway(conn)
    cmd = add_command(conn, gateway_id=gw)
    lease_commands(conn, gw)
    conn.execute("SELECT start_command(%s, %s)", (cmd, gw))
    assert command(conn, cmd)["status"] == "running"

    expire_lease(conn, "agent_commands", cmd)
    [again] = lease_commands(conn, gw)

    assert again["id"] == cmd and again["status"] == "leased"
    assert again["attempts"] == 2 and again["started_at"] is None


def test_expired_command_lease_on_last_attempt_fails_and_notifies(conn: Conn) -> None:
    """When the lease of the last attempt expires, the next lease call fails the command
    instead of handing it out, and the operator gets one command.failed notification."""
    gw = add_gateway(conn)
    agent = add_agent(conn, "worker", gw)
    cmd = add_command(conn, agent_id=agent, command="config.sync", max_attempts=2)
    lease_commands(conn, gw)
    expire_lease(conn, "agent_commands", cmd)
    lease_commands(conn, gw)
    expire_lease(conn, "agent_commands", cmd)

    assert lease_commands(conn, gw) == []

    row = command(conn, cmd)
    assert row["status"] == "failed" and row["attempts"] == 2
    assert "lease expired" in row["error"]
    assert row["completed_at"] is not None and row["lease_owner"] is None
    [note] = failed_notifications(conn, cmd)
    assert note["severity"] == "error" and note["agent_id"] == agent
    assert note["entity_type"] == "agent_command"
    assert note["data"] == {"command": "config.sync", "attempts": 2}
    lease_commands(conn, gw)
    assert len(failed_notifications(conn, cmd)) == 1


def leased_command_and_intruder(conn: Conn) -> tuple[UUID, UUID, UUID]:
    """A command leased by gateway `a`: (a, another gateway `b`, the command)."""
    gw, intruder = add_gateway(conn, "a"), add_gateway(conn, "b")
    cmd = add_command(conn, gateway_id=gw)
    lease_commands(conn, gw)
    return gw, intruder, cmd


def test_start_and_complete_command_by_the_wrong_gateway_raise(conn: Conn) -> None:
    """Only the gateway holding the lease can start or complete a command; a wrong caller
    gets SQLSTATE 55000 and leaves the command as it was."""
    gw, intruder, cmd = leased_command_and_intruder(conn)

    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT start_command(%s, %s)", (cmd, intruder))
    assert command(conn, cmd)["status"] == "leased"

    started = one(conn, "SELECT * FROM start_command(%s, %s)", (cmd, gw))
    assert started["status"] == "running" and started["started_at"] is not None

    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT complete_command(%s, %s)", (cmd, intruder))
    assert command(conn, cmd)["status"] == "running"

    done = one(conn, "SELECT * FROM complete_command(%s, %s, %s)", (cmd, gw, Jsonb({"ok": True})))
    assert done["status"] == "completed" and done["result"] == {"ok": True}
    assert done["lease_owner"] is None

    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT complete_command(%s, %s)", (cmd, gw))


def test_start_command_after_the_lease_expired_raises(conn: Conn) -> None:
    """A gateway cannot start a command whose lease it has already lost to expiry."""
    gw = add_gateway(conn)
    cmd = add_command(conn, gateway_id=gw)
    lease_commands(conn, gw)
    expire_lease(conn, "agent_commands", cmd)
    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT start_command(%s, %s)", (cmd, gw))


def test_fail_command_backs_off_exponentially_then_fails_with_one_notification(conn: Conn) -> None:
    """fail_command with retry returns the command to pending after delay * 2^(attempt-1)
    (10 s, 20 s, 40 s), not leasable before then; the failure of the last attempt ends it
    failed with exactly one command.failed notification, none for the retried ones."""
    gw = add_gateway(conn)
    cmd = add_command(conn, gateway_id=gw, max_attempts=4)
    delays = []
    for attempt in (1, 2, 3):
        [leased] = lease_commands(conn, gw)
        assert leased["attempts"] == attempt
        row = one(conn, "SELECT * FROM fail_command(%s, %s, %s, true, 10)", (cmd, gw, f"boom {attempt}"))
        assert row["status"] == "pending" and row["error"] == f"boom {attempt}"
        assert row["lease_owner"] is None and row["completed_at"] is None
        delays.append(back_off(row))
        assert lease_commands(conn, gw) == []
        make_available(conn, "agent_commands", cmd)

    assert delays == [timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=40)]
    assert failed_notifications(conn, cmd) == []

    lease_commands(conn, gw)
    row = one(conn, "SELECT * FROM fail_command(%s, %s, 'boom 4', true, 10)", (cmd, gw))
    assert row["status"] == "failed" and row["attempts"] == 4 and row["error"] == "boom 4"
    assert row["completed_at"] is not None
    [note] = failed_notifications(conn, cmd)
    assert note["body"] == "boom 4"
    make_available(conn, "agent_commands", cmd)
    assert lease_commands(conn, gw) == []
    assert command(conn, cmd)["status"] == "failed"


def test_fail_command_without_retry_fails_at_once(conn: Conn) -> None:
    """p_retry = false ends the command failed on its first attempt and notifies."""
    gw = add_gateway(conn)
    cmd = add_command(conn, gateway_id=gw, max_attempts=5)
    lease_commands(conn, gw)
    row = one(conn, "SELECT * FROM fail_command(%s, %s, 'fatal', false)", (cmd, gw))
    assert row["status"] == "failed" and row["attempts"] == 1
    assert len(failed_notifications(conn, cmd)) == 1


def test_fail_command_by_the_wrong_gateway_raises(conn: Conn) -> None:
    """A gateway that does not hold the lease cannot fail the command."""
    _, intruder, cmd = leased_command_and_intruder(conn)
    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT fail_command(%s, %s, 'nope')", (cmd, intruder))
    assert command(conn, cmd)["status"] == "leased"


def test_command_insert_notifies_listeners(conn: Conn, connect: Connect) -> None:
    """Inserting a command sends NOTIFY hq_agent_commands with its id, gateway and agent."""
    gw = add_gateway(conn)
    agent = add_agent(conn, "worker", gw)
    listener = connect()
    listener.execute("LISTEN hq_agent_commands")

    cmd = add_command(conn, agent_id=agent)

    notes = list(listener.notifies(timeout=2, stop_after=1))
    assert len(notes) == 1
    assert notes[0].channel == "hq_agent_commands"
    assert json.loads(notes[0].payload) == {"id": str(cmd), "gateway_id": None, "agent_id": str(agent)}


# ---- 013: inbox queue ----------------------------------------------------------------------------


def test_enqueue_dedup_key_blocks_a_second_open_item(conn: Conn) -> None:
    """While an item with a dedup key is open (pending or leased) for the agent, enqueueing the
    same key returns NULL and creates nothing; once it completed, the key is free again."""
    agent = add_agent(conn, "worker")
    first = enqueue(conn, agent, p_dedup_key="k")
    assert first is not None
    assert enqueue(conn, agent, "again", p_dedup_key="k") is None
    lease_items(conn, agent)
    assert enqueue(conn, agent, "again", p_dedup_key="k") is None
    assert [r["id"] for r in inbox(conn, agent)] == [first]

    conn.execute("SELECT complete_inbox_item(%s, 'worker')", (first,))
    second = enqueue(conn, agent, "again", p_dedup_key="k")

    assert second is not None and second != first
    assert [r["title"] for r in inbox(conn, agent)] == ["work", "again"]


def test_enqueue_dedup_key_is_per_agent(conn: Conn) -> None:
    """The same dedup key for another agent is independent; items without a key never dedup."""
    a, b = add_agent(conn, "a"), add_agent(conn, "b")
    assert enqueue(conn, a, p_dedup_key="k") is not None
    assert enqueue(conn, b, p_dedup_key="k") is not None
    assert enqueue(conn, a) is not None
    assert enqueue(conn, a) is not None
    assert len(inbox(conn, a)) == 3 and len(inbox(conn, b)) == 1


def test_enqueue_stores_what_it_was_given(conn: Conn) -> None:
    """enqueue_inbox_item returns the id of a pending item holding the given fields."""
    agent = add_agent(conn, "worker")
    item_id = new_item(
        conn,
        agent,
        "Read this",
        p_payload={"doc": 1},
        p_priority=7,
        p_max_attempts=5,
        p_source_type="document",
    )
    row = item(conn, item_id)
    assert (row["agent_id"], row["kind"], row["title"], row["payload"]) == (agent, "test.work", "Read this", {"doc": 1})
    assert (row["status"], row["priority"], row["max_attempts"], row["attempts"]) == ("pending", 7, 5, 0)
    assert row["source_type"] == "document"


def test_concurrent_lease_inbox_item_hands_out_every_item_exactly_once(conn: Conn, connect: Connect) -> None:
    """Four dispatchers leasing one agent's inbox at once never get the same item, and
    together they lease all 200 items, each once, as the owner that leased it."""
    agent = add_agent(conn, "busy")
    ids = {
        r["id"]
        for r in conn.execute(
            """INSERT INTO agent_inbox_items (agent_id, kind, title, priority)
               SELECT %s, 'test.work', 'item ' || n, n %% 3 FROM generate_series(1, 200) n
               RETURNING id""",
            (agent,),
        ).fetchall()
    }

    def lease(c: Conn, n: int) -> list[UUID]:
        return [r["id"] for r in lease_items(c, agent, owner=f"w{n}", limit=1 + n % 3)]

    leased = lease_concurrently(connect, 4, lease)

    assert_leased_once(leased, ids)
    owners = {
        r["id"]: r["lease_owner"] for r in conn.execute("SELECT id, lease_owner FROM agent_inbox_items").fetchall()
    }
    for n, batch in enumerate(leased):
        assert {owners[i] for i in batch} <= {f"w{n}"}
    assert scalar(conn, "SELECT count(*) FROM agent_inbox_items WHERE status = 'leased' AND attempts = 1") == 200


def test_lease_inbox_item_takes_the_highest_priority_first(conn: Conn) -> None:
    """Items are leased by priority (highest first), then by availability (oldest first),
    and only the agent's own items."""
    agent, other = add_agent(conn, "a"), add_agent(conn, "b")
    low = new_item(conn, agent, "low", p_priority=0)
    high = new_item(conn, agent, "high", p_priority=5)
    mid_late = new_item(conn, agent, "mid late", p_priority=1)
    mid_early = new_item(conn, agent, "mid early", p_priority=1)
    conn.execute(
        "UPDATE agent_inbox_items SET available_at = now() - interval '1 minute' WHERE id = %s",
        (mid_early,),
    )
    enqueue(conn, other, "not mine", p_priority=100)

    order = [lease_items(conn, agent)[0]["id"] for _ in range(4)]

    assert order == [high, mid_early, mid_late, low]
    assert lease_items(conn, agent) == []


def test_lease_inbox_item_skips_items_not_yet_available(conn: Conn) -> None:
    """An item whose available_at lies in the future is not leased until that time comes."""
    agent = add_agent(conn, "a")
    later = new_item(conn, agent)
    conn.execute(
        "UPDATE agent_inbox_items SET available_at = now() + interval '1 hour' WHERE id = %s",
        (later,),
    )
    assert lease_items(conn, agent) == []
    make_available(conn, "agent_inbox_items", later)
    assert [r["id"] for r in lease_items(conn, agent)] == [later]


def test_lease_inbox_item_requires_an_owner(conn: Conn) -> None:
    """A lease must name the leasing worker."""
    agent = add_agent(conn, "a")
    enqueue(conn, agent)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        lease_items(conn, agent, owner=" ")


def test_inbox_retries_count_leases_back_off_and_end_failed(conn: Conn) -> None:
    """attempts counts leases: fail_inbox_item leaves it alone and only the next lease raises
    it. Each failure backs off delay * 2^(attempt-1) (5 s, 10 s, 20 s); the failure of the last
    attempt ends the item failed, keeping its error, and it is never leased again."""
    agent = add_agent(conn, "a")
    item_id = new_item(conn, agent, p_max_attempts=4)
    delays = []
    for attempt in (1, 2, 3):
        [leased] = lease_items(conn, agent)
        assert leased["attempts"] == attempt
        row = one(conn, "SELECT * FROM fail_inbox_item(%s, %s, 'worker', 5)", (item_id, f"err {attempt}"))
        assert row["status"] == "pending" and row["attempts"] == attempt
        assert row["last_error"] == f"err {attempt}" and row["lease_owner"] is None
        delays.append(back_off(row))
        assert lease_items(conn, agent) == []
        make_available(conn, "agent_inbox_items", item_id)

    assert delays == [timedelta(seconds=5), timedelta(seconds=10), timedelta(seconds=20)]

    [leased] = lease_items(conn, agent)
    assert leased["attempts"] == 4
    row = one(conn, "SELECT * FROM fail_inbox_item(%s, 'final error', 'worker', 5)", (item_id,))
    assert row["status"] == "failed" and row["attempts"] == 4
    assert row["last_error"] == "final error" and row["failed_at"] is not None

    make_available(conn, "agent_inbox_items", item_id)
    assert lease_items(conn, agent) == []
    assert item(conn, item_id)["status"] == "failed"


def test_complete_inbox_item_checks_the_lease_owner(conn: Conn) -> None:
    """Completing an item leased by another worker raises 55000 and changes nothing; the
    owner completes it with a result; an item not leased cannot be completed or failed."""
    agent = add_agent(conn, "a")
    item_id = new_item(conn, agent)
    pending = new_item(conn, agent)
    lease_items(conn, agent, owner="w1")

    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT complete_inbox_item(%s, 'w2')", (item_id,))
    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT fail_inbox_item(%s, 'x', 'w2')", (item_id,))
    assert item(conn, item_id)["status"] == "leased"

    row = one(conn, "SELECT * FROM complete_inbox_item(%s, 'w1', %s)", (item_id, Jsonb({"n": 1})))
    assert row["status"] == "completed" and row["result"] == {"n": 1}
    assert row["completed_at"] is not None and row["lease_owner"] is None

    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT complete_inbox_item(%s, 'w1')", (item_id,))
    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT complete_inbox_item(%s)", (pending,))


def test_expired_inbox_lease_is_leased_again_then_fails_on_last_attempt(conn: Conn) -> None:
    """An expired lease makes the item leasable again (by any worker) as a new attempt; when
    the lease of the last attempt expires, the next lease call fails the item instead."""
    agent = add_agent(conn, "a")
    item_id = new_item(conn, agent, p_max_attempts=2)
    lease_items(conn, agent, owner="w1")
    assert lease_items(conn, agent, owner="w2") == []

    expire_lease(conn, "agent_inbox_items", item_id)
    [again] = lease_items(conn, agent, owner="w2")
    assert again["id"] == item_id and again["attempts"] == 2 and again["lease_owner"] == "w2"
    with pytest.raises(NOT_LEASED):
        conn.execute("SELECT complete_inbox_item(%s, 'w1')", (item_id,))

    expire_lease(conn, "agent_inbox_items", item_id)
    assert lease_items(conn, agent, owner="w3") == []
    row = item(conn, item_id)
    assert row["status"] == "failed" and row["failed_at"] is not None
    assert "lease expired" in row["last_error"] and row["lease_owner"] is None


def test_inbox_insert_notifies_listeners(conn: Conn, connect: Connect) -> None:
    """Enqueueing an item sends NOTIFY hq_agent_inbox with its id and agent."""
    agent = add_agent(conn, "a")
    listener = connect()
    listener.execute("LISTEN hq_agent_inbox")
    item_id = new_item(conn, agent)
    [note] = list(listener.notifies(timeout=2, stop_after=1))
    assert json.loads(note.payload) == {"id": str(item_id), "agent_id": str(agent)}


# ---- 013: built-in inbox triggers ----------------------------------------------------------------


def test_task_assignment_creates_one_task_assigned_item(conn: Conn) -> None:
    """Assigning a task to an agent puts one task.assigned item in its inbox; saving the task
    again, or unassigning and reassigning it while that item is open, adds none, and saving it
    without a new assignee after the item was done adds none either."""
    agent = add_agent(conn, "a")
    add_task(conn, "unassigned")
    task = add_task(conn, "Write the report", assignee=agent)

    [row] = inbox(conn, agent)
    assert row["kind"] == "task.assigned" and row["title"] == "Task assigned: Write the report"
    assert row["payload"] == {"task_id": str(task)}
    assert (row["source_type"], row["source_id"]) == ("task", task)

    conn.execute("UPDATE tasks SET description = 'more', status = 'in_progress' WHERE id = %s", (task,))
    conn.execute("UPDATE tasks SET assignee_agent_id = NULL WHERE id = %s", (task,))
    conn.execute("UPDATE tasks SET assignee_agent_id = %s WHERE id = %s", (agent, task))
    assert len(inbox(conn, agent)) == 1

    conn.execute("SELECT complete_inbox_item(%s)", (lease_items(conn, agent)[0]["id"],))
    conn.execute("UPDATE tasks SET status = 'review' WHERE id = %s", (task,))
    assert [r["status"] for r in inbox(conn, agent)] == ["completed"]


def test_task_reassignment_notifies_the_new_assignee(conn: Conn) -> None:
    """Assigning an unassigned task, or moving it to another agent, notifies the new assignee;
    after the first item was done, a reassignment back notifies again."""
    a, b = add_agent(conn, "a"), add_agent(conn, "b")
    task = add_task(conn, "Move me")
    assert inbox(conn, a) == []
    conn.execute("UPDATE tasks SET assignee_agent_id = %s WHERE id = %s", (a, task))
    conn.execute("UPDATE tasks SET assignee_agent_id = %s WHERE id = %s", (b, task))
    assert [r["kind"] for r in inbox(conn, a)] == ["task.assigned"]
    assert [r["kind"] for r in inbox(conn, b)] == ["task.assigned"]

    [leased] = lease_items(conn, a)
    conn.execute("SELECT complete_inbox_item(%s)", (leased["id"],))
    conn.execute("UPDATE tasks SET assignee_agent_id = %s WHERE id = %s", (a, task))
    assert [r["status"] for r in inbox(conn, a)] == ["completed", "pending"]


def test_comment_on_a_task_notifies_its_assignee_unless_they_wrote_it(conn: Conn) -> None:
    """A comment on a task puts a task.comment item in the assignee's inbox, one per comment,
    except for comments the assignee wrote itself."""
    assignee, other = add_agent(conn, "assignee"), add_agent(conn, "other")
    task = add_task(conn, "Ship it", assignee=assignee)
    c1 = add_comment(conn, task, "operator says hi")
    c2 = add_comment(conn, task, "another agent says hi", author=other)
    add_comment(conn, task, "note to self", author=assignee)

    rows = inbox(conn, assignee, "task.comment")
    assert [r["payload"] for r in rows] == [
        {"task_id": str(task), "comment_id": str(c1)},
        {"task_id": str(task), "comment_id": str(c2)},
    ]
    assert {r["title"] for r in rows} == {"New comment on: Ship it"}
    assert inbox(conn, other) == []


def test_comment_mentions_notify_each_mentioned_agent(conn: Conn) -> None:
    """Every agent id in a comment's mentions gets a comment.mention item (the author and ids
    that are no agent are skipped); a mentioned assignee gets the mention, not a second item."""
    assignee, b, c = add_agent(conn, "assignee"), add_agent(conn, "b"), add_agent(conn, "c")
    task = add_task(conn, "Plan", assignee=assignee)
    comment = add_comment(conn, task, "@b @c @assignee @nobody", author=c, mentions=[b, c, assignee, uuid.uuid4()])

    for agent in (b, assignee):
        [row] = inbox(conn, agent, "comment.mention")
        assert row["payload"] == {"comment_id": str(comment), "entity_type": "task", "entity_id": str(task)}
        assert (row["source_type"], row["source_id"]) == ("comment", comment)
    assert inbox(conn, c) == []
    assert inbox(conn, assignee, "task.comment") == []


def test_mentions_in_a_comment_on_another_entity(conn: Conn) -> None:
    """Mentions work on comments on any entity, e.g. a contact."""
    agent = add_agent(conn, "a")
    contact = add_contact(conn, "Ada", "Lovelace")
    add_comment(conn, contact, "@a look", mentions=[agent], entity_type="contact")
    [row] = inbox(conn, agent)
    assert row["kind"] == "comment.mention" and row["payload"]["entity_type"] == "contact"


# ---- 013: automation rules -----------------------------------------------------------------------


def test_task_rule_enqueues_an_item_for_its_target(conn: Conn) -> None:
    """A task.created rule turns a new task into an item of the rule's kind for its target
    agent, titled from title_template, with the event and the task in the payload, and counts
    the firing on the rule."""
    triage = add_agent(conn, "triage")
    rule = add_rule(
        conn,
        "task.created",
        triage,
        name="triage new tasks",
        item_kind="task.triage",
        title_template="[{event}] {title} #{id}",
        priority=4,
    )
    task = add_task(conn, "Fix login")

    [row] = inbox(conn, triage)
    assert row["kind"] == "task.triage"
    assert row["title"] == f"[task.created] Fix login #{task}"
    assert row["priority"] == 4
    assert (row["source_type"], row["source_id"], row["rule_id"]) == ("task", task, rule)
    payload = row["payload"]
    assert {k: payload[k] for k in ("event", "entity_type", "entity_id", "rule")} == {
        "event": "task.created",
        "entity_type": "task",
        "entity_id": str(task),
        "rule": "triage new tasks",
    }
    assert payload["record"]["title"] == "Fix login" and payload["record"]["id"] == str(task)
    fired = one(conn, "SELECT fire_count, last_fired_at FROM automation_rules WHERE id = %s", (rule,))
    assert fired["fire_count"] == 1 and fired["last_fired_at"] is not None


def test_rule_conditions_must_be_contained_in_the_changed_row(conn: Conn) -> None:
    """A rule fires only when the changed row contains its conditions (jsonb @>)."""
    watcher = add_agent(conn, "watcher")
    add_rule(conn, "task.status_changed", watcher, conditions={"status": "blocked"})
    task = add_task(conn, "Risky")

    row = fired_by_second_update(conn, watcher, "tasks", task, "status = 'in_progress'", "status = 'blocked'")
    assert row["payload"]["event"] == "task.status_changed"
    assert row["payload"]["record"]["status"] == "blocked"


def test_status_changed_rule_ignores_updates_that_keep_the_status(conn: Conn) -> None:
    """task.status_changed fires on a status change only; task.updated on every update."""
    a, b = add_agent(conn, "a"), add_agent(conn, "b")
    add_rule(conn, "task.status_changed", a)
    add_rule(conn, "task.updated", b)
    task = add_task(conn, "Steady")
    conn.execute("UPDATE tasks SET description = 'edited' WHERE id = %s", (task,))
    assert inbox(conn, a) == []
    assert [r["payload"]["event"] for r in inbox(conn, b)] == ["task.updated"]


def test_disabled_rule_does_nothing(conn: Conn) -> None:
    """A rule with enabled = false neither enqueues nor counts a firing."""
    agent = add_agent(conn, "a")
    rule = add_rule(conn, "task.created", agent, enabled=False)
    add_task(conn, "Quiet")
    assert inbox(conn, agent) == []
    assert scalar(conn, "SELECT fire_count FROM automation_rules WHERE id = %s", (rule,)) == 0


def test_target_assignee_rule_sends_to_the_tasks_assignee(conn: Conn) -> None:
    """A target_assignee rule sends the item to the task's assignee; with no assignee and no
    fallback target it sends nothing; with a fallback target the fallback gets it."""
    assignee, fallback = add_agent(conn, "assignee"), add_agent(conn, "fallback")
    add_rule(conn, "task.created", None, target_assignee=True, item_kind="task.kickoff")
    add_rule(conn, "comment.created", fallback, target_assignee=True, item_kind="task.discuss")
    task = add_task(conn, "Assigned", assignee=assignee)
    orphan = add_task(conn, "Nobody's")

    assert [r["payload"]["entity_id"] for r in inbox(conn, assignee, "task.kickoff")] == [str(task)]
    assert inbox(conn, fallback, "task.kickoff") == []

    add_comment(conn, task, "on the assigned task")
    add_comment(conn, orphan, "on the orphan")
    assert len(inbox(conn, assignee, "task.discuss")) == 1
    [row] = inbox(conn, fallback, "task.discuss")
    assert row["payload"]["record"]["entity_id"] == str(orphan)


def test_comment_rule_carries_the_task_title(conn: Conn) -> None:
    """A comment.created rule's item is titled after the commented task and holds the comment."""
    reviewer = add_agent(conn, "reviewer")
    add_rule(conn, "comment.created", reviewer, conditions={"entity_type": "task"})
    task = add_task(conn, "Quarterly plan")
    comment = add_comment(conn, task, "looks good")
    contact = add_contact(conn, "Ada", "Lovelace")
    add_comment(conn, contact, "not a task", entity_type="contact")

    [row] = inbox(conn, reviewer)
    assert row["title"] == "comment.created: Quarterly plan"
    assert row["payload"]["entity_id"] == str(comment)
    assert row["payload"]["record"]["body"] == "looks good"


def test_contact_rule_is_titled_with_the_contacts_name(conn: Conn) -> None:
    """A contact.created rule's {title} is the contact's name, not its job title (the title
    column), or its email when it has no name; contacts not matching the conditions are skipped."""
    sdr = add_agent(conn, "sdr")
    add_rule(conn, "contact.created", sdr, item_kind="crm.new_contact", conditions={"pipeline_stage": "lead"})
    contact = add_contact(conn, "Ada", "Lovelace", title="CTO", pipeline_stage="lead")
    add_contact(conn, "Not", "Alead", pipeline_stage="won")
    add_contact(conn, None, None, email="grace@example.com", pipeline_stage="lead")

    rows = inbox(conn, sdr)
    assert [r["title"] for r in rows] == ["contact.created: Ada Lovelace", "contact.created: grace@example.com"]
    assert rows[0]["kind"] == "crm.new_contact"
    assert rows[0]["payload"]["entity_type"] == "contact"
    assert rows[0]["payload"]["entity_id"] == str(contact)
    assert rows[0]["payload"]["record"]["title"] == "CTO"


def test_contact_stage_changed_fires_on_pipeline_stage_change_only(conn: Conn) -> None:
    """contact.stage_changed fires when pipeline_stage changes, not on insert or on an
    update of other columns."""
    agent = add_agent(conn, "a")
    add_rule(conn, "contact.stage_changed", agent)
    contact = add_contact(conn, "Grace", "Hopper", pipeline_stage="lead")
    row = fired_by_second_update(conn, agent, "contacts", contact, "notes = 'called'", "pipeline_stage = 'qualified'")
    assert row["payload"]["event"] == "contact.stage_changed"
    assert row["payload"]["record"]["pipeline_stage"] == "qualified"


def test_interaction_sync_does_not_fire_contact_updated_rules(conn: Conn) -> None:
    """Logging an interaction updates the contact's counters through a sync trigger; that
    bookkeeping fires interaction.created rules but not contact.updated ones, which a direct
    edit of the contact does fire."""
    on_update, on_interaction = add_agent(conn, "on-update"), add_agent(conn, "on-interaction")
    add_rule(conn, "contact.updated", on_update)
    add_rule(conn, "interaction.created", on_interaction)
    contact = add_contact(conn, "Alan", "Turing")

    interaction = scalar(
        conn,
        "INSERT INTO interactions (contact_id, kind, subject) VALUES (%s, 'call', 'Intro call') RETURNING id",
        (contact,),
    )

    assert scalar(conn, "SELECT interaction_count FROM contacts WHERE id = %s", (contact,)) == 1
    assert inbox(conn, on_update) == []
    [row] = inbox(conn, on_interaction)
    assert row["title"] == "interaction.created: Intro call"
    assert row["payload"]["entity_id"] == str(interaction)

    conn.execute("UPDATE contacts SET notes = 'met' WHERE id = %s", (contact,))
    assert [r["payload"]["event"] for r in inbox(conn, on_update)] == ["contact.updated"]


def test_rule_does_not_duplicate_an_open_item_for_the_same_record(conn: Conn) -> None:
    """Repeated changes to one record while the rule's item is open add no second item."""
    agent = add_agent(conn, "a")
    rule = add_rule(conn, "task.updated", agent)
    task = add_task(conn, "Busy")
    for n in range(3):
        conn.execute("UPDATE tasks SET description = %s WHERE id = %s", (str(n), task))
    assert len(inbox(conn, agent)) == 1
    assert scalar(conn, "SELECT fire_count FROM automation_rules WHERE id = %s", (rule,)) == 1
