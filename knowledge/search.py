"""Hybrid search over documents and assets: a semantic leg (HNSW over passage embeddings of
the active model), a keyword leg (BM25 through pg_textsearch where installed, else BM25 from
the SQL keyword index's tables: knowledge.keyword_index), fused per item by weighted
reciprocal rank.

One SQL statement per search: both legs, the fusion, the page of items with their best
passages. Each hit's snippet is made from its best passage here (knowledge.snippets).
"""

from __future__ import annotations

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

from embeddings.registry import ACTIVE_MODEL, active_spec

from .errors import InvalidInput
from .snippets import Highlighter

__all__ = ["ASSET_TYPES", "MODES", "ModelSwitched", "Passage", "SearchHit", "SearchQuery", "SearchResult", "search"]

MODES = ("hybrid", "semantic", "keyword")
KINDS = ("document", "asset")
ASSET_TYPES = ("sop", "research", "image", "video", "audio", "template", "script", "spreadsheet", "link", "other")
MAX_QUERY_CHARS = 1000
MAX_LIMIT = 100
MAX_OFFSET = 1000
MAX_PASSAGES = 1600  # per leg, when a short page asks again
EXACT_SCAN_BELOW = 2000  # filtered passages: below this many, an exact scan beats the index


class ModelSwitched(Exception):
    """The active model changed since the caller looked it up: look it up again and retry."""


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
    explain: dict[str, Any] | None = None  # per leg: rank and score (in responses when asked for)


@dataclass
class SearchResult:
    hits: list[SearchHit]
    mode: str
    keyword_path: str
    model: str | None
    took_ms: float
    candidates: int
    notes: list[str] = field(default_factory=list)
    embed_ms: float = 0.0  # of took_ms: embedding the query (0 when cached or not needed)

    def as_dict(self, *, explain: bool = False) -> dict[str, Any]:
        """The response body: plain values, UUIDs and datetimes (orjson encodes them); a hit's
        `explain` only when asked for. Built by hand: dataclasses.asdict is 3x slower."""
        return {
            "hits": [
                {
                    "id": h.id,
                    "kind": h.kind,
                    "title": h.title,
                    "folder_path": h.folder_path,
                    "tags": h.tags,
                    "score": h.score,
                    "snippet": h.snippet,
                    "passages": [
                        {"chunk_id": p.chunk_id, "heading_path": p.heading_path, "content": p.content}
                        for p in h.passages
                    ],
                    "source_path": h.source_path,
                    "asset_type": h.asset_type,
                    "pinned": h.pinned,
                    "updated_at": h.updated_at,
                    **({"explain": h.explain} if explain else {}),
                }
                for h in self.hits
            ],
            "mode": self.mode,
            "keyword_path": self.keyword_path,
            "model": self.model,
            "took_ms": self.took_ms,
            "embed_ms": self.embed_ms,
            "candidates": self.candidates,
            "notes": self.notes,
        }


def _filters(q: SearchQuery) -> tuple[sql.Composable, sql.Composable, dict[str, Any]]:
    """What the filters keep: (conditions on a document d, conditions on an asset a, params).
    The archive filter and `kind` are the only ones that take no parameter."""
    doc: list[sql.Composable] = []
    asset: list[sql.Composable] = []
    params: dict[str, Any] = {}

    def both(condition: str) -> None:
        doc.append(sql.SQL(condition.format(t="d")))
        asset.append(sql.SQL(condition.format(t="a")))

    if q.kind == "asset" or q.asset_type:
        doc.append(sql.SQL("false"))
    if q.kind == "document":
        asset.append(sql.SQL("false"))
    if q.asset_type:
        asset.append(sql.SQL("a.asset_type = %(asset_type)s::asset_type"))
        params["asset_type"] = q.asset_type
    if q.tags_any:
        both("{t}.tags && %(tags_any)s::text[]")
        params["tags_any"] = list(q.tags_any)
    if q.tags_all:
        both("{t}.tags @> %(tags_all)s::text[]")
        params["tags_all"] = list(q.tags_all)
    if q.folder is not None:
        doc.append(sql.SQL("d.folder_id IN (SELECT id FROM folder_docs)"))
        asset.append(sql.SQL("a.folder_id IN (SELECT id FROM folder_assets)"))
        params["folder"] = q.folder
    if q.pinned is not None:
        both("{t}.pinned = %(pinned)s")
        params["pinned"] = q.pinned
    if q.archived == "false":
        both("{t}.archived_at IS NULL")
    elif q.archived == "true":
        both("{t}.archived_at IS NOT NULL")
    if q.updated_since is not None:
        both("{t}.updated_at >= %(updated_since)s")
        params["updated_since"] = q.updated_since

    def conjunction(parts: list[sql.Composable]) -> sql.Composable:
        return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")

    return conjunction(doc), conjunction(asset), params


