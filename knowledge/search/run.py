"""Running a search: its query embedded, its statement run (again with more passages for a
short page), its rows made into hits with snippets."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import class_row

from embeddings.registry import active_spec
from knowledge.errors import InvalidInput
from knowledge.search.query import (
    EXACT_SCAN_BELOW,
    MAX_PASSAGES,
    ModelSwitched,
    Passage,
    SearchHit,
    SearchQuery,
    SearchResult,
)
from knowledge.search.snippets import Highlighter
from knowledge.search.statement import Literals, Row, filters, statement

__all__ = ["bm25_quota", "passage_quota", "search"]


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
    passages is searched exactly. Raises InvalidInput for a bad query, ModelSwitched when
    another model became active meanwhile (look it up again and retry)."""
    q = query.validated()
    start = time.perf_counter()
    mode = q.mode
    if mode != "keyword" and (model is None or dims is None or embed_query is None):
        raise InvalidInput(f"mode: {mode} needs an active embedding model; use mode=keyword")
    found = filters(q)
    # The English parser reads "<word>" as markup and drops what follows: angle brackets
    # mean nothing to keyword matching, so they become spaces there (not for embedding).
    params = found.params | {
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
    # Unfiltered, the statement is prepared once per connection and shape: its generic plan
    # is as good as a fresh one and saves planning it (~3 ms at 100k passages). A filter's
    # best plan depends on its values (how many passages a tag holds), so filtered searches
    # are planned each time. HQ_PREPARED_STATEMENTS=0 (a pooler in transaction mode) turns
    # preparing off.
    prepare = not found.narrowing and conn.prepare_threshold is not None
    n = passage_quota(q.limit, q.offset)
    while True:
        values = Literals(model, n, bm25_quota(n, found.narrowing), q.limit, q.offset, exact_below)
        composed = statement(q, found, values, keyword_path=keyword_path, dims=dims)
        with conn.cursor(row_factory=class_row(Row)) as cur:
            rows = cur.execute(composed, params, prepare=prepare).fetchall()
        # A short page whose legs returned their whole quota of passages: the passages of a
        # few items crowded out the rest. Ask again for more passages (rarely needed).
        if len(rows) >= q.limit or not rows or n >= MAX_PASSAGES or max(rows[0].sem_rows, rows[0].kw_rows) < n:
            break
        n = min(n * 4, MAX_PASSAGES)
    if mode != "keyword":
        if rows:
            active = rows[0].active_model
        else:
            spec = active_spec(conn)
            active = spec.name if spec else None
        if active != model:
            raise ModelSwitched(f"the active embedding model is now {active}, not {model}")
    highlighter = Highlighter(q.q)
    return SearchResult(
        hits=[_hit(row, highlighter) for row in rows],
        mode=mode,
        keyword_path=keyword_path,
        model=model,
        took_ms=(time.perf_counter() - start) * 1000,
        candidates=rows[0].candidates if rows else 0,
        notes=["selective filter: exact vector scan"] if rows and rows[0].exact_scan else [],
        embed_ms=round(embed_ms, 3),
    )


def passage_quota(limit: int, offset: int) -> int:
    """Passages each leg returns for a page at first (a short page asks again for more)."""
    return min(max(50, (offset + limit) * 3), 400)


def bm25_quota(n: int, filtered: bool) -> int:
    """BM25 candidates fetched for a keyword leg of `n` passages, before filtering: a few
    more for archived items (and passages without a query term, which a rebuilt index lists
    last), many more when the caller filters (the index knows nothing of tags or folders)."""
    return min(max(n * 20, 1000), 10000) if filtered else n + max(10, n // 5)


def _hit(row: Row, highlighter: Highlighter) -> SearchHit:
    found = [Passage(p["chunk_id"], p["heading_path"] or [], p["content"]) for p in row.passages or []]
    return SearchHit(
        id=row.item_id,
        kind=row.kind,
        title=row.title,
        folder_path=row.folder_path,
        tags=list(row.tags),
        score=float(row.score),
        snippet=highlighter.snippet(found[0].content) if found else "",
        passages=found,
        source_path=row.source_path,
        asset_type=row.asset_type,
        pinned=row.pinned,
        updated_at=row.updated_at,
        # Each leg's rank comes with every search; the keyword leg's score only when explaining.
        explain={
            "semantic": {"rank": row.sem_rank, "score": row.sem_score},
            "keyword": {"rank": row.kw_rank, "score": row.kw_score},
        },
    )
