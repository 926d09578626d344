"""Keeping the BM25 index usable across server restarts.

pg_textsearch 1.0 resets an index's corpus statistics to zero when the server restarts
(its segments and recovered memtable still hold the passages), and every BM25 query then
returns nothing until the index is rebuilt. Found here: insert, restart, query -> no rows;
`bm25_summarize_index` shows `total_docs: 0`; REINDEX restores it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from .schema_check import keyword_path

__all__ = ["BM25_INDEX", "repair_bm25_index"]

BM25_INDEX = "knowledge_chunks_bm25_idx"
log = logging.getLogger("hq_knowledge")


def repair_bm25_index(conn: psycopg.Connection[Any]) -> bool:
    """Rebuild the passages' BM25 index when it counts no documents although passages
    exist (the restart bug above). Returns True when it rebuilt. A no-op without pg_textsearch."""
    if keyword_path(conn) != "bm25":
        return False
    cur = conn.cursor(row_factory=tuple_row)
    summary = cur.execute("SELECT bm25_summarize_index(%s)", [BM25_INDEX]).fetchone()
    match = re.search(r"total_docs:\s*(\d+)", summary[0] if summary else "")
    if match is None or int(match.group(1)) > 0:
        return False
    if not cur.execute("SELECT EXISTS (SELECT 1 FROM knowledge_chunks)").fetchone()[0]:  # type: ignore[index]
        return False
    log.warning("the BM25 index lost its statistics (server restart): rebuilding %s", BM25_INDEX)
    cur.execute(f"REINDEX INDEX {BM25_INDEX}")
    return True