# The folder filter's subtrees (the folder and everything below it, in both trees), as CTEs
# of the WITH RECURSIVE of the search statement.
_FOLDER_SUBTREES = (
    "folder_docs AS (SELECT id FROM document_folders WHERE id = %(folder)s"
    " UNION ALL SELECT f.id FROM document_folders f JOIN folder_docs t ON f.parent_id = t.id),"
    " folder_assets AS (SELECT id FROM asset_folders WHERE id = %(folder)s"
    " UNION ALL SELECT f.id FROM asset_folders f JOIN folder_assets t ON f.parent_id = t.id),"
)
_OWNERS = sql.SQL("LEFT JOIN documents d ON d.id = c.document_id LEFT JOIN assets a ON a.id = c.asset_id")
_OR_QUERY = "to_tsquery('english', replace(plainto_tsquery('english', %(q)s)::text, ' & ', ' | '))"


# The BM25 index's top-k (see _keyword_leg), and whether its last passage holds a query term:
# passages without one (score 0) come after every match, so then all of them do, and the leg
# tests no other passage (~1 ms for 60 passages at 100k).
_BM25_TOP = """
bm25_top AS MATERIALIZED (
  SELECT * FROM hq_bm25_top(%(q)s, %(kn)s) WITH ORDINALITY AS t(id, document_id, asset_id, ord)),
bm25_all_match AS (
  SELECT coalesce((SELECT ts_match_vq(x.search_tsv, (SELECT query FROM or_query)) FROM knowledge_chunks x
                     WHERE x.id = (SELECT t.id FROM bm25_top t ORDER BY t.ord DESC LIMIT 1)), true) AS yes),"""


def _row_filter(doc: sql.Composable, asset: sql.Composable) -> sql.Composable:
    """The filters on one passage c joined to its owner (`_OWNERS`)."""
    return sql.SQL("CASE WHEN c.document_id IS NOT NULL THEN ({}) ELSE ({}) END").format(doc, asset)


def _filtered_passages(doc: sql.Composable, asset: sql.Composable) -> sql.Composable:
    """CTEs for filtered searches: the kept items (through their own indexes: tags, folder),
    and `selective`: do they hold fewer than %(bound)s passages (counted up to that bound)?"""
    return sql.SQL(
        "fdocs AS (SELECT d.id FROM documents d WHERE {doc}),"
        " fassets AS (SELECT a.id FROM assets a WHERE {asset}),"
        " selective AS (SELECT count(*) < %(bound)s AS yes FROM ("
        "  SELECT 1 FROM fdocs JOIN knowledge_chunks c ON c.document_id = fdocs.id"
        "  UNION ALL SELECT 1 FROM fassets JOIN knowledge_chunks c ON c.asset_id = fassets.id"
        "  LIMIT %(bound)s) s),"
    ).format(doc=doc, asset=asset)


