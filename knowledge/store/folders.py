"""Folder trees, one for documents and one for assets: `tree` is "document" or "asset".

Sibling names are unique ignoring case; a folder cannot move into its own subtree (a
trigger refuses it); folders nest at most MAX_FOLDER_DEPTH levels (a top-level folder is
level 1). Deleting a folder deletes its subfolders, and the documents or assets inside them
move to the root: nothing in them is lost.

Every change to a tree's folders takes the tree's lock first (`_lock_tree`), then rows: two
changes of one tree never hold rows the other waits for. A change that still loses a race
(a deadlock with a document write, a serialization failure) is run again, and after a few
tries is a Conflict: concurrent changes answer 2xx or 409, never 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg
from psycopg import sql
from psycopg.rows import class_row, tuple_row

from knowledge.db.errors import retry_conflicts
from knowledge.errors import Conflict, InvalidInput, NotFound
from knowledge.store.items import KINDS, UNSET, Kind, Unset
from knowledge.store.validation import DATA_ERRORS, check_name, data_error

__all__ = [
    "MAX_FOLDER_DEPTH",
    "MAX_FOLDER_NAME_CHARS",
    "Folder",
    "FolderDeletion",
    "FolderNode",
    "FolderTree",
    "create_folder",
    "delete_folder",
    "folder_tree",
    "get_folder",
    "update_folder",
]

MAX_FOLDER_NAME_CHARS = 200
MAX_FOLDER_DEPTH = 64
"""Deepest folder level that create_folder and update_folder make (a top-level folder is
level 1). Trees deeper than this, stored before the limit, are still read and rendered."""
# Ancestor and subtree walks stop here: a guard against a loop, not a limit on depth.
_WALK_LIMIT = 10000


@dataclass(frozen=True)
class Folder:
    id: UUID
    parent_id: UUID | None
    name: str
    path: str
    """'/Operations/Sales': the names from the root down."""
    position: int
    created_at: datetime
    updated_at: datetime


@dataclass
class FolderNode:
    id: UUID
    parent_id: UUID | None
    name: str
    path: str
    position: int
    item_count: int
    """Unarchived documents (or assets) directly in this folder."""
    total_item_count: int
    """The same, in this folder and all its subfolders."""
    children: list[FolderNode] = field(default_factory=list)


@dataclass(frozen=True)
class FolderTree:
    roots: list[FolderNode]
    count: int
    """Folders in the whole tree."""
    unfiled_count: int
    """Unarchived items in no folder (at the root)."""


@dataclass(frozen=True)
class FolderDeletion:
    folders_deleted: int
    """The folder and all its subfolders."""
    items_moved_to_root: int
    """Documents or assets that were in them (archived ones included), now in no folder."""


def _tables(tree: Kind) -> tuple[sql.Identifier, sql.Identifier, str]:
    if tree not in KINDS:
        raise InvalidInput(f"tree is {tree!r}; accepted: {', '.join(KINDS)}")
    items, folders = KINDS[tree]
    return sql.Identifier(items), sql.Identifier(folders), folders


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidInput(f"name must be a string of 1..{MAX_FOLDER_NAME_CHARS} characters")
    check_name("name", name, max_chars=MAX_FOLDER_NAME_CHARS)
    if "/" in name:
        raise InvalidInput(f"name {name!r} contains '/': folder names cannot contain '/' (it separates path parts)")
    return name


def _folder(conn: psycopg.Connection[Any], tree: Kind, folder_id: UUID | None) -> Folder | None:
    _, folders, regclass = _tables(tree)
    query = sql.SQL(
        "SELECT id, parent_id, name, hq_folder_path(%(t)s::regclass, id) AS path, position, "
        "created_at, updated_at FROM {} WHERE id = %(id)s"
    ).format(folders)
    with conn.cursor(row_factory=class_row(Folder)) as cur:
        return cur.execute(query, {"t": regclass, "id": folder_id}).fetchone()


def get_folder(conn: psycopg.Connection[Any], tree: Kind, folder_id: UUID) -> Folder:
    """The folder with its path. Raises NotFound."""
    found = _folder(conn, tree, folder_id)
    if found is None:
        raise NotFound(f"{tree} folder {folder_id} not found", field="id")
    return found


def _where(conn: psycopg.Connection[Any], tree: Kind, parent_id: UUID | None) -> str:
    if parent_id is None:
        return "at the root"
    parent = _folder(conn, tree, parent_id)
    return f"in {parent.path!r}" if parent else f"in folder {parent_id}"


def _lock_tree(cur: psycopg.Cursor[Any], regclass: str) -> None:
    """Serialise changes to the tree's shape until the transaction ends: the key is the one the
    cycle trigger (011_assets_documents.sql) takes, so a depth computed after this call stays
    true until the write that relies on it commits (the connection reads committed data)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"hq.folders.{regclass}"])


