"""Documents: TipTap JSON, markdown or HTML, with a folder, tags, pinned state and metadata.

Content is stored as given and read back unchanged. Changing the title or the content
re-queues the document for embedding (a trigger in 011_assets_documents.sql does that);
tags, folder, pinned state and metadata do not.

A write given `if_match` happens only while the document is at a version it accepts
(`knowledge.store.versions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from knowledge.errors import Conflict, InvalidInput, NotFound
from knowledge.store import items
from knowledge.store.items import UNSET, ItemFilters, ItemRecord, ItemSpec, Page, Unset
from knowledge.store.validation import (
    MAX_CONTENT_BYTES,
    check_html,
    check_json,
    check_name,
    check_text,
    check_tiptap,
    normalize_tags,
)
from knowledge.store.versions import if_matches, lock_version

__all__ = [
    "CONTENT_FORMATS",
    "MAX_TITLE_CHARS",
    "ContentFormat",
    "Document",
    "archive_document",
    "create_document",
    "delete_document",
    "get_document",
    "list_documents",
    "lock_document",
    "retry_document_embedding",
    "unarchive_document",
    "update_document",
    "upsert_document_by_source_path",
]

ContentFormat = Literal["tiptap", "markdown", "html"]
CONTENT_FORMATS: tuple[str, ...] = ("tiptap", "markdown", "html")
MAX_TITLE_CHARS = 500


@dataclass(frozen=True, kw_only=True)
class Document(ItemRecord):
    """A document as stored: its title and content (TipTap JSON, markdown or HTML), the file it
    was imported from, and the agent that changed it last; the rest is ItemRecord's."""

    title: str
    content_format: str
    content: dict[str, Any] | None
    source_path: str | None
    updated_by_agent_id: UUID | None


_SPEC = ItemSpec(
    kind="document",
    row=Document,
    columns="""t.id, t.title, t.folder_id, document_folder_path(t.folder_id) AS folder_path,
        t.content_format::text AS content_format, t.content, t.content_text, t.tags, t.pinned,
        t.metadata, t.source_path, t.archived_at, t.created_by_agent_id, t.updated_by_agent_id,
        t.content_version, t.embedding_status::text AS embedding_status, t.embedding_error,
        t.embedding_attempts, t.embedding_model, t.embedded_at,
        (SELECT count(*) FROM knowledge_chunks c WHERE c.document_id = t.id) AS passage_count,
        t.created_at, t.updated_at""",
    foreign_keys={
        "documents_folder_id_fkey": "folder_id",
        "documents_created_by_agent_id_fkey": "created_by_agent_id",
        "documents_updated_by_agent_id_fkey": "updated_by_agent_id",
    },
)


def lock_document(conn: psycopg.Connection[Any], document_id: UUID, if_match: str = "*") -> str:
    """Lock the document's row for the caller's transaction and return its version, checked
    against `if_match` (`knowledge.versions.lock_version`): for writes made elsewhere (tags,
    markdown) that must honour an If-Match. The caller must hold a transaction around this
    call and the write. Raises NotFound, PreconditionFailed, InvalidInput."""
    return lock_version(conn, _SPEC, document_id, if_match)


def _content(fmt: str, content: Any, content_text: Any) -> tuple[Any, Any]:
    """(content, content_text) checked for `fmt`: the one that fmt uses, the other None.
    Raises InvalidInput naming the field, TooLarge over MAX_CONTENT_BYTES."""
    if fmt not in CONTENT_FORMATS:
        raise InvalidInput(f"content_format is {fmt!r}; accepted: {', '.join(CONTENT_FORMATS)}")
    if fmt == "tiptap":
        if content_text is not None:
            raise InvalidInput(
                "content_text is for markdown and html; with content_format "
                "'tiptap' send the document as a JSON object in content"
            )
        if content is None:
            raise InvalidInput(
                "content is required with content_format 'tiptap': "
                'a TipTap JSON object like {"type": "doc", "content": [...]}'
            )
        check_tiptap("content", content)
        return Jsonb(content), None
    if content is not None:
        raise InvalidInput(f"content is for content_format 'tiptap'; with {fmt!r} send the text in content_text")
    if not isinstance(content_text, str):
        raise InvalidInput(f"content_text is required with content_format {fmt!r}: a string of {fmt}")
    check_text("content_text", content_text, max_bytes=MAX_CONTENT_BYTES)
    if fmt == "html":
        check_html("content_text", content_text)
    return None, content_text


def _metadata(metadata: Any) -> Jsonb:
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a JSON object, got {type(metadata).__name__}")
    check_json("metadata", metadata, max_bytes=MAX_CONTENT_BYTES)
    return Jsonb(metadata)