def _semantic_leg(dims: int, row_filter: sql.Composable, filtered: bool) -> sql.Composable:
    distance = sql.SQL("e.embedding::vector({dims}) <=> %(qv)s").format(dims=sql.Literal(dims))
    ranked = (
        "SELECT s.chunk_id, row_number() OVER (ORDER BY s.dist) AS rnk, 1 - s.dist AS score,"
        " s.document_id, s.asset_id FROM ({}) s"
    )
    index_scan = sql.SQL(
        "SELECT e.chunk_id, {distance} AS dist, c.document_id, c.asset_id FROM chunk_embeddings e"
        " JOIN knowledge_chunks c ON c.id = e.chunk_id {owners}"
        " WHERE e.model = %(model)s AND {where} ORDER BY {distance} LIMIT %(n)s"
    ).format(distance=distance, owners=_OWNERS, where=row_filter)
    if not filtered:
        return sql.SQL(ranked).format(index_scan)
    # A selective filter: an exact scan of the kept passages (reached through the items'
    # indexes) beats walking the HNSW graph past rows the filter drops. The one-time
    # filters on `selective` run exactly one of the two branches.
    exact_scan = sql.SQL(
        "SELECT x.chunk_id, x.dist, x.document_id, x.asset_id FROM ("
        " SELECT c.id AS chunk_id, {distance} AS dist, c.document_id, c.asset_id FROM fdocs"
        "  JOIN knowledge_chunks c ON c.document_id = fdocs.id"
        "  JOIN chunk_embeddings e ON e.chunk_id = c.id AND e.model = %(model)s"
        " UNION ALL SELECT c.id, {distance}, c.document_id, c.asset_id FROM fassets"
        "  JOIN knowledge_chunks c ON c.asset_id = fassets.id"
        "  JOIN chunk_embeddings e ON e.chunk_id = c.id AND e.model = %(model)s) x"
        " ORDER BY x.dist LIMIT %(n)s"
    ).format(distance=distance)
    return sql.SQL(ranked).format(
        sql.SQL(
            "SELECT * FROM ({exact}) ex WHERE (SELECT yes FROM selective)"
            " UNION ALL SELECT * FROM ({index}) ix WHERE NOT (SELECT yes FROM selective)"
        ).format(exact=exact_scan, index=index_scan)
    )


def _kept(row_filter: sql.Composable, filtered: bool) -> sql.Composable:
    """The filters on a keyword leg's top-k passage c: filtered, the kept items (fdocs/fassets)
    probed by hash; else the row filter on its owners."""
    return (
        sql.SQL("(c.document_id IN (SELECT id FROM fdocs) OR c.asset_id IN (SELECT id FROM fassets))")
        if filtered
        else row_filter
    )


def _keyword_leg(path: str, row_filter: sql.Composable, explain: bool, filtered: bool) -> sql.Composable:
    if path == "bm25":
        # Driven by the BM25 index's own top-k (%(kn)s, over-fetched when filters may drop
        # rows), filtered afterwards: joined to the owners in one query, the planner scans
        # every passage and scores each one (~110 us a row) instead. The top-k comes from
        # hq_bm25_top (011), which plans it with the query as a literal: pg_textsearch takes
        # the LIMIT into its Block-Max WAND top-k only from a query level's own LIMIT, and
        # inside a CTE, ARRAY(...) or a statement prepared with the query as a parameter it
        # scores far more (12 ms against 1.3 ms for a top-100 at 100k passages); this way the
        # search statement can be prepared. It returns each passage's owners too: filtered,
        # the kept items (fdocs/fassets) are probed by hash, where looking up 1,000
        # candidates and their owners took ~20 ms. A rebuilt index also lists passages
        # without any query term (score 0) after the matches: the lexeme test drops them, run
        # on the kept passages only when the last one fails it (bm25_all_match). Scores are
        # computed for the kept rows when explaining.
        shown = (
            sql.SQL(
                "(SELECT -(x.indexed_text <@> to_bm25query(%(q)s, 'knowledge_chunks_bm25_idx'))"
                " FROM knowledge_chunks x WHERE x.id = c.id)"
            )
            if explain
            else sql.SQL("NULL::float8")
        )
        kept = _kept(row_filter, filtered)
        return sql.SQL(
            "SELECT c.id AS chunk_id, row_number() OVER (ORDER BY c.ord) AS rnk, {shown} AS score,"
            " c.document_id, c.asset_id FROM bm25_top c"
            " {owners} WHERE {kept} AND ((SELECT yes FROM bm25_all_match)"
            "  OR EXISTS (SELECT FROM knowledge_chunks x WHERE x.id = c.id"
            "   AND ts_match_vq(x.search_tsv, (SELECT query FROM or_query))))"
            " ORDER BY c.ord LIMIT %(n)s"
        ).format(shown=shown, owners=sql.SQL("") if filtered else _OWNERS, kept=kept)
    if path == "sql-bm25":
        # The same shape from the SQL keyword index (020): its top-k is scored from the
        # postings of the query's lexemes, so every passage it returns holds one of them.
        kept = _kept(row_filter, filtered)
        return sql.SQL(
            "SELECT c.id AS chunk_id, row_number() OVER (ORDER BY c.score DESC, c.id) AS rnk, c.score,"
            " c.document_id, c.asset_id FROM hq_sql_bm25_top(%(q)s, %(kn)s) AS c {owners} WHERE {kept}"
            " ORDER BY c.score DESC, c.id LIMIT %(n)s"
        ).format(owners=sql.SQL("") if filtered else _OWNERS, kept=kept)
    return sql.SQL(
        "SELECT k.chunk_id, row_number() OVER (ORDER BY k.s DESC) AS rnk, k.s AS score, k.document_id,"
        " k.asset_id FROM ( SELECT c.id AS chunk_id, ts_rank_cd(c.search_tsv, oq.query) AS s, c.document_id, c.asset_id"
        " FROM knowledge_chunks c {owners}, or_query oq"
        " WHERE c.search_tsv @@ oq.query AND {where} ORDER BY s DESC LIMIT %(n)s) k"
    ).format(owners=_OWNERS, where=row_filter)


