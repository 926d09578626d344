"""What the worker carries and counts: a leased record on its way to passages, the worker's
statistics, and the registration of the model it embeds with."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from embeddings.model import Embedder
from knowledge.ingest import queue
from knowledge.ingest.chunking import Chunk, chunk_markdown, passage_hash
from knowledge.ingest.extract import asset_markdown, document_markdown

__all__ = ["Record", "WorkerStats", "register_embedder"]


@dataclass
class WorkerStats:
    """What a worker has done since it started: records indexed, failed for good or put back for
    a retry, found changed while embedded (stale), and passages embedded or reused unchanged."""

    indexed: int = 0
    failed: int = 0
    retried: int = 0
    stale: int = 0
    passages_embedded: int = 0
    passages_reused: int = 0
    seconds_embedding: float = 0.0
    reclaimed: int = 0  # leases of dead workers given back


@dataclass
class Record:
    kind: queue.Kind
    id: uuid.UUID
    version: int
    attempts: int
    title: str
    row: dict[str, Any]
    chunks: list[Chunk] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    markdown: str = ""
    error: str | None = None

    def prepare(self, embedder: Embedder) -> None:
        """Extract the record's text and cut it into passages for `embedder`, with their
        hashes; a failure is kept in `error` (the record then fails, the batch goes on)."""
        try:
            row = self.row
            if self.kind == "document":
                self.markdown = document_markdown(row["content_format"], row["content"], row["content_text"])
            else:
                self.markdown = asset_markdown(row)
            self.chunks = chunk_markdown(
                self.title, self.markdown, embedder.count_tokens, max_tokens=embedder.max_tokens
            )
            self.hashes = [passage_hash(c.indexed_text, embedder.name) for c in self.chunks]
        except Exception as e:
            self.error = f"text extraction failed: {type(e).__name__}: {e}"


def register_embedder(conn: psycopg.Connection[Any], embedder: Embedder) -> None:
    """Make sure the model the worker embeds with is registered, with its HNSW index (the
    worker's own check, on any connection; `embedding_models.register_model` registers a model
    by its spec for re-embedding). Raises ValueError when a model of that name is registered
    with another dimension."""
    row = (
        conn.cursor(row_factory=tuple_row)
        .execute(
            "INSERT INTO embedding_models (name, dims, provider, max_tokens) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING dims",
            [embedder.name, embedder.dims, embedder.provider, embedder.max_tokens + 2],
        )
        .fetchone()
    )
    dims = row[0] if row else None
    if dims != embedder.dims:
        raise ValueError(
            f"model {embedder.name} is registered with {dims} dimensions, but the embedder gives {embedder.dims}"
        )
    conn.execute("SELECT hq_ensure_embedding_index(%s)", [embedder.name])
