"""Versions of documents and assets, and writes conditional on them (optimistic concurrency).

A reader keeps the version it read (the API's ETag); its write names it (If-Match) and
happens only while the item is still at that version, else PreconditionFailed and nothing
is written. The check holds the row's lock until the write commits, so of writers naming
the same version exactly one wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from psycopg import pq, sql
from psycopg.rows import tuple_row

from knowledge.errors import NotFound, PreconditionFailed

if TYPE_CHECKING:
    from knowledge.store.items import ItemSpec

__all__ = ["if_matches", "lock_version", "version_of"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENTITY_TAG = re.compile(r'(W/)?"([^"]*)"')


def version_of(updated_at: datetime) -> str:
    """The version of a document or asset last changed at `updated_at`: microseconds since
    1970, as decimal text. The updated_at triggers of 011_assets_documents.sql move it on
    every change of what a user edits (content, title, tags, folder, pinned, metadata,
    archived state), not on the embedding worker's bookkeeping. Two versions are equal only
    if written by transactions that began in the same microsecond (updated_at is the writing
    transaction's now())."""
    return str((updated_at - _EPOCH) // timedelta(microseconds=1))


def _accepted(if_match: str) -> frozenset[str] | None:
    """The versions an If-Match value accepts; None for `*` (any). Weak tags (W/"...") are
    left out: If-Match compares strongly. Raises PreconditionFailed for anything but `*` or
    comma-separated quoted tags: a value that names no version cannot hold (RFC 9110 13.1.1
    evaluates the condition; nothing is written)."""
    if if_match.strip(" \t") == "*":
        return None
    versions: set[str] = set()
    for part in if_match.split(","):
        tag = _ENTITY_TAG.fullmatch(part.strip(" \t"))
        if tag is None:
            raise PreconditionFailed(
                f"If-Match is {if_match[:100]!r}, which is not an ETag: nothing was "
                "written; send the ETag a GET or a write answered, quoted as "
                'sent (e.g. "1767225600000000"), or *'
            )
        if tag[1] is None:
            versions.add(tag[2])
    return frozenset(versions)


def lock_version(conn: psycopg.Connection[Any], spec: ItemSpec[Any], item_id: UUID, if_match: str) -> str:
    """Lock the item's row until the caller's transaction ends and return its version, after
    checking that `if_match` (an If-Match value: `*`, or quoted versions) accepts it. The
    caller must hold a transaction (`conn.transaction()`) around this call and the write it
    guards: the lock keeps every other writer out between the check and the write. Raises
    NotFound, PreconditionFailed (also for a malformed `if_match`)."""
    accepted = _accepted(if_match)
    query = sql.SQL("SELECT updated_at FROM {} WHERE id = %s FOR UPDATE").format(sql.Identifier(spec.table))
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, [item_id]).fetchone()
    if conn.info.transaction_status == pq.TransactionStatus.IDLE:
        raise RuntimeError("lock_version needs a transaction: its lock ended with the statement")
    if row is None:
        raise NotFound(f"{spec.kind} {item_id} not found", field="id")
    current = version_of(row[0])
    if accepted is not None and current not in accepted:
        raise PreconditionFailed(
            f"{spec.kind} {item_id} changed since version {if_match.strip()[:200]} "
            f'(now "{current}"): GET it again and reapply your change'
        )
    return current


@contextmanager
def if_matches(
    conn: psycopg.Connection[Any], spec: ItemSpec[Any], item_id: UUID, if_match: str | None
) -> Iterator[None]:
    """Run the block in a transaction that first locks the item and checks `if_match` (see
    `lock_version`); without `if_match`, run it as it is (the last write wins)."""
    if if_match is None:
        yield
        return
    with conn.transaction():
        lock_version(conn, spec, item_id, if_match)
        yield