def _statement(
    mode: str,
    path: str,
    dims: int | None,
    doc: sql.Composable,
    asset: sql.Composable,
    filtered: bool,
    has_folder: bool,
    explain: bool,
) -> sql.Composed:
    empty = sql.SQL(
        "SELECT NULL::bigint AS chunk_id, NULL::bigint AS rnk, NULL::float8 AS score,"
        " NULL::uuid AS document_id, NULL::uuid AS asset_id WHERE false"
    )
    row_filter = _row_filter(doc, asset)
    sem = _semantic_leg(dims, row_filter, filtered) if mode != "keyword" and dims else empty
    kw = _keyword_leg(path, row_filter, explain, filtered) if mode != "semantic" else empty
    ctes = sql.SQL("{folders}{passages}").format(
        folders=sql.SQL(_FOLDER_SUBTREES) if has_folder else sql.SQL(""),
        passages=_filtered_passages(doc, asset) if filtered else sql.SQL(""),
    )
    exact = sql.SQL("(SELECT yes FROM selective)" if filtered and mode != "keyword" else "false")
    bm25 = sql.SQL(_BM25_TOP if path == "bm25" and mode != "semantic" else "")
    # The active model in the statement's own snapshot: a ranking made while another model
    # became active is made again with that model's vectors and query embedding (~1 ms of
    # planning, so only where vectors are searched).
    active = sql.SQL("(SELECT m.name FROM ({}) m)").format(ACTIVE_MODEL) if mode != "keyword" else sql.SQL("NULL::text")
    # Every CTE below but or_query, fdocs/fassets and selective is referenced once, so the
    # planner inlines it.
    return sql.SQL(
        """
WITH RECURSIVE {ctes}
or_query AS (SELECT """
        + _OR_QUERY
        + """ AS query),{bm25}
sem AS ({sem}),
kw AS ({kw}),
hits AS (
  SELECT h.*,
         min(h.sem_rank) OVER w AS sem_best, max(h.sem_score) OVER w AS sem_top,
         -- how many passages each leg returned: a leg that returned its whole quota may hold more
         coalesce(max(h.sem_rank) OVER (), 0) AS sem_rows, coalesce(max(h.kw_rank) OVER (), 0) AS kw_rows,
         min(h.kw_rank) OVER w AS kw_best, max(h.kw_score) OVER w AS kw_top,
         row_number() OVER (PARTITION BY h.item_id ORDER BY h.chunk_score DESC, h.chunk_id) AS pos
    FROM (SELECT coalesce(s.chunk_id, k.chunk_id) AS chunk_id,
                 coalesce(s.document_id, s.asset_id, k.document_id, k.asset_id) AS item_id,
                 CASE WHEN coalesce(s.document_id, k.document_id) IS NOT NULL THEN 'document' ELSE 'asset' END AS kind,
                 s.rnk AS sem_rank, s.score AS sem_score, k.rnk AS kw_rank, k.score AS kw_score,
                 coalesce(%(ws)s / (%(k)s + s.rnk), 0) + coalesce(%(wk)s / (%(k)s + k.rnk), 0) AS chunk_score
            FROM sem s FULL JOIN kw k ON k.chunk_id = s.chunk_id) h
  WINDOW w AS (PARTITION BY h.item_id)
),
per_item AS (
  SELECT item_id, kind, sem_best, sem_top AS sem_score, kw_best, kw_top AS kw_score, sem_rows, kw_rows,
         array_agg(chunk_id ORDER BY pos) AS best_chunks
    FROM hits WHERE pos <= 3
   GROUP BY item_id, kind, sem_best, sem_top, kw_best, kw_top, sem_rows, kw_rows
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
SELECT f.item_id, f.kind, f.score, f.sem_rank, f.sem_score, f.kw_rank, f.kw_score, f.candidates, {exact},
       f.sem_rows, f.kw_rows,
       coalesce(d.title, a.name) AS title,
       coalesce(fp.path, '/') AS folder_path,
       coalesce(d.tags, a.tags) AS tags, coalesce(d.pinned, a.pinned) AS pinned,
       coalesce(d.updated_at, a.updated_at) AS updated_at, d.source_path, a.asset_type::text AS asset_type,
       (SELECT json_agg(json_build_object('chunk_id', c.id, 'heading_path', c.heading_path, 'content', c.content)
                        ORDER BY b.pos)
          FROM unnest(f.best_chunks) WITH ORDINALITY AS b(chunk_id, pos)
          JOIN knowledge_chunks c ON c.id = b.chunk_id) AS passages,
       {active} AS active_model
  FROM fused f
  LEFT JOIN documents d ON f.kind = 'document' AND d.id = f.item_id
  LEFT JOIN assets a ON f.kind = 'asset' AND a.id = f.item_id
  -- The folder's path, as document_folder_path/asset_folder_path (011) give it: walked here,
  -- in the prepared statement, it costs ~0.5 ms less than calling them (PL/pgSQL) per hit.
  LEFT JOIN LATERAL (
    WITH RECURSIVE up AS (
      SELECT fo.parent_id, fo.name, 0 AS depth FROM document_folders fo
       WHERE fo.id = d.folder_id AND f.kind = 'document'
      UNION ALL
      SELECT fo.parent_id, fo.name, 0 FROM asset_folders fo WHERE fo.id = a.folder_id AND f.kind = 'asset'
      UNION ALL
      SELECT fo.parent_id, fo.name, up.depth + 1
        FROM up JOIN LATERAL (SELECT x.parent_id, x.name FROM document_folders x
                               WHERE f.kind = 'document' AND x.id = up.parent_id
                              UNION ALL SELECT x.parent_id, x.name FROM asset_folders x
                               WHERE f.kind = 'asset' AND x.id = up.parent_id) fo ON true
       WHERE up.depth < 10000)
    SELECT '/' || string_agg(up.name, '/' ORDER BY up.depth DESC) AS path FROM up) fp ON true
 ORDER BY f.score DESC, f.item_id
"""
    ).format(ctes=ctes, bm25=bm25, sem=sem, kw=kw, exact=exact, active=active)


