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
`bm25_summarize_index` shows `total_docs: 0`; REINDEX restores it. Passages deleted before
the restart (their text stored out of line) break it another way: the recovered memtable
points at text that is gone, `bm25_summarize_index` fails with "missing chunk number 0 for
toast value", queries again return nothing, and after a VACUUM it counts a few passages
(6-38 of 766 here). REINDEX restored it on a small database; at 100,000 passages only a
REINDEX followed by a restart did (repair_bm25_index, and the embedded server's restart in
knowledge.db.connect).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg
from psycopg.rows import tuple_row

__all__ = [
    "BM25_INDEX",
    "KEYWORD_INDEXES",
    "KEYWORD_PATHS",
    "bm25_unsound",
    "configure_keyword_index",
    "configured_keyword_index",
    "keyword_path",
    "repair_bm25_index",
]

KEYWORD_INDEXES = ("auto", "pg_textsearch", "sql")
"""What HQ_KEYWORD_INDEX accepts."""
KEYWORD_PATHS = ("bm25", "sql-bm25", "ts_rank_cd")
"""What a search's `keyword_path` reports."""
_REPLICATED_FROM = (1, 3)  # pg_textsearch writes its index pages to the WAL from 1.3

BM25_INDEX = "knowledge_chunks_bm25_idx"
log = logging.getLogger("hq_knowledge")


_configured = ["auto"]  # the process's choice, set at start from Settings.keyword_index


def configure_keyword_index(choice: str) -> None:
    """Set which keyword index this process's searches ask for (one of `KEYWORD_INDEXES`;
    the CLI does at start, from HQ_KEYWORD_INDEX). Raises ValueError for another."""
    if choice not in KEYWORD_INDEXES:
        raise ValueError(f"keyword index: one of {', '.join(KEYWORD_INDEXES)}, got {choice!r}")
    _configured[0] = choice


def configured_keyword_index() -> str:
    """Which keyword index this process's searches ask for (`configure_keyword_index`)."""
    return _configured[0]


def keyword_path(conn: psycopg.Connection[Any], choice: str | None = None) -> str:
    """The keyword path searches on this connection's database take (`KEYWORD_PATHS`), for
    `choice` (one of `KEYWORD_INDEXES`; None: the process's, `configured_keyword_index`)."""
    if choice is None:
        choice = _configured[0]
    row = (
        conn.cursor(row_factory=tuple_row)
        .execute(
            "SELECT EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            "   JOIN pg_am am ON am.oid = i.relam"
            "  WHERE x.indrelid = to_regclass('knowledge_chunks') AND am.amname = 'bm25'),"
            " to_regclass('bm25_postings') IS NOT NULL"
            " AND to_regprocedure('hq_sql_bm25_top(text, integer)') IS NOT NULL,"
            " pg_is_in_recovery(),"
            " (SELECT extversion FROM pg_extension WHERE extname = 'pg_textsearch'),"
            " pg_postmaster_start_time()::text"
        )
        .fetchone()
    )
    assert row is not None
    has_index, has_sql, standby, version, started = row
    if has_index and standby and _version(version) < _REPLICATED_FROM:
        has_index = False  # the standby has the index's catalog entry but none of its pages
    if has_index and _server(conn, started) in _unsound:
        has_index = False  # broken until the server restarts (repair_bm25_index)
    if choice == "sql" and has_sql:
        return "sql-bm25"
    if has_index:
        return "bm25"
    return "sql-bm25" if has_sql else "ts_rank_cd"


def _version(text: str | None) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text or "")
    return tuple(int(p) for p in parts[:2]) if parts else (0,)


def repair_bm25_index(conn: psycopg.Connection[Any]) -> bool:
    """Rebuild the passages' BM25 index when it is broken by the restart bugs above: it
    cannot be read, counts fewer than half the passages (it may count more: deleted passages
    until a VACUUM), or a word of a passage finds nothing. Returns True when it rebuilt.
    A no-op without pg_textsearch."""
    if keyword_path(conn, "auto") != "bm25":
        return False
    problem = _bm25_problem(conn)
    if problem is None:
        return False
    # Rebuilt right after a failed read, the index may again hold a few passages only (18 of
    # 100,000 seen here); once a second rebuild restored it, once none did (see _unsound).
    for _ in range(REBUILDS):
        log.warning("the BM25 index %s: rebuilding %s", problem, BM25_INDEX)
        conn.execute(f"REINDEX INDEX {BM25_INDEX}")
        problem = _bm25_problem(conn)
        if problem is None:
            return True
    _unsound.add(_this_server(conn))
    log.error(
        "the BM25 index %s after %d rebuilds: searches use the SQL keyword index (or full-text "
        "ranking) until the database server restarts; restart it to use BM25 again",
        problem,
        REBUILDS,
    )
    return True


REBUILDS = 3
# Servers (a database and the start of its postmaster) whose BM25 index stayed broken after
# rebuilding: after the failed read above, pg_textsearch 1.0 kept counting 18 of 100,000
# passages through every REINDEX until the server restarted, after which it was whole.
_unsound: set[str] = set()


def bm25_unsound(conn: psycopg.Connection[Any]) -> bool:
    """Whether repair_bm25_index left this server's BM25 index broken until a restart."""
    return _this_server(conn) in _unsound


def _this_server(conn: psycopg.Connection[Any]) -> str:
    started = conn.cursor(row_factory=tuple_row).execute("SELECT pg_postmaster_start_time()::text").fetchone()
    return _server(conn, started[0] if started else None)


def _server(conn: psycopg.Connection[Any], started: str | None) -> str:
    """The database of `conn` on the postmaster started at `started`: a restart makes another."""
    return f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}@{started}"


def _bm25_problem(conn: psycopg.Connection[Any]) -> str | None:
    """What is wrong with the BM25 index, or None."""
    cur = conn.cursor(row_factory=tuple_row)
    try:
        with conn.transaction():  # a savepoint, if the caller is in a transaction
            summary = cur.execute("SELECT bm25_summarize_index(%s)", [BM25_INDEX]).fetchone()
            match = re.search(r"total_docs:\s*(\d+)", summary[0] if summary else "")
            # A word of some passage that the English configuration keeps (not a stop word).
            row = cur.execute(
                "SELECT count(*), (SELECT w FROM (SELECT indexed_text FROM knowledge_chunks LIMIT 1) c,"
                "   regexp_split_to_table(left(c.indexed_text, 2000), '[^[:alpha:]]+') AS w"
                "  WHERE length(w) >= 3 AND numnode(plainto_tsquery('english', w)) > 0 LIMIT 1)"
                " FROM knowledge_chunks"
            ).fetchone()
            passages, word = (int(row[0]), row[1]) if row else (0, None)
            if passages == 0 or match is None:
                return None  # nothing to find, or a summary this code cannot read
            if int(match.group(1)) * 2 < passages:
                return f"counts {match.group(1)} of {passages} passages (server restart)"
            if (
                word
                and not cur.execute(
                    "SELECT 1 FROM knowledge_chunks ORDER BY indexed_text <@> to_bm25query(%s, %s) LIMIT 1",
                    [word, BM25_INDEX],
                ).fetchone()
            ):
                return f"finds nothing for {word!r}, a word of a passage (server restart)"
    except psycopg.InternalError as e:  # XX000-XX002: what a damaged index raises
        return f"cannot be read ({str(e).strip()})"
    return None
