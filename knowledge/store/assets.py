"""Assets: SOPs, research, media, templates, scripts, spreadsheets and links, with a folder,
tags, pinned state and metadata. A link needs a url; media keep a storage_path and no text.

Changing the name, description, type, url, text or metadata re-queues the asset for
embedding (a trigger in 011_assets_documents.sql); tags, folder and pinned state do not.

A write given `if_match` happens only while the asset is at a version it accepts
(`knowledge.store.versions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import errors as pg
from psycopg import sql
from psycopg.types.json import Jsonb

from knowledge.errors import Conflict, InvalidInput, NotFound
from knowledge.store import items
from knowledge.store.items import UNSET, ItemFilters, ItemRecord, ItemSpec, Page, Unset
from knowledge.store.validation import MAX_CONTENT_BYTES, check_json, check_name, check_text, normalize_tags
from knowledge.store.versions import if_matches, lock_version

__all__ = [
    "ASSET_TYPES",
    "MAX_NAME_CHARS",
    "Asset",
    "AssetType",
    "archive_asset",
    "create_asset",
    "delete_asset",
    "get_asset",
    "list_assets",
    "lock_asset",
    "retry_asset_embedding",
    "unarchive_asset",
    "update_asset",
]

AssetType = Literal["sop", "research", "image", "video", "audio", "template", "script", "spreadsheet", "link", "other"]
ASSET_TYPES: tuple[str, ...] = (
    "sop",
    "research",
    "image",
    "video",
    "audio",
    "template",
    "script",
    "spreadsheet",
    "link",
    "other",
)
MAX_NAME_CHARS = 500
MAX_SIZE_BYTES = 2**53 - 1
"""8 PiB: the largest whole number a JSON number carries exactly to every client (JavaScript's
Number.MAX_SAFE_INTEGER); a bigint would hold more, but nobody could read it back exactly."""
MAX_SHORT_TEXT_CHARS = 4096
"""url, storage_path and mime_type."""


@dataclass(frozen=True, kw_only=True)
class Asset(ItemRecord):
    """An asset as stored: its name, description and type, where its file lives (url, storage
    path, MIME type, size); the rest is ItemRecord's."""

    name: str
    description: str | None
    asset_type: str
    url: str | None
    storage_path: str | None
    mime_type: str | None
    size_bytes: int | None


_SPEC = ItemSpec(
    kind="asset",
    row=Asset,
    columns="""t.id, t.name, t.description, t.asset_type::text AS asset_type, t.folder_id,
        asset_folder_path(t.folder_id) AS folder_path, t.url, t.storage_path, t.mime_type,
        t.size_bytes, t.content_text, t.tags, t.pinned, t.metadata, t.archived_at,
        t.created_by_agent_id, t.content_version, t.embedding_status::text AS embedding_status,
        t.embedding_error, t.embedding_attempts, t.embedding_model, t.embedded_at,
        (SELECT count(*) FROM knowledge_chunks c WHERE c.asset_id = t.id) AS passage_count,
        t.created_at, t.updated_at""",
    foreign_keys={
        "assets_folder_id_fkey": "folder_id",
        "assets_created_by_agent_id_fkey": "created_by_agent_id",
    },
)


