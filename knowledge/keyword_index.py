"""The keyword leg's index: which one a database searches with, and keeping it usable.

Three paths, best first:

- `bm25`: pg_textsearch's BM25 index over the passages (where the extension is installed).
- `sql-bm25`: the same BM25 from ordinary tables (bm25_postings, bm25_corpus: 020), kept by
  triggers on every PostgreSQL. Used where pg_textsearch is missing (Supabase, RDS) and on
  streaming standbys, which pg_textsearch 1.0's index pages do not reach.
- `ts_rank_cd`: an OR of the query's lexemes ranked by ts_rank_cd, only where neither exists.

HQ_KEYWORD_INDEX (Settings.keyword_index) chooses: `auto` (the best available), `sql`, or
`pg_textsearch` (falls back to `sql-bm25` where the index is missing or not replicated).

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

__all__ = ["BM25_INDEX", "KEYWORD_INDEXES", "KEYWORD_PATHS", "keyword_path", "repair_bm25_index"]

KEYWORD_INDEXES = ("auto", "pg_textsearch", "sql")
"""What HQ_KEYWORD_INDEX accepts."""
KEYWORD_PATHS = ("bm25", "sql-bm25", "ts_rank_cd")
"""What a search's `keyword_path` reports."""
_REPLICATED_FROM = (1, 3)  # pg_textsearch writes its index pages to the WAL from 1.3

BM25_INDEX = "knowledge_chunks_bm25_idx"
log = logging.getLogger("hq_knowledge")


def keyword_path(conn: psycopg.Connection[Any], choice: str | None = None) -> str:
    """The keyword path searches on this connection's database take (`KEYWORD_PATHS`), for
    `choice` (HQ_KEYWORD_INDEX; None: from the environment through Settings)."""
    if choice is None:
        from .config import keyword_index_setting

        choice = keyword_index_setting()
    row = conn.cursor(row_factory=tuple_row).execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        "   JOIN pg_am am ON am.oid = i.relam"
        "  WHERE x.indrelid = to_regclass('knowledge_chunks') AND am.amname = 'bm25'),"
        " to_regclass('bm25_postings') IS NOT NULL AND to_regprocedure('hq_sql_bm25_top(text, integer)') IS NOT NULL,"
        " pg_is_in_recovery(),"
        " (SELECT extversion FROM pg_extension WHERE extname = 'pg_textsearch')").fetchone()
    assert row is not None
    has_index, has_sql, standby, version = row
    if has_index and standby and _version(version) < _REPLICATED_FROM:
        has_index = False  # the standby has the index's catalog entry but none of its pages
    if choice == "sql" and has_sql:
        return "sql-bm25"
    if has_index:
        return "bm25"
    return "sql-bm25" if has_sql else "ts_rank_cd"


def _version(text: str | None) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text or "")
    return tuple(int(p) for p in parts[:2]) if parts else (0,)


def repair_bm25_index(conn: psycopg.Connection[Any]) -> bool:
    """Rebuild the passages' BM25 index when it counts no documents although passages
    exist (the restart bug above). Returns True when it rebuilt. A no-op without pg_textsearch."""
    if keyword_path(conn, "auto") != "bm25":
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
