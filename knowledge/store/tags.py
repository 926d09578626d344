"""Tags on documents and assets: add, remove, replace, and count them.

A tag is a token such as `boot:all`, `boot:scout` or `pricing`: 1..100 characters after NFKC
normalisation (a full-width colon becomes ':', so a look-alike is the same tag), with no
whitespace, control characters or invisible characters (zero-width spaces and joiners,
bidirectional controls...); case is kept, and an item holds each tag once and at most 100 of
them (see `validation.normalize_tags`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg
from psycopg import sql
from psycopg.rows import class_row, tuple_row

from knowledge.errors import InvalidInput, NotFound
from knowledge.store.items import KINDS, Kind
from knowledge.store.validation import MAX_TAG_CHARS, MAX_TAGS, check_text, normalize_tag, normalize_tags

__all__ = ["ItemTags", "TagCount", "add_tag", "list_tags", "remove_tag", "set_tags"]


@dataclass(frozen=True)
class ItemTags:
    id: UUID
    kind: str
    tags: list[str]


@dataclass(frozen=True)
class TagCount:
    tag: str
    documents: int
    """Unarchived documents with the tag."""
    assets: int
    """Unarchived assets with the tag."""


def _table(kind: Kind) -> sql.Identifier:
    if kind not in KINDS:
        raise InvalidInput(f"kind is {kind!r}; accepted: {', '.join(KINDS)}")
    return sql.Identifier(KINDS[kind][0])


def _tags_of(conn: psycopg.Connection[Any], kind: Kind, item_id: UUID) -> ItemTags:
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(sql.SQL("SELECT tags FROM {} WHERE id = %s").format(_table(kind)), [item_id]).fetchone()
    if row is None:
        raise NotFound(f"{kind} {item_id} not found", field="id")
    return ItemTags(id=item_id, kind=kind, tags=row[0])


def _update(
    conn: psycopg.Connection[Any], kind: Kind, item_id: UUID, assignment: str, condition: str, params: dict[str, Any]
) -> ItemTags:
    """Run UPDATE ... SET tags = <assignment> WHERE id AND <condition>; an item the condition
    leaves alone is returned as it is."""
    statement = sql.SQL("UPDATE {} SET tags = {} WHERE id = %(id)s AND {} RETURNING tags").format(
        _table(kind), sql.SQL(assignment), sql.SQL(condition)
    )
    try:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(statement, {**params, "id": item_id}).fetchone()
    except pg.CheckViolation as e:
        raise InvalidInput(f"tags: {kind} {item_id} would have more than {MAX_TAGS} tags; remove one first") from e
    if row is None:
        return _tags_of(conn, kind, item_id)
    return ItemTags(id=item_id, kind=kind, tags=row[0])


def add_tag(conn: psycopg.Connection[Any], kind: Kind, item_id: UUID, tag: str) -> ItemTags:
    """Add the tag (NFKC) at the end unless the item has it. Returns the item's tags.
    Raises InvalidInput for a bad tag or a 101st tag, NotFound for an unknown item."""
    clean = normalize_tag(tag)
    return _update(
        conn, kind, item_id, "array_append(tags, %(tag)s::text)", "NOT (%(tag)s::text = ANY(tags))", {"tag": clean}
    )


def remove_tag(conn: psycopg.Connection[Any], kind: Kind, item_id: UUID, tag: str) -> ItemTags:
    """Remove the tag (NFKC) if the item has it, and the tag as sent (NFC) too: a tag stored
    before the NFKC rule ('boot\uff1aall', or one holding a zero-width space) can still be
    removed by its old spelling. Returns the item's tags. Raises InvalidInput for a tag that
    breaks the rule and is not on the item, NotFound for an unknown item."""
    try:
        spellings = [normalize_tag(tag)]
    except InvalidInput:
        legacy = unicodedata.normalize("NFC", tag) if isinstance(tag, str) else None
        if legacy is None or legacy not in _tags_of(conn, kind, item_id).tags:
            raise
        spellings = [legacy]
    spellings.append(unicodedata.normalize("NFC", tag))
    return _update(
        conn,
        kind,
        item_id,
        "array_remove(array_remove(tags, %(a)s::text), %(b)s::text)",
        "tags && ARRAY[%(a)s::text, %(b)s::text]",
        {"a": spellings[0], "b": spellings[-1]},
    )


def set_tags(conn: psycopg.Connection[Any], kind: Kind, item_id: UUID, tags: Sequence[str]) -> ItemTags:
    """Replace the item's tags (normalised, duplicates dropped, order kept).
    Raises InvalidInput for a bad tag or more than 100, NotFound for an unknown item."""
    clean = normalize_tags(tags)
    return _update(conn, kind, item_id, "%(tags)s::text[]", "tags IS DISTINCT FROM %(tags)s::text[]", {"tags": clean})


def list_tags(conn: psycopg.Connection[Any], *, prefix: str | None = None) -> list[TagCount]:
    """Every tag on an unarchived document or asset, with its counts, in tag order;
    only those starting with `prefix` (NFKC, as tags are; case-sensitive) when given."""
    if prefix is not None:
        prefix = unicodedata.normalize("NFKC", prefix)
        check_text("prefix", prefix)
        if len(prefix) > MAX_TAG_CHARS:
            raise InvalidInput(f"prefix is {len(prefix)} characters; tags have at most {MAX_TAG_CHARS}")
    query = """
        SELECT tag, sum(d)::int AS documents, sum(a)::int AS assets FROM (
          SELECT unnest(tags) AS tag, 1 AS d, 0 AS a FROM documents WHERE archived_at IS NULL
          UNION ALL
          SELECT unnest(tags), 0, 1 FROM assets WHERE archived_at IS NULL
        ) x
        WHERE %(prefix)s::text IS NULL OR starts_with(tag, %(prefix)s::text)
        GROUP BY tag ORDER BY tag"""
    with conn.cursor(row_factory=class_row(TagCount)) as cur:
        return cur.execute(query, {"prefix": prefix}).fetchall()