# The columns a caller writes, as create_asset and update_asset name their arguments.
_COLUMNS = (
    "name",
    "asset_type",
    "description",
    "url",
    "storage_path",
    "mime_type",
    "size_bytes",
    "content_text",
    "folder_id",
    "tags",
    "pinned",
    "metadata",
)


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """The column values to write, checked. Raises InvalidInput or TooLarge naming the field."""
    params = dict(values)
    for name in ("name", "asset_type", "tags", "pinned", "metadata"):
        if name in values and values[name] is None:
            raise InvalidInput(f"{name} cannot be null")
    if "name" in values:
        check_name("name", values["name"], max_chars=MAX_NAME_CHARS)
    if "asset_type" in values and values["asset_type"] not in ASSET_TYPES:
        raise InvalidInput(f"asset_type is {values['asset_type']!r}; accepted: {', '.join(ASSET_TYPES)}")
    for name in ("url", "storage_path", "mime_type"):
        if values.get(name) is not None:
            check_name(name, values[name], max_chars=MAX_SHORT_TEXT_CHARS)
    for name in ("description", "content_text"):
        if values.get(name) is not None:
            if not isinstance(values[name], str):
                raise InvalidInput(f"{name} must be a string")
            check_text(name, values[name], max_bytes=MAX_CONTENT_BYTES)
    size = values.get("size_bytes")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE_BYTES):
        raise InvalidInput(f"size_bytes is {size!r}; give a whole number of bytes, 0..{MAX_SIZE_BYTES}")
    if "tags" in values:
        params["tags"] = normalize_tags(values["tags"])
    if "pinned" in values:
        params["pinned"] = bool(values["pinned"])
    if "metadata" in values:
        if not isinstance(values["metadata"], dict):
            raise InvalidInput(f"metadata must be a JSON object, got {type(values['metadata']).__name__}")
        check_json("metadata", values["metadata"], max_bytes=MAX_CONTENT_BYTES)
        params["metadata"] = Jsonb(values["metadata"])
    return params


def _write(conn: psycopg.Connection[Any], statement: sql.Composable, params: dict[str, Any]) -> Asset | None:
    try:
        return items.write(conn, _SPEC, statement, params)
    except InvalidInput as e:
        cause = e.__cause__
        if isinstance(cause, pg.CheckViolation) and cause.diag.constraint_name == "assets_link_has_url":
            # create_asset checks the values it is given first: here an update left a link without url
            raise Conflict(
                "url: the asset would be a link without a url; a link keeps its url (change "
                "asset_type in the same update to drop it)"
            ) from cause
        raise


def create_asset(
    conn: psycopg.Connection[Any],
    *,
    name: str,
    asset_type: str = "other",
    description: str | None = None,
    url: str | None = None,
    storage_path: str | None = None,
    mime_type: str | None = None,
    size_bytes: int | None = None,
    content_text: str | None = None,
    folder_id: UUID | None = None,
    tags: Sequence[str] = (),
    pinned: bool = False,
    metadata: dict[str, Any] | None = None,
    created_by_agent_id: UUID | None = None,
) -> Asset:
    """Store a new asset (queued for embedding). Raises InvalidInput or TooLarge for bad
    values (a link without url among them), NotFound for an unknown folder or agent."""
    if asset_type == "link" and url is None:
        raise InvalidInput("url is required when asset_type is 'link'")
    params = _checked(
        {
            "name": name,
            "asset_type": asset_type,
            "description": description,
            "url": url,
            "storage_path": storage_path,
            "mime_type": mime_type,
            "size_bytes": size_bytes,
            "content_text": content_text,
            "folder_id": folder_id,
            "tags": tags,
            "pinned": pinned,
            "metadata": {} if metadata is None else metadata,
            "created_by_agent_id": created_by_agent_id,
        }
    )
    statement = sql.SQL("INSERT INTO assets ({}) VALUES ({}) RETURNING *").format(
        sql.SQL(", ").join(map(sql.Identifier, params)), sql.SQL(", ").join(map(sql.Placeholder, params))
    )
    row = _write(conn, statement, params)
    assert row is not None
    return row


def get_asset(conn: psycopg.Connection[Any], asset_id: UUID) -> Asset:
    """The asset. Raises NotFound."""
    return items.fetch(conn, _SPEC, asset_id)


def lock_asset(conn: psycopg.Connection[Any], asset_id: UUID, if_match: str = "*") -> str:
    """Lock the asset's row for the caller's transaction and return its version, checked
    against `if_match` (`knowledge.versions.lock_version`): for writes made elsewhere (tags)
    that must honour an If-Match. The caller must hold a transaction around this call and
    the write. Raises NotFound, PreconditionFailed, InvalidInput."""
    return lock_version(conn, _SPEC, asset_id, if_match)