def create_document(
    conn: psycopg.Connection[Any],
    *,
    title: str,
    content_format: str = "markdown",
    content: dict[str, Any] | None = None,
    content_text: str | None = None,
    folder_id: UUID | None = None,
    tags: Sequence[str] = (),
    pinned: bool = False,
    metadata: dict[str, Any] | None = None,
    source_path: str | None = None,
    created_by_agent_id: UUID | None = None,
) -> Document:
    """Store a new document (queued for embedding). Raises InvalidInput or TooLarge for bad
    values, NotFound for an unknown folder or agent, Conflict for a taken source_path."""
    params: dict[str, Any] = {
        "title": check_name("title", title, max_chars=MAX_TITLE_CHARS),
        "content_format": content_format,
        "folder_id": folder_id,
        "tags": normalize_tags(tags),
        "pinned": bool(pinned),
        "metadata": _metadata({} if metadata is None else metadata),
        "source_path": source_path,
        "created_by_agent_id": created_by_agent_id,
        "updated_by_agent_id": created_by_agent_id,
    }
    params["content"], params["content_text"] = _content(content_format, content, content_text)
    if source_path is not None:
        check_name("source_path", source_path, max_chars=4096)
    statement = sql.SQL("INSERT INTO documents ({}) VALUES ({}) RETURNING *").format(
        sql.SQL(", ").join(map(sql.Identifier, params)), sql.SQL(", ").join(map(sql.Placeholder, params))
    )
    row = items.write(conn, _SPEC, statement, params)
    assert row is not None
    return row


def get_document(conn: psycopg.Connection[Any], document_id: UUID) -> Document:
    """The document. Raises NotFound."""
    return items.fetch(conn, _SPEC, document_id)


_NOT_NULL = ("title", "content_format", "tags", "pinned", "metadata")


def update_document(
    conn: psycopg.Connection[Any],
    document_id: UUID,
    *,
    title: str | Unset = UNSET,
    content_format: str | Unset = UNSET,
    content: dict[str, Any] | Unset | None = UNSET,
    content_text: str | Unset | None = UNSET,
    folder_id: UUID | Unset | None = UNSET,
    tags: Sequence[str] | Unset = UNSET,
    pinned: bool | Unset = UNSET,
    metadata: dict[str, Any] | Unset = UNSET,
    updated_by_agent_id: UUID | Unset | None = UNSET,
    if_match: str | None = None,
) -> Document:
    """Change the given fields; UNSET leaves a field as it is, folder_id=None moves the
    document to the root. A new content_format needs its content (content for tiptap,
    content_text for markdown and html) unless the stored one fits: markdown <-> html keeps
    the text. With `if_match`, only if the document is still at a version it accepts (see
    `lock_version`); without, the last write wins. Raises NotFound, InvalidInput, TooLarge,
    PreconditionFailed."""
    given: dict[str, Any] = {
        k: v
        for k, v in {
            "title": title,
            "content_format": content_format,
            "content": content,
            "content_text": content_text,
            "folder_id": folder_id,
            "tags": tags,
            "pinned": pinned,
            "metadata": metadata,
            "updated_by_agent_id": updated_by_agent_id,
        }.items()
        if v is not UNSET
    }
    for name in _NOT_NULL:
        if name in given and given[name] is None:
            raise InvalidInput(f"{name} cannot be null")
    if not given:
        with if_matches(conn, _SPEC, document_id, if_match):
            return get_document(conn, document_id)
    params = dict(given)
    if "title" in given:
        check_name("title", given["title"], max_chars=MAX_TITLE_CHARS)
    if "tags" in given:
        params["tags"] = normalize_tags(given["tags"])
    if "pinned" in given:
        params["pinned"] = bool(given["pinned"])
    if "metadata" in given:
        params["metadata"] = _metadata(given["metadata"])
    with if_matches(conn, _SPEC, document_id, if_match), conn.transaction():
        if given.keys() & {"content_format", "content", "content_text"}:
            with conn.cursor(row_factory=tuple_row) as cur:
                row = cur.execute(
                    "SELECT content_format::text, content, content_text FROM documents WHERE id = %s FOR UPDATE",
                    [document_id],
                ).fetchone()
            if row is None:
                raise NotFound(f"document {document_id} not found", field="id")
            old_fmt: str = row[0]
            old_content, old_text = row[1], row[2]
            fmt: str = given.get("content_format", old_fmt)
            if "content_format" not in given:
                _fits_stored_format(document_id, old_fmt, given)
            # What the new format does not use is cleared; what it uses and was not sent is kept.
            if fmt == "tiptap":
                new_content = given.get("content", old_content if old_fmt == "tiptap" else None)
                new_text = given.get("content_text")
            else:
                new_text = given.get("content_text", old_text if old_fmt != "tiptap" else None)
                new_content = given.get("content")
            params["content_format"] = fmt
            params["content"], params["content_text"] = _content(fmt, new_content, new_text)
        updated = items.write(conn, _SPEC, items.update_statement(_SPEC, params), {**params, "id": document_id})
    if updated is None:
        raise NotFound(f"document {document_id} not found", field="id")
    return updated


