"""The service at a glance: how much is stored, how much waits for embedding, and with what.

`service_status` is what the operator's page shows in its status strip; one statement for the
counts, one for the active model, one for the keyword path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row, tuple_row

from .keyword_index import keyword_path

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
    queue: int
    failed: int


_COUNTS = """
SELECT
  (SELECT count(*) FROM documents WHERE archived_at IS NULL) AS documents,
  (SELECT count(*) FROM assets WHERE archived_at IS NULL) AS assets,
  (SELECT count(*) FROM knowledge_chunks) AS passages,
  (SELECT count(*) FROM documents WHERE embedding_status IN ('pending', 'processing'))
  + (SELECT count(*) FROM assets WHERE embedding_status IN ('pending', 'processing')) AS queue,
  (SELECT count(*) FROM documents WHERE embedding_status = 'failed')
  + (SELECT count(*) FROM assets WHERE embedding_status = 'failed') AS failed
"""


def service_status(conn: psycopg.Connection[Any]) -> ServiceStatus:
    """The counts, the active model and the keyword path, read now."""
    with conn.cursor(row_factory=class_row(_Counts)) as cur:
        counts = cur.execute(_COUNTS).fetchone()
    assert counts is not None  # an aggregate always returns a row
    with conn.cursor(row_factory=tuple_row) as cur:
        model = cur.execute("SELECT name FROM embedding_models WHERE is_active").fetchone()
    return ServiceStatus(
        documents=counts.documents,
        assets=counts.assets,
        passages=counts.passages,
        queue=counts.queue,
        failed=counts.failed,
        active_model=model[0] if model else None,
        keyword_path=keyword_path(conn),
    )
