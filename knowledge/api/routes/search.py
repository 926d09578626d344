"""GET /search: hybrid, semantic or keyword search over documents and assets."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from knowledge.api.deps import ReadTarget
from knowledge.api.fields import not_blank_pattern, rule, string_rule
from knowledge.search import ASSET_TYPES, MAX_LIMIT, MAX_OFFSET, MAX_QUERY_CHARS, SearchQuery, SearchResult
from knowledge.search.admission import Admission
from knowledge.search.setup import search_active

# What SearchQuery.validated() accepts, for the OpenAPI document (its messages stay).
_QUERY = string_rule(pattern=not_blank_pattern, minLength=1, maxLength=MAX_QUERY_CHARS)
_LIMIT = rule("integer", minimum=1, maximum=MAX_LIMIT)
_OFFSET = rule("integer", minimum=0, maximum=MAX_OFFSET)
_TAG = string_rule(minLength=1, maxLength=100, pattern="^[^\\u0000]*$")
_ASSET_TYPE = string_rule(enum=list(ASSET_TYPES))

router = APIRouter(tags=["search"])


@router.get(
    "/search",
    summary="Search documents and assets",
    description=f"Hybrid retrieval: HNSW over passage embeddings and BM25 (pg_textsearch, or "
    f"the SQL keyword index where it is not installed or not replicated), fused per item by weighted reciprocal "
    f"rank (score = w_s/(k + rank_s) + w_k/(k + rank_k)). `q` is 1 to {MAX_QUERY_CHARS} "
    "characters; `limit` 1-100; `offset` 0-1000. Snippets are HTML-escaped text with "
    "matched terms in <mark>. Archived items are left out unless `archived=true|any`. "
    "Searches run a few at a time (HQ_SEARCH_CONCURRENCY) with a short queue "
    "(HQ_SEARCH_QUEUE); past it the answer is 503 with Retry-After: retry then.",
)
async def search_route(
    request: Request,
    reads: ReadTarget,
    q: Annotated[str, Query(json_schema_extra=_QUERY)],
    limit: Annotated[int, Query(json_schema_extra=_LIMIT)] = 10,
    offset: Annotated[int, Query(json_schema_extra=_OFFSET)] = 0,
    mode: Literal["hybrid", "semantic", "keyword"] = "hybrid",
    tags_any: Annotated[list[str] | None, Query(json_schema_extra=_TAG)] = None,
    tags_all: Annotated[list[str] | None, Query(json_schema_extra=_TAG)] = None,
    folder: uuid.UUID | None = None,
    kind: Literal["document", "asset"] | None = None,
    asset_type: Annotated[str | None, Query(json_schema_extra=_ASSET_TYPE)] = None,
    pinned: bool | None = None,
    archived: Literal["false", "true", "any"] = "false",
    updated_since: datetime | None = None,
    explain: bool = False,
    k: Annotated[float, Query(json_schema_extra=rule("number", exclusiveMinimum=0))] = 60.0,
    semantic_weight: Annotated[float, Query(json_schema_extra=rule("number", minimum=0))] = 1.0,
    keyword_weight: Annotated[float, Query(json_schema_extra=rule("number", minimum=0))] = 1.0,
) -> Response:
    query = SearchQuery(
        q=q,
        limit=limit,
        offset=offset,
        mode=mode,
        tags_any=tuple(tags_any or ()),
        tags_all=tuple(tags_all or ()),
        folder=folder,
        kind=kind,
        asset_type=asset_type,
        pinned=pinned,
        archived=archived,
        updated_since=updated_since,
        explain=explain,
        rrf_k=k,
        semantic_weight=semantic_weight,
        keyword_weight=keyword_weight,
    ).validated()
    # One hop to a worker thread for the connection, the query embedding and the statement
    # (a sync route with a connection dependency takes three: ~0.5 ms more a search). On a read
    # replica when one may serve it; again on the primary if the replica fails meanwhile.
    # Within the service's bound on searches in flight (knowledge.search.admission): past it and its
    # queue, 503 with Retry-After.
    admission: Admission = request.app.state.admission

    def run() -> SearchResult:
        with admission.slot():
            return reads.run(lambda conn: search_active(conn, query))

    result = await run_in_threadpool(run)
    return Response(orjson.dumps(result.as_dict(explain=explain)), media_type="application/json")