def update_asset(
    conn: psycopg.Connection[Any],
    asset_id: UUID,
    *,
    name: str | Unset = UNSET,
    asset_type: str | Unset = UNSET,
    description: str | Unset | None = UNSET,
    url: str | Unset | None = UNSET,
    storage_path: str | Unset | None = UNSET,
    mime_type: str | Unset | None = UNSET,
    size_bytes: int | Unset | None = UNSET,
    content_text: str | Unset | None = UNSET,
    folder_id: UUID | Unset | None = UNSET,
    tags: Sequence[str] | Unset = UNSET,
    pinned: bool | Unset = UNSET,
    metadata: dict[str, Any] | Unset = UNSET,
    if_match: str | None = None,
) -> Asset:
    """Change the given fields; UNSET leaves a field as it is, None clears an optional one
    (folder_id=None moves the asset to the root). With `if_match`, only if the asset is still
    at a version it accepts; without, the last write wins. Raises NotFound, InvalidInput,
    TooLarge, PreconditionFailed."""
    given = {k: v for k, v in locals().items() if k in _COLUMNS and v is not UNSET}  # the fields given
    if not given:
        with if_matches(conn, _SPEC, asset_id, if_match):
            return get_asset(conn, asset_id)
    params = _checked(given)
    with if_matches(conn, _SPEC, asset_id, if_match):
        row = _write(conn, items.update_statement(_SPEC, params), {**params, "id": asset_id})
    if row is None:
        raise NotFound(f"asset {asset_id} not found", field="id")
    return row


def archive_asset(conn: psycopg.Connection[Any], asset_id: UUID, *, if_match: str | None = None) -> Asset:
    """Archive the asset: lists leave it out unless asked. With `if_match`, only if the asset
    is still at a version it accepts. Raises NotFound, PreconditionFailed."""
    with if_matches(conn, _SPEC, asset_id, if_match):
        return items.set_archived(conn, _SPEC, asset_id, True)


def unarchive_asset(conn: psycopg.Connection[Any], asset_id: UUID, *, if_match: str | None = None) -> Asset:
    """Bring an archived asset back. With `if_match`, only if the asset is still at a version
    it accepts. Raises NotFound, PreconditionFailed."""
    with if_matches(conn, _SPEC, asset_id, if_match):
        return items.set_archived(conn, _SPEC, asset_id, False)


def delete_asset(conn: psycopg.Connection[Any], asset_id: UUID, *, if_match: str | None = None) -> None:
    """Delete the asset record with its passages, embeddings and comments (not the stored
    file at storage_path). With `if_match`, only if the asset is still at a version it
    accepts. Raises NotFound, PreconditionFailed."""
    with if_matches(conn, _SPEC, asset_id, if_match):
        items.delete(conn, _SPEC, asset_id)


def retry_asset_embedding(conn: psycopg.Connection[Any], asset_id: UUID) -> Asset:
    """Put a `failed` asset back to `pending` with its attempts reset.
    Raises NotFound, or Conflict when the asset has not failed."""
    return items.retry_embedding(conn, _SPEC, asset_id)


def list_assets(
    conn: psycopg.Connection[Any], filters: ItemFilters | None = None, asset_type: str | None = None
) -> Page[Asset]:
    """A page of assets (of `asset_type` if given), pinned first, then the most recently
    updated. Raises InvalidInput for bad filters, NotFound for an unknown folder."""
    extra: list[tuple[str, str, Any]] = []
    if asset_type is not None:
        if asset_type not in ASSET_TYPES:
            raise InvalidInput(f"asset_type is {asset_type!r}; accepted: {', '.join(ASSET_TYPES)}")
        extra.append(("t.asset_type = %(asset_type)s::asset_type", "asset_type", asset_type))
    return items.page(conn, _SPEC, filters or ItemFilters(), extra)
