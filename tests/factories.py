"""Rows for tests, written straight into the tables (no API, no validation): documents, assets
and folders with the columns a test names; and the fake embedder indexed and made active."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql

from embeddings.model import FakeEmbedder
from knowledge.ingest.worker import Worker
from knowledge.search.setup import forget_setup

__all__ = ["add_asset", "add_document", "add_folder", "index_with_fake"]


def _insert(conn: psycopg.Connection[Any], table: str, values: dict[str, Any]) -> uuid.UUID:
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    row = conn.execute(statement, list(values.values())).fetchone()
    assert row is not None
    return row["id"] if isinstance(row, dict) else row[0]  # type: ignore[no-any-return]


def add_document(
    conn: psycopg.Connection[Any], title: str = "Playbook", text: str = "", tags: Sequence[str] = (), **columns: Any
) -> uuid.UUID:
    """A markdown document (any other column by name: folder_id, pinned, archived_at ...)."""
    return _insert(conn, "documents", {"title": title, "content_text": text, "tags": list(tags), **columns})


def add_asset(
    conn: psycopg.Connection[Any],
    name: str,
    text: str = "",
    asset_type: str = "other",
    tags: Sequence[str] = (),
    **columns: Any,
) -> uuid.UUID:
    """An asset with `text` as its content (any other column by name)."""
    values = {"name": name, "asset_type": asset_type, "content_text": text, "tags": list(tags), **columns}
    return _insert(conn, "assets", values)


def add_folder(
    conn: psycopg.Connection[Any], tree: Literal["document", "asset"], name: str, parent: uuid.UUID | None = None
) -> uuid.UUID:
    """A folder of the document or the asset tree."""
    return _insert(conn, f"{tree}_folders", {"name": name, "parent_id": parent})


def index_with_fake(conn: psycopg.Connection[Any], url: str) -> None:
    """Embed everything queued with the fake embedder, then make it the active model."""
    Worker(url, FakeEmbedder()).run(once=True)
    with conn.transaction():
        conn.execute("UPDATE embedding_models SET is_active = false")
        conn.execute("UPDATE embedding_models SET is_active = true, activated_at = now() WHERE name = 'fake-hash-384'")
    forget_setup()