def _level_sql(folders: sql.Identifier, key: str) -> sql.Composable:
    """SQL for the level of folder %(key)s: 1 at the top, 0 for NULL or a missing folder."""
    return sql.SQL(
        "(WITH RECURSIVE up AS (SELECT id, parent_id, 1 AS depth FROM {f} WHERE id = {k} "
        "UNION ALL SELECT f.id, f.parent_id, up.depth + 1 FROM {f} f JOIN up ON f.id = up.parent_id "
        "WHERE up.depth < {w}) SELECT count(*) FROM up)"
    ).format(f=folders, k=sql.Placeholder(key), w=sql.Literal(_WALK_LIMIT))


def create_folder(conn: psycopg.Connection[Any], tree: Kind, *, name: str, parent_id: UUID | None = None) -> Folder:
    """A new folder under `parent_id` (None: at the root). Raises InvalidInput for a bad
    name or a parent already at level MAX_FOLDER_DEPTH, NotFound for an unknown parent,
    Conflict when a sibling has the name (any case)."""
    _, folders, regclass = _tables(tree)
    _check_name(name)
    params = {"name": name, "parent": parent_id, "max": MAX_FOLDER_DEPTH}

    def insert() -> UUID:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            _lock_tree(cur, regclass)
            # One statement: the parent's level is read where the row is written.
            row = cur.execute(
                sql.SQL(
                    "INSERT INTO {f} (name, parent_id) SELECT %(name)s, %(parent)s WHERE {level} < %(max)s RETURNING id"
                ).format(f=folders, level=_level_sql(folders, "parent")),
                params,
            ).fetchone()
            if row is None:
                level = cur.execute(sql.SQL("SELECT {}").format(_level_sql(folders, "parent")), params).fetchone()
                assert level is not None
                raise InvalidInput(
                    f"parent_id: {tree} folder {parent_id} is at level {level[0]}; "
                    f"folders nest at most {MAX_FOLDER_DEPTH} levels (a top-level folder is level 1), "
                    "so it cannot hold a subfolder: choose a parent higher up"
                )
            new_id: UUID = row[0]
            return new_id

    try:
        created = retry_conflicts(insert, what=f"creating {tree} folder {name!r}")
    except pg.ForeignKeyViolation as e:
        raise NotFound(f"parent_id: {tree} folder {parent_id} not found", field="parent_id") from e
    except pg.UniqueViolation as e:
        raise _name_taken(conn, tree, name, parent_id) from e
    except DATA_ERRORS as e:
        raise data_error(e, f"{tree} folder") from e
    return get_folder(conn, tree, created)


def update_folder(
    conn: psycopg.Connection[Any],
    tree: Kind,
    folder_id: UUID,
    *,
    name: str | Unset = UNSET,
    parent_id: UUID | Unset | None = UNSET,
) -> Folder:
    """Rename and/or move the folder (parent_id=None: to the root). Raises NotFound for an
    unknown folder or parent, Conflict for a sibling with the name or a move into the
    folder's own subtree, InvalidInput for a bad name or a move that puts a folder of the
    subtree deeper than MAX_FOLDER_DEPTH. A move that leaves the subtree no deeper than it
    was is allowed even in a tree deeper than the limit, so that such a tree can be repaired."""
    _, folders, regclass = _tables(tree)
    changes: dict[str, Any] = {}
    if name is not UNSET:
        changes["name"] = _check_name(name)
    if parent_id is not UNSET:
        changes["parent_id"] = parent_id
    current = get_folder(conn, tree, folder_id)
    if not changes:
        return current
    statement = sql.SQL("UPDATE {} SET {} WHERE id = %(id)s").format(
        folders, sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in changes)
    )

    def write() -> None:
        with conn.transaction():
            with conn.cursor() as cur:
                _lock_tree(cur, regclass)
            if "parent_id" in changes and changes["parent_id"] is not None:
                _check_move_depth(conn, tree, folder_id, changes["parent_id"])
            if conn.execute(statement, {**changes, "id": folder_id}).rowcount == 0:
                raise NotFound(f"{tree} folder {folder_id} not found", field="id")

    try:
        retry_conflicts(write, what=f"changing {tree} folder {folder_id}")
    except pg.ForeignKeyViolation as e:
        raise NotFound(f"parent_id: {tree} folder {parent_id} not found", field="parent_id") from e
    except pg.UniqueViolation as e:
        parent = changes.get("parent_id", current.parent_id)
        raise _name_taken(conn, tree, changes.get("name", current.name), parent) from e
    except pg.CheckViolation as e:
        if "parent_id" not in changes:
            raise data_error(e, f"{tree} folder") from e
        target = _folder(conn, tree, changes["parent_id"])
        target_name = f"{target.path!r} ({target.id})" if target else str(parent_id)
        raise Conflict(
            f"parent_id: cannot move {tree} folder {current.path!r} ({folder_id}) into "
            f"{target_name}: that is the folder itself or one of its subfolders"
        ) from e
    except DATA_ERRORS as e:
        raise data_error(e, f"{tree} folder") from e
    return get_folder(conn, tree, folder_id)