def _fits_stored_format(document_id: UUID, fmt: str, given: dict[str, Any]) -> None:
    """An update that keeps the stored format `fmt` may send that format's content (not null)
    and not the other's. Which one that is depends on what is stored: a mismatch is a
    Conflict (409), where the same request with content_format would be a 422."""
    uses, other = ("content", "content_text") if fmt == "tiptap" else ("content_text", "content")
    if given.get(other) is not None or (uses in given and given[uses] is None):
        raise Conflict(
            f"{uses}: document {document_id} is {fmt}, so an update without content_format "
            f"sends its text in {uses} (not null) and no {other}; to change the format, "
            "send content_format with the content for it"
        )


def archive_document(conn: psycopg.Connection[Any], document_id: UUID, *, if_match: str | None = None) -> Document:
    """Archive the document: lists leave it out unless asked. With `if_match`, only if the
    document is still at a version it accepts. Raises NotFound, PreconditionFailed."""
    with if_matches(conn, _SPEC, document_id, if_match):
        return items.set_archived(conn, _SPEC, document_id, True)


def unarchive_document(conn: psycopg.Connection[Any], document_id: UUID, *, if_match: str | None = None) -> Document:
    """Bring an archived document back. With `if_match`, only if the document is still at a
    version it accepts. Raises NotFound, PreconditionFailed."""
    with if_matches(conn, _SPEC, document_id, if_match):
        return items.set_archived(conn, _SPEC, document_id, False)


def delete_document(conn: psycopg.Connection[Any], document_id: UUID, *, if_match: str | None = None) -> None:
    """Delete the document, its passages, embeddings and comments. With `if_match`, only if
    the document is still at a version it accepts. Raises NotFound, PreconditionFailed."""
    with if_matches(conn, _SPEC, document_id, if_match):
        items.delete(conn, _SPEC, document_id)


def retry_document_embedding(conn: psycopg.Connection[Any], document_id: UUID) -> Document:
    """Put a `failed` document back to `pending` with its attempts reset.
    Raises NotFound, or Conflict when the document has not failed."""
    return items.retry_embedding(conn, _SPEC, document_id)


def list_documents(conn: psycopg.Connection[Any], filters: ItemFilters | None = None) -> Page[Document]:
    """A page of documents (the first 50 unarchived without filters), pinned first, then the
    most recently updated. Raises InvalidInput for bad filters, NotFound for an unknown folder."""
    return items.page(conn, _SPEC, filters or ItemFilters())


def upsert_document_by_source_path(
    conn: psycopg.Connection[Any],
    *,
    source_path: str,
    title: str,
    content_format: str,
    content_text: str,
    folder_id: UUID | None,
    tags: Sequence[str],
    metadata: dict[str, Any],
) -> tuple[Document, str]:
    """The importer's write: create the document with this source_path, or update it.
    Returns it with 'created', 'updated' or 'unchanged'. Unchanged (title, format, text,
    folder and tags all equal) leaves the row untouched, so it is not re-queued for
    embedding and its metadata is kept. Raises InvalidInput, TooLarge, NotFound."""
    if content_format == "tiptap":
        raise InvalidInput("content_format: the importer takes markdown or html text, not tiptap")
    check_name("source_path", source_path, max_chars=4096)
    clean_tags = normalize_tags(tags)
    fields: dict[str, Any] = {
        "title": title,
        "content_format": content_format,
        "content_text": content_text,
        "folder_id": folder_id,
        "tags": clean_tags,
    }
    with conn.transaction():
        for _ in range(2):
            with conn.cursor(row_factory=tuple_row) as cur:
                row = cur.execute(
                    "SELECT id, title, content_format::text, content_text, folder_id, tags "
                    "FROM documents WHERE source_path = %s FOR UPDATE",
                    [source_path],
                ).fetchone()
            if row is not None:
                break
            params = {**fields, "source_path": source_path}
            params["title"] = check_name("title", title, max_chars=MAX_TITLE_CHARS)
            params["content"], params["content_text"] = _content(content_format, None, content_text)
            params["metadata"] = _metadata(metadata)
            inserted = items.write(
                conn,
                _SPEC,
                sql.SQL(
                    "INSERT INTO documents (source_path, title, content_format, content, content_text, "
                    "folder_id, tags, metadata) VALUES (%(source_path)s, %(title)s, %(content_format)s, "
                    "%(content)s, %(content_text)s, %(folder_id)s, %(tags)s, %(metadata)s) "
                    "ON CONFLICT (source_path) WHERE source_path IS NOT NULL DO NOTHING RETURNING *"
                ),
                params,
            )
            if inserted is not None:
                return inserted, "created"
        assert row is not None
        document_id, *current = row
        if current == list(fields.values()):
            return get_document(conn, document_id), "unchanged"
        return update_document(
            conn,
            document_id,
            title=title,
            content_format=content_format,
            content_text=content_text,
            folder_id=folder_id,
            tags=clean_tags,
            metadata=metadata,
        ), "updated"
