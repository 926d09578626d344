"""Embedding models in the database: register one, build its vector index, measure its
coverage, make it the active (searched) model, drop it.

Exactly one model is active. A model's vectors are built beside the active model's (same
table, its own partial HNSW index) while search keeps serving the active one; switching is
one transaction that first checks that the new model covers every passage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from embeddings.registry import ModelSpec, active_spec
from knowledge.errors import Conflict, NotFound

__all__ = [
    "ModelInfo",
    "activate_model",
    "active_spec",
    "drop_model",
    "ef_search_for",
    "exact_scan_below",
    "list_models",
    "register_model",
]

# HNSW build settings for a model's index, and the search breadth by the model's number of
# vectors (benchmarks/vector_index.py; benchmarks/results/README.md reads its results).
# ef_construction 256 rather than pgvector's 64: at 1M, ef_search 200 then finds 0.985 of the
# exact top-10 instead of 0.927, for a build 3.2x as long (1,364 s against 425 s on 2 cores).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 256
# (up to this many vectors, ef_search): recall@10 0.983 at 10k (real vectors, ef_construction
# 64), 0.998 at 90k real vectors, 0.985 at 1M (real text recombined). Chosen by what it buys in
# ranking (benchmarks/query_quality.py --ef, SciFact at 100k passages): nDCG@10 0.6970 hybrid /
# 0.6273 semantic at ef_search 100, the same as at 150 and 200 (0.6970 / 0.6261), 0.6886 /
# 0.6165 at 64; 100 answers 2-3.5 ms sooner than 200.
EF_SEARCH_BY_SIZE = ((20_000, 64), (200_000, 100), (None, 200))
DEFAULT_EF_SEARCH = 100
# A filter keeping under this share of the vectors is searched exactly (1% at 1M: recall 1.0 in
# 27.7-29.1 ms, against 0.975-0.982 in 19-29 ms for an iterative HNSW scan), and always under
# 2,000 passages.
EXACT_SCAN_SHARE = 0.02
EXACT_SCAN_FLOOR = 2000
MAX_HNSW_DIMS = 2000  # pgvector indexes vectors of up to 2,000 dimensions


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dims: int
    provider: str
    source: str | None
    is_active: bool
    activated_at: datetime | None
    vectors: int  # passages with a vector of this model
    passages: int  # all passages
    index: str | None  # its HNSW index, None when it has none (or it is not valid)

    @property
    def complete(self) -> bool:
        return self.vectors >= self.passages


def ef_search_for(vectors: int) -> int:
    """The recommended hnsw.ef_search for an index of `vectors` vectors."""
    for bound, ef in EF_SEARCH_BY_SIZE:
        if bound is None or vectors <= bound:
            return ef
    return DEFAULT_EF_SEARCH


def exact_scan_below(vectors: int) -> int:
    """Filtered passages below which a search scans exactly instead of walking the graph."""
    return max(EXACT_SCAN_FLOOR, int(vectors * EXACT_SCAN_SHARE))


def _dicts(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    return conn.cursor(row_factory=dict_row)


def list_models(conn: psycopg.Connection[Any], name: str | None = None) -> list[ModelInfo]:
    """Every registered model (or the one named), the active one first, with its coverage."""
    rows = (
        _dicts(conn)
        .execute(
            """SELECT m.name, m.dims, m.provider, m.source, m.is_active, m.activated_at,
                  (SELECT count(*) FROM chunk_embeddings e WHERE e.model = m.name) AS vectors,
                  (SELECT count(*) FROM knowledge_chunks) AS passages,
                  (SELECT i.indexrelid::regclass::text FROM pg_index i
                    WHERE i.indexrelid = to_regclass(hq_embedding_index_name(m.name)) AND i.indisvalid) AS index
             FROM embedding_models m WHERE %(name)s::text IS NULL OR m.name = %(name)s
            ORDER BY m.is_active DESC, m.name""",
            {"name": name},
        )
        .fetchall()
    )
    return [ModelInfo(**row) for row in rows]


def get_model(conn: psycopg.Connection[Any], name: str) -> ModelInfo:
    """The registered model `name`; raises NotFound naming the registered ones."""
    found = list_models(conn, name)
    if not found:
        names = [m.name for m in list_models(conn)]
        raise NotFound(f"model {name!r} is not registered (registered: {', '.join(names) or 'none'})")
    return found[0]


def register_model(conn: psycopg.Connection[Any], spec: ModelSpec) -> None:
    """Register `spec` (once; registering it again changes nothing) and create its empty
    vector index, so vectors are indexed as they arrive. `conn` must be in autocommit
    mode (the index is built CONCURRENTLY). Raises Conflict when the name is registered
    for another model."""
    _dicts(conn).execute(
        "INSERT INTO embedding_models (name, dims, provider, source, max_tokens) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (name) DO NOTHING",
        [spec.name, spec.dims, spec.provider, spec.source, spec.max_tokens],
    )
    row = (
        _dicts(conn)
        .execute("SELECT dims, provider, source FROM embedding_models WHERE name = %s", [spec.name])
        .fetchone()
    )
    assert row is not None
    if (row["dims"], row["provider"]) != (spec.dims, spec.provider) or (
        spec.provider != "fake" and row["source"] not in (None, spec.source)
    ):
        raise Conflict(
            f"model name {spec.name!r} is registered for another model ({row['provider']}, "
            f"{row['dims']} dimensions, {row['source'] or 'no source'}): choose another name"
        )
    ensure_vector_index(conn, spec.name, spec.dims)


def ensure_vector_index(
    conn: psycopg.Connection[Any],
    model: str,
    dims: int,
    *,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
) -> str | None:
    """Build `model`'s HNSW index unless a valid one exists (replacing one left invalid by
    an interrupted build), without blocking writes. Returns its name, or None for a model
    too wide to index (searching it scans). `conn` must be in autocommit mode."""
    if dims > MAX_HNSW_DIMS:
        return None
    cur = _dicts(conn)
    name = cur.execute("SELECT hq_embedding_index_name(%s) AS n", [model]).fetchone()["n"]  # type: ignore[index]
    state = cur.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", [name]).fetchone()
    if state is not None and state["indisvalid"]:
        return str(name)
    if state is not None:
        cur.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
    cur.execute(
        sql.SQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON chunk_embeddings"
            " USING hnsw ((embedding::vector({dims})) vector_cosine_ops)"
            " WITH (m = {m}, ef_construction = {efc}) WHERE model = {model}"
        ).format(
            name=sql.Identifier(name),
            dims=sql.Literal(dims),
            m=sql.Literal(m),
            efc=sql.Literal(ef_construction),
            model=sql.Literal(model),
        )
    )
    return str(name)


def activate_model(conn: psycopg.Connection[Any], name: str) -> ModelInfo:
    """Make `name` the searched model, in one transaction that checks it has a vector for
    every passage. Raises NotFound for an unknown model and Conflict while its coverage is
    incomplete; the active model is then unchanged."""
    get_model(conn, name)
    with conn.transaction():
        # Locks every model row: a worker writing vectors holds the active row FOR SHARE,
        # so its write and this switch happen one after the other, never across.
        _dicts(conn).execute("SELECT name FROM embedding_models ORDER BY name FOR UPDATE").fetchall()
        counts = (
            _dicts(conn)
            .execute(
                """SELECT count(*) AS passages,
                      count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM chunk_embeddings e
                                                          WHERE e.chunk_id = c.id AND e.model = %s)) AS missing
                 FROM knowledge_chunks c""",
                [name],
            )
            .fetchone()
        )
        assert counts is not None
        if counts["missing"]:
            have = counts["passages"] - counts["missing"]
            raise Conflict(
                f"model {name!r} has vectors for {have} of {counts['passages']} passages: "
                f"finish its re-embed first (hq-knowledge reembed --model {name})"
            )
        _dicts(conn).execute("UPDATE embedding_models SET is_active = false WHERE is_active AND name <> %s", [name])
        _dicts(conn).execute(
            "UPDATE embedding_models SET is_active = true, activated_at = now() WHERE name = %s AND NOT is_active",
            [name],
        )
    return get_model(conn, name)


def drop_model(conn: psycopg.Connection[Any], name: str) -> int:
    """Remove `name`'s vectors, index and registration; returns how many vectors went.
    Raises NotFound for an unknown model, Conflict for the active model or one that a
    running re-embed job is building. `conn` must be in autocommit mode."""
    info = get_model(conn, name)
    if info.is_active:
        raise Conflict(f"model {name!r} is the active model: activate another one before dropping it")
    running = (
        _dicts(conn).execute("SELECT id FROM reembed_jobs WHERE model = %s AND status = 'running'", [name]).fetchone()
    )
    if running:
        raise Conflict(
            f"model {name!r} is being built by re-embed job {running['id']}: "
            "let it finish (or cancel it) before dropping the model"
        )
    index = _dicts(conn).execute("SELECT hq_embedding_index_name(%s) AS n", [name]).fetchone()
    assert index is not None
    _dicts(conn).execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index["n"])))
    with conn.transaction():
        gone = _dicts(conn).execute("DELETE FROM chunk_embeddings WHERE model = %s", [name]).rowcount
        _dicts(conn).execute("DELETE FROM embedding_models WHERE name = %s AND NOT is_active", [name])
    return gone
