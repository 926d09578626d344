"""A record's passages and their vectors in the database: vectors already stored for a
passage's text (by content hash, for one model), and a record's passages replaced by new ones,
keeping those whose text did not change and their vectors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from knowledge.ingest.chunking import Chunk
from knowledge.ingest.queue import Kind

__all__ = ["stored_vectors", "write_passages"]

_OWNER: dict[Kind, str] = {"document": "document_id", "asset": "asset_id"}
_CHUNK_INDEX_SHIFT = 1_000_000  # moves kept passages out of the way while renumbering

Vector = np.ndarray[Any, Any]


def stored_vectors(conn: psycopg.Connection[Any], model: str, hashes: list[str]) -> Iterator[tuple[str, Vector]]:
    """(content hash, float32 vector) of `model` for those of `hashes` some passage holds."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT DISTINCT ON (content_hash) content_hash, embedding FROM chunk_embeddings "
            "WHERE model = %s AND content_hash = ANY(%s)",
            [model, hashes],
        ).fetchall()
    for row in rows:
        vector = row["embedding"]  # pgvector's Vector (newer) or a numpy array (older)
        yield (
            row["content_hash"],
            np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, dtype=np.float32),
        )


def write_passages(
    conn: psycopg.Connection[Any],
    kind: Kind,
    record_id: UUID,
    chunks: Sequence[Chunk],
    hashes: Sequence[str],
    vectors: Mapping[str, Vector],
    model: str,
) -> None:
    """Make `chunks` (with their content `hashes`) the passages of the record, and store
    `model`'s vector (from `vectors`, by hash) for every passage that lacks one. A passage
    whose hash is unchanged keeps its row, its vectors of other models and its place in the
    keyword index; the others are deleted or inserted. Run it in the caller's transaction."""
    owner = sql.Identifier(_OWNER[kind])
    with conn.cursor(row_factory=dict_row) as cur:
        existing = cur.execute(
            sql.SQL("SELECT id, content_hash FROM knowledge_chunks WHERE {} = %s").format(owner), [record_id]
        ).fetchall()
        by_hash: dict[str, list[int]] = {}
        for row in existing:
            by_hash.setdefault(row["content_hash"], []).append(row["id"])
        keep: list[tuple[int, Chunk, str]] = []
        new: list[tuple[Chunk, str]] = []
        for chunk, h in zip(chunks, hashes, strict=True):
            ids = by_hash.get(h)
            if ids:
                keep.append((ids.pop(), chunk, h))
            else:
                new.append((chunk, h))
        gone = [i for ids in by_hash.values() for i in ids]
        if gone:
            cur.execute("DELETE FROM knowledge_chunks WHERE id = ANY(%s)", [gone])
        if keep:
            cur.execute(
                "UPDATE knowledge_chunks SET chunk_index = chunk_index + %s WHERE id = ANY(%s)",
                [_CHUNK_INDEX_SHIFT, [i for i, _, _ in keep]],
            )
            cur.executemany(
                "UPDATE knowledge_chunks SET chunk_index = %s, heading_path = %s, content = %s, "
                "token_count = %s, char_start = %s, char_end = %s WHERE id = %s",
                [
                    (c.index, list(c.heading_path), c.content, c.token_count, c.char_start, c.char_end, i)
                    for i, c, _ in keep
                ],
            )
        created: list[tuple[int, str]] = []
        if new:
            # One round trip for all new passages; heading paths travel as JSON arrays
            # because unnest() cannot take a ragged text[][].
            rows = cur.execute(
                sql.SQL(
                    "INSERT INTO knowledge_chunks ({}, chunk_index, heading_path, content, indexed_text,"
                    " content_hash, token_count, char_start, char_end)"
                    " SELECT %s, i, ARRAY(SELECT jsonb_array_elements_text(hp)), c, t, h, n, cs, ce"
                    " FROM unnest(%s::int[], %s::jsonb[], %s::text[], %s::text[], %s::text[], %s::int[],"
                    " %s::int[], %s::int[]) AS u(i, hp, c, t, h, n, cs, ce)"
                    " RETURNING id, content_hash"
                ).format(owner),
                [
                    record_id,
                    [c.index for c, _ in new],
                    [Jsonb(list(c.heading_path)) for c, _ in new],
                    [c.content for c, _ in new],
                    [c.indexed_text for c, _ in new],
                    [h for _, h in new],
                    [c.token_count for c, _ in new],
                    [c.char_start for c, _ in new],
                    [c.char_end for c, _ in new],
                ],
            ).fetchall()
            created = [(r["id"], r["content_hash"]) for r in rows]
        # Kept passages may lack this model's vector (first run of a new model).
        kept_ids = [i for i, _, _ in keep]
        have = (
            {
                r["chunk_id"]
                for r in cur.execute(
                    "SELECT chunk_id FROM chunk_embeddings WHERE model = %s AND chunk_id = ANY(%s)",
                    [model, kept_ids],
                ).fetchall()
            }
            if kept_ids
            else set()
        )
        todo = created + [(i, h) for i, _, h in keep if i not in have]
        cur.executemany(
            "INSERT INTO chunk_embeddings (chunk_id, model, embedding, content_hash) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (chunk_id, model) DO UPDATE SET embedding = EXCLUDED.embedding,"
            " content_hash = EXCLUDED.content_hash, embedded_at = now()",
            [(i, model, vectors[h], h) for i, h in todo],
        )
