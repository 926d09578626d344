"""The folder trees (migration 011): no folder under its own descendant, also under concurrent
moves; unique sibling names; folder paths."""

from __future__ import annotations

from uuid import UUID

import pytest
from psycopg import errors

from .schema_calls import (
    ISOLATION_LEVELS,
    Conn,
    Connect,
    commit_in_thread,
    insert_returning_id,
    scalar,
    wait_until_blocked,
)


def insert_folder(conn: Conn, table: str, name: str, parent: UUID | None = None) -> UUID:
    assert table in ("document_folders", "asset_folders")
    return insert_returning_id(
        conn,
        f"INSERT INTO {table} (name, parent_id) VALUES (%s, %s) RETURNING id",
        [name, parent],
    )


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
