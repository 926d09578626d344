"""The service at a glance: how much is stored, how much waits for embedding, and with what.

`service_status` is what the operator's page shows in its status strip; one statement for the
counts, one for the active model, one for the keyword path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

from embeddings.registry import active_spec
from knowledge.db.keyword_index import keyword_path
from knowledge.ingest import queue

__all__ = ["ServiceStatus", "service_status"]


@dataclass(frozen=True)
class ServiceStatus:
    documents: int
    """Unarchived documents."""
    assets: int
    """Unarchived assets."""
    passages: int
    """Passages (chunks) stored for search."""
    queue: int
    """Documents and assets waiting for embedding: pending or processing."""
    failed: int
    """Documents and assets whose embedding failed for good."""
    active_model: str | None
    """The embedding model searched; None if no model is active."""
    keyword_path: str
    """'bm25' (pg_textsearch), 'sql-bm25' (the SQL keyword index) or 'ts_rank_cd'."""


@dataclass(frozen=True)
class _Counts:
    documents: int
    assets: int
    passages: int


_COUNTS = """
SELECT
  (SELECT count(*) FROM documents WHERE archived_at IS NULL) AS documents,
  (SELECT count(*) FROM assets WHERE archived_at IS NULL) AS assets,
  (SELECT count(*) FROM knowledge_chunks) AS passages
"""


def service_status(conn: psycopg.Connection[Any]) -> ServiceStatus:
    """The counts, the active model and the keyword path, read now."""
    with conn.cursor(row_factory=class_row(_Counts)) as cur:
        counts = cur.execute(_COUNTS).fetchone()
    assert counts is not None  # an aggregate always returns a row
    waiting = queue.depth(conn)
    model = active_spec(conn)
    return ServiceStatus(
        documents=counts.documents,
        assets=counts.assets,
        passages=counts.passages,
        queue=waiting.queued,
        failed=waiting.failed,
        active_model=model.name if model else None,
        keyword_path=keyword_path(conn),
    )
