"""What documents and assets share: their tables, list filters and pages, archiving,
deletion, the embedding retry, and the conversion of driver errors on a write.

`documents.py` and `assets.py` each describe themselves with an `ItemSpec` and call these.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import psycopg
from psycopg import errors as pg
from psycopg import sql
from psycopg.rows import class_row, tuple_row

from knowledge.errors import Conflict, InvalidInput, NotFound
from knowledge.ingest import queue
from knowledge.store.validation import DATA_ERRORS, data_error, normalize_tags
from knowledge.store.versions import version_of

__all__ = [
    "EMBEDDING_STATUSES",
    "KINDS",
    "MAX_OFFSET",
    "MAX_PAGE_SIZE",
    "UNSET",
    "Archived",
    "EmbeddingStatus",
    "ItemFilters",
    "ItemRecord",
    "ItemSpec",
    "Kind",
    "Page",
    "Unset",
    "delete",
    "fetch",
    "page",
    "retry_embedding",
    "select",
    "set_archived",
    "write",
]

T = TypeVar("T")

Kind = Literal["document", "asset"]
KINDS: dict[str, tuple[str, str]] = {
    "document": ("documents", "document_folders"),
    "asset": ("assets", "asset_folders"),
}
"""kind -> (item table, folder table)."""

EmbeddingStatus = Literal["pending", "processing", "indexed", "failed"]
EMBEDDING_STATUSES: tuple[str, ...] = ("pending", "processing", "indexed", "failed")
Archived = Literal["false", "true", "any"]
DEFAULT_LIMIT = 50
MAX_PAGE_SIZE = 200  # items in one page of a list (a search has its own limit)
MAX_OFFSET = 2**63 - 1


class Unset(enum.Enum):
    """The type of UNSET: a partial update's "leave this field as it is"."""

    UNSET = enum.auto()


UNSET = Unset.UNSET


@dataclass(frozen=True, kw_only=True)
class ItemRecord:
    """What a document and an asset both carry besides their own fields: their folder (and its
    path), the plain text, tags, pinned state and metadata, archiving, who made them, the
    version of their content, how far its embedding has got, and when they were made and
    last changed."""

    id: UUID
    folder_id: UUID | None
    folder_path: str
    content_text: str | None
    tags: list[str]
    pinned: bool
    metadata: dict[str, Any]
    archived_at: datetime | None
    created_by_agent_id: UUID | None
    content_version: int
    embedding_status: str
    embedding_error: str | None
    embedding_attempts: int
    embedding_model: str | None
    embedded_at: datetime | None
    passage_count: int
    created_at: datetime
    updated_at: datetime

    @property
    def version(self) -> str:
        """What `if_match` names (`knowledge.store.versions.version_of`); the API's ETag, unquoted."""
        return version_of(self.updated_at)


@dataclass(frozen=True)
class ItemSpec(Generic[T]):
    """How one kind of item is stored and read back. `columns` is the select list over
    the alias `t` whose names are the fields of `row`."""

    kind: Kind
    columns: str
    row: type[T]
    foreign_keys: dict[str, str] = field(default_factory=dict)
    """constraint name -> field, for "<field>: ... not found" messages."""

    @property
    def table(self) -> str:
        return KINDS[self.kind][0]

    @property
    def folders(self) -> str:
        return KINDS[self.kind][1]


@dataclass(frozen=True)
class ItemFilters:
    """List filters. `folder_id` takes the folder's whole subtree, or "root" for unfiled items."""

    folder_id: UUID | Literal["root"] | None = None
    tags_any: Sequence[str] = ()
    tags_all: Sequence[str] = ()
    pinned: bool | None = None
    archived: Archived = "false"
    embedding_status: EmbeddingStatus | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    count: int
    """All items matching the filters, not only this page's."""


def select(spec: ItemSpec[T], source: sql.Composable) -> sql.Composed:
    """SELECT <spec's columns> FROM <source> t."""
    return sql.SQL("SELECT {} FROM {} t").format(sql.SQL(spec.columns), source)


def fetch(conn: psycopg.Connection[Any], spec: ItemSpec[T], item_id: UUID) -> T:
    """The item. Raises NotFound."""
    query = select(spec, sql.Identifier(spec.table)) + sql.SQL(" WHERE t.id = %s")
    with conn.cursor(row_factory=class_row(spec.row)) as cur:
        row = cur.execute(query, [item_id]).fetchone()
    if row is None:
        raise NotFound(f"{spec.kind} {item_id} not found", field="id")
    return row


def update_statement(spec: ItemSpec[T], columns: Iterable[str]) -> sql.Composed:
    """`UPDATE <table> SET col = %(col)s, ... WHERE id = %(id)s RETURNING *` for `columns`."""
    return sql.SQL("UPDATE {} SET {} WHERE id = %(id)s RETURNING *").format(
        sql.Identifier(spec.table),
        sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in columns),
    )


def write(
    conn: psycopg.Connection[Any], spec: ItemSpec[T], statement: sql.Composable, params: dict[str, Any]
) -> T | None:
    """Run an INSERT or UPDATE ... RETURNING * and read back the row it wrote, or None when
    it wrote none. Driver errors become ours: an unknown folder or agent is NotFound naming
    the field, a duplicate Conflict, bad data InvalidInput or TooLarge."""
    query = sql.SQL("WITH t AS ({}) ").format(statement) + select(spec, sql.SQL("t"))
    try:
        with conn.cursor(row_factory=class_row(spec.row)) as cur:
            return cur.execute(query, params).fetchone()
    except pg.ForeignKeyViolation as e:
        name = spec.foreign_keys.get(e.diag.constraint_name or "", "")
        what = "agent" if name.endswith("agent_id") else f"{spec.kind} folder"
        raise NotFound(f"{name or 'reference'}: {what} {params.get(name, '')} not found".rstrip(), field=name) from e
    except pg.UniqueViolation as e:
        raise Conflict(f"{spec.kind} conflicts with an existing one: {e.diag.message_detail or e}") from e
    except DATA_ERRORS as e:
        raise data_error(e, spec.kind) from e