def search(
    conn: psycopg.Connection[Any],
    query: SearchQuery,
    *,
    keyword_path: str,
    model: str | None,
    dims: int | None,
    embed_query: Callable[[str], np.ndarray[Any, Any]] | None,
    exact_below: int = EXACT_SCAN_BELOW,
) -> SearchResult:
    """Run `query`. `model`/`dims` name the active embedding model and `embed_query` embeds
    with it (both may be None in keyword mode). A filter keeping fewer than `exact_below`
    passages is searched exactly. Raises InvalidInput for a bad query."""
    q = query.validated()
    start = time.perf_counter()
    notes: list[str] = []
    mode = q.mode
    if mode != "keyword" and (model is None or dims is None or embed_query is None):
        raise InvalidInput(f"mode: {mode} needs an active embedding model; use mode=keyword")
    doc, asset, params = _filters(q)
    # Filters beyond the archive default: the kept passages may be few (the exact-scan
    # decision) and the BM25 leg over-fetches. Only `kind` needs no parameter.
    filtered = bool(params) or q.kind is not None
    n = passage_quota(q.limit, q.offset)
    # The English parser reads "<word>" as markup and drops what follows: angle brackets
    # mean nothing to keyword matching, so they become spaces there (not for embedding).
    params |= {
        "q": q.q.replace("<", " ").replace(">", " "),
        "k": q.rrf_k,
        "ws": q.semantic_weight if mode != "keyword" else 0.0,
        "wk": q.keyword_weight if mode != "semantic" else 0.0,
    }
    embed_ms = 0.0
    if mode != "keyword":
        assert embed_query is not None
        embed_start = time.perf_counter()
        params["qv"] = np.asarray(embed_query(q.q), dtype=np.float32)
        embed_ms = (time.perf_counter() - embed_start) * 1000
    statement = _statement(mode, keyword_path, dims, doc, asset, filtered, q.folder is not None, q.explain).as_string(
        conn
    )
    # Unfiltered, the statement is prepared once per connection and shape: its generic plan
    # is as good as a fresh one and saves planning it (~3 ms at 100k passages). A filter's
    # best plan depends on its values (how many passages a tag holds), so filtered searches
    # are planned each time. HQ_PREPARED_STATEMENTS=0 (a pooler in transaction mode) turns
    # preparing off.
    prepare = not filtered and conn.prepare_threshold is not None
    while True:
        kn = bm25_quota(n, filtered)
        text = _inline(
            conn,
            statement,
            {"model": model, "n": n, "kn": kn, "limit": q.limit, "offset": q.offset, "bound": exact_below},
        )
        rows = conn.cursor(row_factory=tuple_row).execute(text, params, prepare=prepare).fetchall()
        # A short page whose legs returned their whole quota of passages: the passages of a
        # few items crowded out the rest. Ask again for more passages (rarely needed).
        if len(rows) >= q.limit or not rows or n >= MAX_PASSAGES or max(rows[0][9], rows[0][10]) < n:
            break
        n = min(n * 4, MAX_PASSAGES)
    if mode != "keyword":
        spec = None if rows else active_spec(conn)
        active = rows[0][19] if rows else (spec.name if spec else None)
        if active != model:
            raise ModelSwitched(f"the active embedding model is now {active}, not {model}")
    highlighter = Highlighter(q.q)
    hits = [_hit(row, highlighter) for row in rows]
    if rows and rows[0][8]:
        notes.append("selective filter: exact vector scan")
    return SearchResult(
        hits,
        mode,
        keyword_path,
        model,
        (time.perf_counter() - start) * 1000,
        int(rows[0][7]) if rows else 0,
        notes,
        round(embed_ms, 3),
    )


