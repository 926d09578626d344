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
from psycopg.rows import tuple_row

from .errors import DatabaseUnavailable
from .schema_check import keyword_path
from .search import SearchQuery, SearchResult, search

__all__ = ["SearchSetup", "query_embedder", "search_active", "search_setup"]

QueryEmbed = Callable[[str], np.ndarray[Any, Any]]


@dataclass(frozen=True)
class SearchSetup:
    model: str | None
    dims: int | None
    keyword_path: str


_cache: dict[str, tuple[float, SearchSetup]] = {}
_lock = threading.Lock()


def search_setup(conn: psycopg.Connection[Any], *, ttl: float = 10.0) -> SearchSetup:
    """The active model and keyword path of this database, re-read at most every `ttl` s."""
    # host, port and database name: conn.info.dsn would rebuild the whole conninfo (~0.4 ms).
    key = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit and now - hit[0] < ttl:
            return hit[1]
    row = conn.cursor(row_factory=tuple_row).execute(
        "SELECT name, dims FROM embedding_models WHERE is_active").fetchone()
    setup = SearchSetup(row[0] if row else None, row[1] if row else None, keyword_path(conn))
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
    setup = search_setup(conn)
    embed = (query_embedder(setup.model, setup.dims)
             if query.mode != "keyword" and setup.model and setup.dims else None)
    return search(conn, query, keyword_path=setup.keyword_path, model=setup.model, dims=setup.dims,
                  embed_query=embed)


def query_embedder(model: str, dims: int) -> QueryEmbed:
    """A function embedding one query with `model`: the packaged all-MiniLM-L6-v2 through
    ONNX Runtime when available (else PyTorch), or the deterministic fake models used by
    tests. Raises DatabaseUnavailable for a model this process cannot load."""
    return _embedder(model, dims)


@lru_cache(maxsize=8)
def _embedder(model: str, dims: int) -> QueryEmbed:
    if model.startswith("fake-"):
        from embeddings.model import FakeEmbedder

        fake = FakeEmbedder(name=model, dims=dims)
        return lru_cache(maxsize=2048)(lambda q: fake.embed([q])[0])
    if model == "all-MiniLM-L6-v2":
        try:
            from embeddings.onnx import load_query_embedder
        except ImportError:
            from embeddings.model import load_embedder

            torch_model = load_embedder(model)
            return lru_cache(maxsize=2048)(lambda q: torch_model.embed([q])[0])
        onnx_model = load_query_embedder(model)
        return onnx_model.embed_query
    raise DatabaseUnavailable(f"the active embedding model {model!r} cannot be loaded by this service")
