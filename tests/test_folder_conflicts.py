"""Concurrent changes to a folder tree answer 2xx or 409, never 5xx, and never leave a loop:
opposite moves (A into B while B into A), deletes and renames racing each other, and a
deadlock forced with another transaction, which the move survives by running again."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from uuid import UUID

import psycopg
import pytest

from knowledge.api import create_app
from knowledge.errors import KnowledgeError
from knowledge.store.folders import create_folder, delete_folder, get_folder, update_folder

from .apiclient import local_client

PAIRS = 40


def _parents(conn: psycopg.Connection[Any], table: str = "document_folders") -> dict[UUID, UUID | None]:
    return {r["id"]: r["parent_id"] for r in conn.execute(f"SELECT id, parent_id FROM {table}")}


def _loops(parents: dict[UUID, UUID | None]) -> list[UUID]:
    """Folders from which walking up never reaches the root."""
    looped = []
    for start in parents:
        seen: set[UUID] = set()
        node: UUID | None = start
        while node is not None and node not in seen:
            seen.add(node)
            node = parents.get(node)
        if node is not None:
            looped.append(start)
    return looped


def _all_at_once(calls: list[Callable[[], tuple[int, str]]]) -> list[tuple[int, str]]:
    """Run every call in a thread of its own, released together."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], tuple[int, str]]) -> tuple[int, str]:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_80_opposite_moves_over_http_answer_200_or_409_and_leave_no_loop(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    with local_client(create_app(db_url)) as client:
        pairs = [
            (
                client.post("/document-folders", json={"name": f"A{i}"}).json()["id"],
                client.post("/document-folders", json={"name": f"B{i}"}).json()["id"],
            )
            for i in range(PAIRS)
        ]

        def move(folder: str, into: str) -> Callable[[], tuple[int, str]]:
            def call() -> tuple[int, str]:
                r = client.patch(f"/document-folders/{folder}", json={"parent_id": into})
                return r.status_code, r.json().get("detail", "") if r.status_code >= 400 else ""

            return call

        answers = _all_at_once([move(a, b) for a, b in pairs] + [move(b, a) for a, b in pairs])

    print("answers:", Counter(status for status, _ in answers))
    assert all(status in (200, 409) for status, _ in answers), [a for a in answers if a[0] not in (200, 409)]
    for (first, _), (second, _) in zip(answers[:PAIRS], answers[PAIRS:], strict=True):
        assert (first, second) != (200, 200)  # both moves of a pair would have closed a loop
    refused = [detail for status, detail in answers if status == 409]
    assert refused and all("its subfolders" in d or "concurrent change" in d for d in refused), refused
    assert sum(status == 200 for status, _ in answers) >= PAIRS - 2  # a pair's first move stands
    parents = _parents(conn)
    assert not _loops(parents)
    assert sum(parent is not None for parent in parents.values()) == sum(status == 200 for status, _ in answers)


@pytest.mark.parametrize("tree", ["document", "asset"])
def test_moves_deletes_and_renames_racing_in_one_tree_answer_2xx_409_or_404(
    tree: str, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Separate connections, no pool between them and the database: the domain functions
    alone keep a mixed burst free of deadlock errors."""
    tree_: Literal["document", "asset"] = "document" if tree == "document" else "asset"
    ids = [create_folder(conn, tree_, name=f"F{i}").id for i in range(24)]
    connections = [psycopg.connect(db_url, autocommit=True) for _ in range(72)]
    try:

        def call(n: int) -> Callable[[], tuple[int, str]]:
            c, me, other = connections[n], ids[n % 24], ids[(n * 7 + 5) % 24]

            def run() -> tuple[int, str]:
                try:
                    if n % 9 == 0:
                        delete_folder(c, tree_, other)
                    elif n % 5 == 0:
                        update_folder(c, tree_, me, name=f"R{n}", parent_id=None)
                    else:
                        update_folder(c, tree_, me, parent_id=other)
                    return 200, ""
                except KnowledgeError as e:
                    return e.status, e.message
                except psycopg.Error as e:
                    return 500, f"{type(e).__name__}: {e}"

            return run

        answers = _all_at_once([call(n) for n in range(72)])
    finally:
        for c in connections:
            c.close()
    assert all(status in (200, 404, 409, 422) for status, _ in answers), [
        a for a in answers if a[0] not in (200, 404, 409, 422)
    ]
    assert Counter(status for status, _ in answers)[200] > 0
    assert not _loops(_parents(conn, f"{tree_}_folders"))


def test_a_move_that_loses_a_deadlock_runs_again_and_succeeds(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """Another transaction holds the folder's row and then wants the tree's lock, which the
    move holds while it waits for that row: PostgreSQL aborts the move (it waited first, so
    its deadlock check runs first); the move runs again once the other has committed."""
    a = create_folder(conn, "document", name="A").id
    b = create_folder(conn, "document", name="B").id
    other = psycopg.connect(db_url)
    mover = psycopg.connect(db_url, autocommit=True)
    try:
        mover.execute("SET deadlock_timeout = '50ms'")
        other.execute("SELECT 1 FROM document_folders WHERE id = %s FOR UPDATE", [a])
        failures: list[psycopg.Error] = []

        def take_tree_lock() -> None:
            try:
                # Wait until the move holds the tree lock and waits for the row.
                while not conn.execute(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s",
                    [mover.info.backend_pid],
                ).fetchone():
                    threading.Event().wait(0.01)
                other.execute("SELECT pg_advisory_xact_lock(hashtext('hq.folders.document_folders'))")
                other.commit()
            except psycopg.Error as e:  # reported by the assertion below
                failures.append(e)
                other.rollback()

        thread = threading.Thread(target=take_tree_lock)
        thread.start()
        moved = update_folder(mover, "document", a, parent_id=b)
        thread.join(timeout=30)
    finally:
        other.close()
        mover.close()
    assert not failures, failures  # the other transaction won: the move was the one aborted
    assert moved.parent_id == b and moved.path == "/B/A"
    assert get_folder(conn, "document", a).parent_id == b