def passage_quota(limit: int, offset: int) -> int:
    """Passages each leg returns for a page at first (a short page asks again for more)."""
    return min(max(50, (offset + limit) * 3), 400)


def bm25_quota(n: int, filtered: bool) -> int:
    """BM25 candidates fetched for a keyword leg of `n` passages, before filtering: a few
    more for archived items (and passages without a query term, which a rebuilt index lists
    last), many more when the caller filters (the index knows nothing of tags or folders)."""
    return min(max(n * 20, 1000), 10000) if filtered else n + max(10, n // 5)


def _inline(conn: psycopg.Connection[Any], statement: str, values: dict[str, Any]) -> str:
    """`statement` with these placeholders replaced by literals: the values a generic plan
    must see to stay good (a model's partial HNSW index matches only a literal model name;
    the LIMITs size the plan). The caller's text, vector and filters stay parameters;
    `values` are the service's own (a registered model name, integers)."""
    for name, value in values.items():
        statement = statement.replace(f"%({name})s", sql.Literal(value).as_string(conn))
    return statement


def _hit(row: Any, highlighter: Highlighter) -> SearchHit:
    (
        item_id,
        kind,
        score,
        sem_rank,
        sem_score,
        kw_rank,
        kw_score,
        _candidates,
        _exact,
        _sem_rows,
        _kw_rows,
        title,
        folder_path,
        tags,
        pinned,
        updated_at,
        source_path,
        asset_type,
        passages,
        _active,
    ) = row
    found = [Passage(p["chunk_id"], p["heading_path"] or [], p["content"]) for p in passages or []]
    return SearchHit(
        id=item_id,
        kind=kind,
        title=title,
        folder_path=folder_path,
        tags=list(tags),
        score=float(score),
        snippet=highlighter.snippet(found[0].content) if found else "",
        passages=found,
        source_path=source_path,
        asset_type=asset_type,
        pinned=pinned,
        updated_at=updated_at,
        # Each leg's rank comes with every search; the keyword leg's score only when explaining.
        explain={"semantic": {"rank": sem_rank, "score": sem_score}, "keyword": {"rank": kw_rank, "score": kw_score}},
    )