def _name_taken(conn: psycopg.Connection[Any], tree: Kind, name: str, parent_id: UUID | None) -> Conflict:
    """The error for a folder name already used by a sibling under `parent_id`."""
    return Conflict(
        f"name: a {tree} folder named {name!r} already exists {_where(conn, tree, parent_id)} "
        "(names are compared ignoring case)"
    )


def _check_move_depth(conn: psycopg.Connection[Any], tree: Kind, folder_id: UUID, parent_id: UUID) -> None:
    """Raise InvalidInput when moving `folder_id` under `parent_id` would put a folder of its
    subtree below level MAX_FOLDER_DEPTH and lower than it is now. The caller's transaction
    must hold the tree lock until the move is written. A target inside the subtree, or an
    unknown one, is left to the UPDATE (the cycle trigger and the foreign key)."""
    _, folders, _ = _tables(tree)
    # The target's level, the folder's, the height of its subtree, and whether the target is in it.
    query = sql.SQL(
        "WITH RECURSIVE down AS (SELECT id, 1 AS height FROM {f} WHERE id = %(id)s "
        "UNION ALL SELECT c.id, down.height + 1 FROM {f} c JOIN down ON c.parent_id = down.id "
        "WHERE down.height < {w}) "
        "SELECT {target}, {level}, (SELECT max(height) FROM down), "
        "EXISTS (SELECT 1 FROM down WHERE id = %(parent)s)"
    ).format(
        f=folders,
        w=sql.Literal(_WALK_LIMIT),
        target=_level_sql(folders, "parent"),
        level=_level_sql(folders, "id"),
    )
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, {"id": folder_id, "parent": parent_id}).fetchone()
    assert row is not None
    target_level, level, height, into_itself = row
    if into_itself or target_level == 0 or height is None:
        return
    deepest = target_level + height
    if deepest > MAX_FOLDER_DEPTH and target_level >= level:
        raise InvalidInput(
            f"parent_id: moving {tree} folder {folder_id} (with {height - 1} levels of subfolders) "
            f"into {parent_id} (at level {target_level}) would put folders at level {deepest}; "
            f"folders nest at most {MAX_FOLDER_DEPTH} levels (a top-level folder is level 1)"
        )


def delete_folder(conn: psycopg.Connection[Any], tree: Kind, folder_id: UUID) -> FolderDeletion:
    """Delete the folder and its subfolders; their documents (or assets) move to the root.
    Returns how many folders went and how many items moved. Raises NotFound."""
    items, folders, regclass = _tables(tree)

    def delete() -> FolderDeletion:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            _lock_tree(cur, regclass)
            # Locking the subtree makes a concurrent insert of an item into it wait, then fail
            # on the foreign key, instead of landing in a folder that is being deleted uncounted.
            subtree = [
                r[0]
                for r in cur.execute(
                    sql.SQL(
                        "SELECT id FROM {f} WHERE id IN (WITH RECURSIVE sub AS (SELECT id FROM {f} WHERE id = %s "
                        "UNION ALL SELECT c.id FROM {f} c JOIN sub ON c.parent_id = sub.id) SELECT id FROM sub) "
                        "FOR UPDATE"
                    ).format(f=folders),
                    [folder_id],
                ).fetchall()
            ]
            if not subtree:
                raise NotFound(f"{tree} folder {folder_id} not found", field="id")
            moved = cur.execute(
                sql.SQL("UPDATE {} SET folder_id = NULL WHERE folder_id = ANY(%s)").format(items), [subtree]
            ).rowcount
            cur.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(folders), [folder_id])
        return FolderDeletion(folders_deleted=len(subtree), items_moved_to_root=moved)

    return retry_conflicts(delete, what=f"deleting {tree} folder {folder_id}")


def folder_tree(conn: psycopg.Connection[Any], tree: Kind) -> FolderTree:
    """The whole tree, siblings ordered by position then name, with item counts."""
    items, folders, _ = _tables(tree)
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(
            sql.SQL(
                "SELECT f.id, f.parent_id, f.name, f.position, "
                "(SELECT count(*) FROM {i} i WHERE i.folder_id = f.id AND i.archived_at IS NULL) "
                "FROM {f} f ORDER BY f.position, lower(f.name), f.id"
            ).format(i=items, f=folders)
        ).fetchall()
        unfiled = cur.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE folder_id IS NULL AND archived_at IS NULL").format(items)
        ).fetchone()
    nodes = {
        r[0]: FolderNode(
            id=r[0], parent_id=r[1], name=r[2], path="", position=r[3], item_count=r[4], total_item_count=r[4]
        )
        for r in rows
    }
    roots: list[FolderNode] = []
    for node in nodes.values():  # rows are in sibling order, so children lists are too
        (nodes[node.parent_id].children if node.parent_id else roots).append(node)
    # Paths top-down, subtree totals bottom-up, without recursion (trees can be deep).
    order: list[FolderNode] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        parent_path = nodes[node.parent_id].path if node.parent_id else ""
        node.path = f"{parent_path}/{node.name}"
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        if node.parent_id:
            nodes[node.parent_id].total_item_count += node.total_item_count
    return FolderTree(roots=roots, count=len(nodes), unfiled_count=unfiled[0] if unfiled else 0)
