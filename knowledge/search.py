"""Hybrid search over documents and assets: a semantic leg (HNSW over passage embeddings of
the active model), a keyword leg (BM25 through pg_textsearch where installed, else an OR of
the query's lexemes ranked by ts_rank_cd), fused per item by weighted reciprocal rank.

One SQL statement per search: both legs, the fusion, the page of items with their best
passages and highlighted snippets.
"""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from .errors import InvalidInput

__all__ = ["SearchQuery", "SearchHit", "SearchResult", "Passage", "search", "MODES", "ASSET_TYPES"]

MODES = ("hybrid", "semantic", "keyword")
KINDS = ("document", "asset")
ASSET_TYPES = ("sop", "research", "image", "video", "audio", "template", "script", "spreadsheet", "link", "other")
MAX_QUERY_CHARS = 1000
MAX_LIMIT = 100
MAX_OFFSET = 1000
EXACT_SCAN_BELOW = 2000  # filtered passages: below this many, an exact scan beats the index
_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"  # placeholders, turned into <mark> after escaping


@dataclass(frozen=True)
class SearchQuery:
    """What to search for; `validated()` checks every field and says what is accepted."""

    q: str
    limit: int = 10
    offset: int = 0
    mode: str = "hybrid"
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    folder: uuid.UUID | None = None
    kind: str | None = None
    asset_type: str | None = None
    pinned: bool | None = None
    archived: Literal["false", "true", "any"] = "false"
    updated_since: datetime | None = None
    explain: bool = False
    rrf_k: float = 60.0
    semantic_weight: float = 1.0
    keyword_weight: float = 1.0

    def validated(self) -> SearchQuery:
        q = self.q
        if "\x00" in q:
            raise InvalidInput("q: must not contain NUL characters")
        if not q.strip():
            raise InvalidInput("q: must contain at least one non-space character")
        if len(q) > MAX_QUERY_CHARS:
            raise InvalidInput(f"q: at most {MAX_QUERY_CHARS} characters, got {len(q)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidInput(f"limit: from 1 to {MAX_LIMIT}, got {self.limit}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise InvalidInput(f"offset: from 0 to {MAX_OFFSET}, got {self.offset}")
        if self.mode not in MODES:
            raise InvalidInput(f"mode: one of {', '.join(MODES)}; got {self.mode!r}")
        if self.kind is not None and self.kind not in KINDS:
            raise InvalidInput(f"kind: one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.asset_type is not None and self.asset_type not in ASSET_TYPES:
            raise InvalidInput(f"asset_type: one of {', '.join(ASSET_TYPES)}; got {self.asset_type!r}")
        if self.archived not in ("false", "true", "any"):
            raise InvalidInput(f"archived: one of false, true, any; got {self.archived!r}")
        if not (self.rrf_k > 0 and self.semantic_weight >= 0 and self.keyword_weight >= 0):
            raise InvalidInput("rrf_k must be positive and the weights not negative")
        for name, tags in (("tags_any", self.tags_any), ("tags_all", self.tags_all)):
            for tag in tags:
                if not tag or len(tag) > 100 or "\x00" in tag:
                    raise InvalidInput(f"{name}: tags are 1 to 100 characters, got {tag[:40]!r}")
        return self


@dataclass
class Passage:
    chunk_id: int
    heading_path: list[str]
    content: str
    snippet: str


@dataclass
class SearchHit:
    id: uuid.UUID
    kind: str
    title: str
    folder_path: str
    tags: list[str]
    score: float
    snippet: str
    passages: list[Passage]
    source_path: str | None
    asset_type: str | None
    pinned: bool
    updated_at: datetime
    explain: dict[str, Any] | None = None


@dataclass
class SearchResult:
    hits: list[SearchHit]
    mode: str
    keyword_path: str
    model: str | None
    took_ms: float
    candidates: int
    notes: list[str] = field(default_factory=list)


def _filters(q: SearchQuery) -> tuple[sql.Composable, dict[str, Any]]:
    """WHERE conditions on passages c with their owner d (document) or a (asset)."""
    parts: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if q.kind == "document":
        parts.append(sql.SQL("c.document_id IS NOT NULL"))
    elif q.kind == "asset":
        parts.append(sql.SQL("c.asset_id IS NOT NULL"))
    if q.asset_type:
        parts.append(sql.SQL("a.asset_type = %(asset_type)s::asset_type"))
        params["asset_type"] = q.asset_type
    if q.tags_any:
        parts.append(sql.SQL("coalesce(d.tags, a.tags) && %(tags_any)s::text[]"))
        params["tags_any"] = list(q.tags_any)
    if q.tags_all:
        parts.append(sql.SQL("coalesce(d.tags, a.tags) @> %(tags_all)s::text[]"))
        params["tags_all"] = list(q.tags_all)
    if q.folder is not None:
        parts.append(sql.SQL(
            "(d.folder_id IN (SELECT id FROM folder_docs) OR a.folder_id IN (SELECT id FROM folder_assets))"))
        params["folder"] = q.folder
    if q.pinned is not None:
        parts.append(sql.SQL("coalesce(d.pinned, a.pinned) = %(pinned)s"))
        params["pinned"] = q.pinned
    if q.archived == "false":
        parts.append(sql.SQL("d.archived_at IS NULL AND a.archived_at IS NULL"))
    elif q.archived == "true":
        parts.append(sql.SQL("coalesce(d.archived_at, a.archived_at) IS NOT NULL"))
    if q.updated_since is not None:
        parts.append(sql.SQL("coalesce(d.updated_at, a.updated_at) >= %(updated_since)s"))
        params["updated_since"] = q.updated_since
    where = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
    return where, params


# The folder filter's subtrees (the folder and everything below it, in both trees), as CTEs
# of a WITH RECURSIVE: the search statement and the selectivity count both use them.
_FOLDER_SUBTREES = (
    "folder_docs AS (SELECT id FROM document_folders WHERE id = %(folder)s"
    " UNION ALL SELECT f.id FROM document_folders f JOIN folder_docs t ON f.parent_id = t.id),"
    " folder_assets AS (SELECT id FROM asset_folders WHERE id = %(folder)s"
    " UNION ALL SELECT f.id FROM asset_folders f JOIN folder_assets t ON f.parent_id = t.id)"
)
_OWNERS = sql.SQL("LEFT JOIN documents d ON d.id = c.document_id LEFT JOIN assets a ON a.id = c.asset_id")
_OR_QUERY = "to_tsquery('english', replace(plainto_tsquery('english', %(q)s)::text, ' & ', ' | '))"


def _semantic_leg(dims: int, where: sql.Composable, exact: bool) -> sql.Composable:
    distance = sql.SQL("e.embedding::vector({dims}) <=> %(qv)s").format(dims=sql.Literal(dims))
    # "+ 0" keeps the planner off the HNSW index: an exact scan of the filtered passages.
    order = sql.SQL("({}) + 0").format(distance) if exact else distance
    return sql.SQL(
        "SELECT s.chunk_id, row_number() OVER (ORDER BY s.dist) AS rnk, 1 - s.dist AS score FROM ("
        " SELECT e.chunk_id, {distance} AS dist FROM chunk_embeddings e"
        " JOIN knowledge_chunks c ON c.id = e.chunk_id {owners}"
        " WHERE e.model = %(model)s AND {where} ORDER BY {order} LIMIT %(n)s) s"
    ).format(distance=distance, owners=_OWNERS, where=where, order=order)


def _keyword_leg(path: str, where: sql.Composable, explain: bool) -> sql.Composable:
    if path == "bm25":
        # Driven by the BM25 index's own top-k (%(kn)s, over-fetched when filters may drop
        # rows), filtered afterwards: joined to the owners in one query, the planner scans
        # every passage and scores each one (~110 us a row) instead. The BM25 expression
        # stays in ORDER BY only; scores are computed for the kept rows when explaining.
        shown = sql.SQL("-(c.indexed_text <@> to_bm25query(%(q)s, 'knowledge_chunks_bm25_idx'))") \
            if explain else sql.SQL("NULL::float8")
        return sql.SQL(
            "SELECT u.chunk_id, row_number() OVER (ORDER BY u.ord) AS rnk, {shown} AS score"
            " FROM unnest(ARRAY(SELECT c.id FROM knowledge_chunks c"
            " ORDER BY c.indexed_text <@> to_bm25query(%(q)s, 'knowledge_chunks_bm25_idx') LIMIT %(kn)s))"
            " WITH ORDINALITY AS u(chunk_id, ord)"
            " JOIN knowledge_chunks c ON c.id = u.chunk_id {owners}"
            " WHERE {where} ORDER BY u.ord LIMIT %(n)s"
        ).format(shown=shown, owners=_OWNERS, where=where)
    return sql.SQL(
        "SELECT k.chunk_id, row_number() OVER (ORDER BY k.s DESC) AS rnk, k.s AS score FROM ("
        " SELECT c.id AS chunk_id, ts_rank_cd(c.search_tsv, oq.query) AS s"
        " FROM knowledge_chunks c {owners}, (SELECT " + _OR_QUERY + " AS query) oq"
        " WHERE c.search_tsv @@ oq.query AND {where} ORDER BY s DESC LIMIT %(n)s) k"
    ).format(owners=_OWNERS, where=where)


def _statement(mode: str, path: str, dims: int | None, where: sql.Composable, exact: bool,
               has_folder: bool, explain: bool) -> sql.Composed:
    empty = sql.SQL("SELECT NULL::bigint AS chunk_id, NULL::bigint AS rnk, NULL::float8 AS score WHERE false")
    sem = _semantic_leg(dims, where, exact) if mode != "keyword" and dims else empty
    kw = _keyword_leg(path, where, explain) if mode != "semantic" else empty
    folders = sql.SQL(_FOLDER_SUBTREES + ",") if has_folder else sql.SQL("")
    return sql.SQL("""
WITH RECURSIVE {folders}
sem AS ({sem}),
kw AS ({kw}),
chunk_hits AS (
  SELECT c.id AS chunk_id, coalesce(c.document_id, c.asset_id) AS item_id,
         CASE WHEN c.document_id IS NOT NULL THEN 'document' ELSE 'asset' END AS kind,
         s.rnk AS sem_rank, s.score AS sem_score, k.rnk AS kw_rank, k.score AS kw_score,
         coalesce(%(ws)s / (%(k)s + s.rnk), 0) + coalesce(%(wk)s / (%(k)s + k.rnk), 0) AS chunk_score
    FROM sem s FULL JOIN kw k ON k.chunk_id = s.chunk_id
    JOIN knowledge_chunks c ON c.id = coalesce(s.chunk_id, k.chunk_id)
),
per_item AS (
  SELECT item_id, kind, min(sem_rank) AS sem_best, max(sem_score) AS sem_score,
         min(kw_rank) AS kw_best, max(kw_score) AS kw_score
    FROM chunk_hits GROUP BY item_id, kind
),
ranked AS (
  SELECT p.*,
         CASE WHEN sem_best IS NOT NULL THEN rank() OVER (ORDER BY sem_best NULLS LAST) END AS sem_rank,
         CASE WHEN kw_best IS NOT NULL THEN rank() OVER (ORDER BY kw_best NULLS LAST) END AS kw_rank
    FROM per_item p
),
fused AS (
  SELECT r.*, coalesce(%(ws)s / (%(k)s + r.sem_rank), 0) + coalesce(%(wk)s / (%(k)s + r.kw_rank), 0) AS score,
         count(*) OVER () AS candidates
    FROM ranked r
   ORDER BY score DESC, item_id
   LIMIT %(limit)s OFFSET %(offset)s
)
SELECT f.item_id, f.kind, f.score, f.sem_rank, f.sem_score, f.kw_rank, f.kw_score, f.candidates,
       coalesce(d.title, a.name) AS title,
       CASE WHEN f.kind = 'document' THEN document_folder_path(d.folder_id)
            ELSE asset_folder_path(a.folder_id) END AS folder_path,
       coalesce(d.tags, a.tags) AS tags, coalesce(d.pinned, a.pinned) AS pinned,
       coalesce(d.updated_at, a.updated_at) AS updated_at, d.source_path, a.asset_type::text AS asset_type,
       (SELECT json_agg(json_build_object(
                 'chunk_id', b.chunk_id, 'heading_path', b.heading_path, 'content', b.content,
                 'snippet', ts_headline('english', b.content, """ + _OR_QUERY + """,
                   'StartSel=' || chr(2) || ', StopSel=' || chr(3) ||
                   ', MaxWords=35, MinWords=12, MaxFragments=2, FragmentDelimiter=" … "'))
               ORDER BY b.chunk_score DESC)
          FROM (SELECT h.chunk_id, h.chunk_score, c.heading_path, c.content
                  FROM chunk_hits h JOIN knowledge_chunks c ON c.id = h.chunk_id
                 WHERE h.item_id = f.item_id ORDER BY h.chunk_score DESC LIMIT 3) b) AS passages
  FROM fused f
  LEFT JOIN documents d ON f.kind = 'document' AND d.id = f.item_id
  LEFT JOIN assets a ON f.kind = 'asset' AND a.id = f.item_id
 ORDER BY f.score DESC, f.item_id
""").format(folders=folders, sem=sem, kw=kw)


def _mark(snippet: str) -> str:
    """Escape the text as HTML, then turn the placeholders into <mark> tags."""
    return html.escape(snippet).replace(_MARK_OPEN, "<mark>").replace(_MARK_CLOSE, "</mark>")


def _selective(conn: psycopg.Connection[Any], where: sql.Composable, params: dict[str, Any],
               has_folder: bool) -> bool:
    """Do the filters keep fewer than EXACT_SCAN_BELOW passages? (Counted up to that bound.)"""
    folders = sql.SQL("WITH RECURSIVE " + _FOLDER_SUBTREES + " ") if has_folder else sql.SQL("")
    row = conn.cursor(row_factory=tuple_row).execute(sql.SQL("{folders}SELECT count(*) FROM (SELECT 1 FROM knowledge_chunks c {owners}"
                               " WHERE {where} LIMIT %(bound)s) s").format(folders=folders, owners=_OWNERS,
                                                                           where=where),
                       {**params, "bound": EXACT_SCAN_BELOW}).fetchone()
    return bool(row and row[0] < EXACT_SCAN_BELOW)


def search(conn: psycopg.Connection[Any], query: SearchQuery, *, keyword_path: str,
           model: str | None, dims: int | None,
           embed_query: Callable[[str], np.ndarray[Any, Any]] | None) -> SearchResult:
    """Run `query`. `model`/`dims` name the active embedding model and `embed_query` embeds
    with it (both may be None in keyword mode). Raises InvalidInput for a bad query."""
    q = query.validated()
    start = time.perf_counter()
    notes: list[str] = []
    mode = q.mode
    if mode != "keyword" and (model is None or dims is None or embed_query is None):
        raise InvalidInput(f"mode: {mode} needs an active embedding model; use mode=keyword")
    where, params = _filters(q)
    exact = mode != "keyword" and bool(params) and _selective(conn, where, params, q.folder is not None)
    if exact:
        notes.append("selective filter: exact vector scan")
    n = min(max(50, (q.offset + q.limit) * 3), 400)
    # BM25 candidates before filtering: a few more for archived items, many more when the
    # caller filters (the index knows nothing of tags or folders).
    kn = min(max(n * 20, 1000), 10000) if params else n * 2
    # The English parser reads "<word>" as markup and drops what follows: angle brackets
    # mean nothing to keyword matching, so they become spaces there (not for embedding).
    params |= {"q": q.q.replace("<", " ").replace(">", " "), "model": model, "n": n, "kn": kn, "k": q.rrf_k, "limit": q.limit, "offset": q.offset,
               "ws": q.semantic_weight if mode != "keyword" else 0.0,
               "wk": q.keyword_weight if mode != "semantic" else 0.0}
    if mode != "keyword":
        assert embed_query is not None
        params["qv"] = np.asarray(embed_query(q.q), dtype=np.float32)
    statement = _statement(mode, keyword_path, dims, where, exact, q.folder is not None, q.explain)
    rows = conn.cursor(row_factory=tuple_row).execute(statement, params, prepare=False).fetchall()
    hits = [_hit(row, q.explain) for row in rows]
    return SearchResult(hits, mode, keyword_path, model, (time.perf_counter() - start) * 1000,
                        int(rows[0][7]) if rows else 0, notes)


def _hit(row: Any, explain: bool) -> SearchHit:
    (item_id, kind, score, sem_rank, sem_score, kw_rank, kw_score, _candidates, title, folder_path, tags,
     pinned, updated_at, source_path, asset_type, passages) = row
    found = [Passage(p["chunk_id"], p["heading_path"] or [], p["content"], _mark(p["snippet"] or ""))
             for p in passages or []]
    return SearchHit(
        id=item_id, kind=kind, title=title, folder_path=folder_path, tags=list(tags), score=float(score),
        snippet=found[0].snippet if found else "", passages=found, source_path=source_path,
        asset_type=asset_type, pinned=pinned, updated_at=updated_at,
        explain={"semantic": {"rank": sem_rank, "score": sem_score},
                 "keyword": {"rank": kw_rank, "score": kw_score}} if explain else None)