def set_archived(conn: psycopg.Connection[Any], spec: ItemSpec[T], item_id: UUID, archived: bool) -> T:
    """Archive (keeping the first archived_at) or unarchive the item. Raises NotFound."""
    value = sql.SQL("coalesce(archived_at, now())" if archived else "NULL")
    statement = sql.SQL("UPDATE {} SET archived_at = {} WHERE id = %(id)s RETURNING *").format(
        sql.Identifier(spec.table), value
    )
    row = write(conn, spec, statement, {"id": item_id})
    if row is None:
        raise NotFound(f"{spec.kind} {item_id} not found", field="id")
    return row


def delete(conn: psycopg.Connection[Any], spec: ItemSpec[T], item_id: UUID) -> None:
    """Delete the item with its passages and embeddings. Raises NotFound."""
    query = sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(spec.table))
    if conn.execute(query, [item_id]).rowcount == 0:
        raise NotFound(f"{spec.kind} {item_id} not found", field="id")


def retry_embedding(conn: psycopg.Connection[Any], spec: ItemSpec[T], item_id: UUID) -> T:
    """Put a `failed` item back in the embedding queue with its attempts reset.
    Raises NotFound, or Conflict when the item is not failed."""
    row = write(conn, spec, queue.retry(spec.kind), {"id": item_id})
    if row is None:
        status = _scalar(
            conn,
            sql.SQL("SELECT embedding_status::text FROM {} WHERE id = %s").format(sql.Identifier(spec.table)),
            [item_id],
        )
        if status is None:
            raise NotFound(f"{spec.kind} {item_id} not found", field="id")
        raise Conflict(f"{spec.kind} {item_id} is {status}: only a failed {spec.kind} can be retried")
    return row


def page(
    conn: psycopg.Connection[Any], spec: ItemSpec[T], filters: ItemFilters, extra: Sequence[tuple[str, str, Any]] = ()
) -> Page[T]:
    """One page of items matching `filters` (and `extra`: (clause, param, value) triples over
    the alias t), pinned first, then most recently updated. Raises InvalidInput for a bad
    limit, offset or tag, NotFound for an unknown folder."""
    if not 1 <= filters.limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit is {filters.limit}; give 1..{MAX_PAGE_SIZE}", field="limit")
    if not 0 <= filters.offset <= MAX_OFFSET:
        raise InvalidInput(f"offset is {filters.offset}; give 0..{MAX_OFFSET}", field="offset")
    if filters.embedding_status is not None and filters.embedding_status not in EMBEDDING_STATUSES:
        raise InvalidInput(
            f"embedding_status is {filters.embedding_status!r}; accepted: {', '.join(EMBEDDING_STATUSES)}",
            field="embedding_status",
        )
    clauses: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": filters.limit, "offset": filters.offset}

    def where(clause: str, name: str, value: Any) -> None:
        clauses.append(sql.SQL(clause))
        params[name] = value

    if filters.folder_id == "root":
        clauses.append(sql.SQL("t.folder_id IS NULL"))
    elif filters.folder_id is not None:
        if (
            _scalar(
                conn,
                sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(sql.Identifier(spec.folders)),
                [filters.folder_id],
            )
            is None
        ):
            raise NotFound(f"folder_id: {spec.kind} folder {filters.folder_id} not found", field="folder_id")
        clauses.append(
            sql.SQL(
                "t.folder_id IN (WITH RECURSIVE sub AS (SELECT id FROM {f} WHERE id = %(folder_id)s "
                "UNION ALL SELECT c.id FROM {f} c JOIN sub ON c.parent_id = sub.id) SELECT id FROM sub)"
            ).format(f=sql.Identifier(spec.folders))
        )
        params["folder_id"] = filters.folder_id
    if filters.tags_any:
        where("t.tags && %(tags_any)s::text[]", "tags_any", normalize_tags(filters.tags_any, "tags_any"))
    if filters.tags_all:
        where("t.tags @> %(tags_all)s::text[]", "tags_all", normalize_tags(filters.tags_all, "tags_all"))
    if filters.pinned is not None:
        where("t.pinned = %(pinned)s", "pinned", filters.pinned)
    if filters.archived == "false":
        clauses.append(sql.SQL("t.archived_at IS NULL"))
    elif filters.archived == "true":
        clauses.append(sql.SQL("t.archived_at IS NOT NULL"))
    elif filters.archived != "any":
        raise InvalidInput(f"archived is {filters.archived!r}; accepted: false, true, any", field="archived")
    if filters.embedding_status is not None:
        where(
            "t.embedding_status = %(embedding_status)s::embedding_status", "embedding_status", filters.embedding_status
        )
    for clause, name, value in extra:
        where(clause, name, value)

    condition = sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("true")
    table = sql.Identifier(spec.table)
    count = _scalar(conn, sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(table, condition), params)
    query = select(spec, table) + sql.SQL(
        " WHERE {} ORDER BY t.pinned DESC, t.updated_at DESC, t.id LIMIT %(limit)s OFFSET %(offset)s"
    ).format(condition)
    with conn.cursor(row_factory=class_row(spec.row)) as cur:
        items = cur.execute(query, params).fetchall()
    return Page(items=items, count=int(count or 0))


def _scalar(conn: psycopg.Connection[Any], query: sql.Composed, params: Any) -> Any:
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, params).fetchone()
    return None if row is None else row[0]
