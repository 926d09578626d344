"""Cost of the vector index at 10k, 100k and 1M vectors of 384 dimensions.

    python benchmarks/vector_index.py [--sizes 10000,100000,1000000] [--methods hnsw,ivfflat,diskann,exact]
        [--m 8,16,32] [--ef-construction 64] [--hnsw-1m 16:64,32:128] [--ef-search 40,64,100,200,400]
        [--types vector,halfvec] [--rounds 3] [--max-scan-tuples 100000 --scan-mem-multiplier 8]
        [--shared-buffers 6GB] [--skip-build]
    python benchmarks/vector_index.py --report-only     # tables and plots again from the JSON

A 1M HNSW build takes 6+ minutes on 2 cores (m=16, ef_construction 64); run the sizes in
separate invocations if needed: rows merge into the JSON by configuration.

Data: the 10k size is the first 10,000 real all-MiniLM-L6-v2 passage embeddings of SciFact
(read from the latency benchmark's embedded database, else embedded here; cached as .npy in
benchmarks/.data/vector_index/). Larger sizes take all 13,484 of them, then the 76,956 pieces
(distinct sentences) of the SciFact, NPL and Cranfield documents embedded with the model (90,440 real
vectors), then passages composed of 2-4 real pieces (benchmarks/recombined.py, `--synthetic
recombined`, the default; benchmarks/data_check.py compares them with real vectors). `--synthetic
noise` instead adds Gaussian noise around the 13,484 passage vectors (sigma 0.015..0.045,
renormalised; the recipe of benchmarks/latency.py), which is locally 384-dimensional and much
harder than real data. Queries: the 300 SciFact test queries embedded with the same model (ONNX
query embedder). A random 1% of rows has tag = true. Each size prints its queries'
neighbourhoods (cosine of the 1st/10th/100th nearest vector, local intrinsic dimensionality).

Per size a table (id bigint, tag boolean, embedding vector(384)) lives in a separate embedded
PostgreSQL (benchmarks/.data/vector_index/pg, started with shared_buffers 6GB so that a 1M index
stays in it); tables and indexes are kept between runs. Indexes are built with
maintenance_work_mem 4GB and 2 parallel maintenance workers. For
HNSW (m x ef_construction, on the vector column or, `--types halfvec`, on embedding::halfvec(384);
ef_search), IVFFlat (lists = rows/1000; probes), pgvectorscale's
StreamingDiskANN (query_search_list_size) and exact scan (no vector index) it measures build
time, index size (pg_relation_size), latency p50/p99 of one query at a time from Python over
the Unix socket (after a warm-up; unfiltered HNSW in `--rounds` rounds that each go through
every ef_search, pooled), recall@10 against exact top-10 (numpy), unfiltered and with
`WHERE tag` (1%) under hnsw.iterative_scan off / relaxed_order / strict_order, and how many of
the 10 rows came back. Each measurement runs in a transaction that drops the table's other
indexes (rolled back after), and EXPLAIN records the plan. CPU used by other processes and the
load average are recorded per measurement; disturbed measurements are retried.

Prints markdown tables; merges its rows into benchmarks/results/vector_index.json and writes
vector_index.md and vector_index_*.png there.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import psutil
import psycopg
import recombined
from common import DATASETS, RESULTS, read_qrels, read_queries
from psycopg import sql

MODEL = "all-MiniLM-L6-v2"
DIMS = 384
K = 10
WORK = Path(__file__).resolve().parent / ".data" / "vector_index"
OUT = RESULTS / "vector_index.json"
Vectors = np.ndarray[Any, np.dtype[np.float32]]
Row = dict[str, Any]
info: dict[str, Any] = {}  # the server's versions and settings, filled in by main()


# -- data ---------------------------------------------------------------------------------


def real_vectors() -> tuple[Vectors, str]:
    """SciFact passage vectors of all-MiniLM-L6-v2 and how they were obtained (cached)."""
    path, label_path = WORK / "scifact-passages.npy", WORK / "scifact-passages.label"
    if path.exists():
        return np.asarray(np.load(path), dtype=np.float32), label_path.read_text()
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        vectors, label = _from_latency_database(), "real"
    except Exception as e:
        print(f"latency database unavailable ({e}); embedding SciFact passages", flush=True)
        try:
            from embeddings.model import load_embedder

            texts = [f"{title}\n\n{text}" for title, text in common.read_corpus(DATASETS / "scifact").values()]
            vectors, label = np.asarray(load_embedder(MODEL).embed(texts), dtype=np.float32), "real"
        except Exception as e2:
            print(f"could not embed ({e2}); SYNTHETIC clustered vectors instead", flush=True)
            rng = np.random.default_rng(3)
            centres = _unit(rng.normal(0, 1, (300, DIMS)))
            vectors, label = (
                _unit(centres[rng.integers(0, 300, 13_484)] + rng.normal(0, 0.05, (13_484, DIMS))),
                "synthetic",
            )
    np.save(path, vectors.astype(np.float32))
    label_path.write_text(label)
    return vectors.astype(np.float32), label


def _from_latency_database() -> Vectors:
    from pgvector.psycopg import register_vector

    from knowledge.db.embedded import EmbeddedPostgres

    data_dir = Path(__file__).resolve().parent / ".data" / "pg"  # benchmarks/latency.py's server
    if not (data_dir / "pg" / "PG_VERSION").exists():
        raise FileNotFoundError(data_dir / "pg")
    pg = EmbeddedPostgres(data_dir)
    url = pg.start()
    try:
        base, _, query = url.partition("?")
        with psycopg.connect(f"{base.rsplit('/', 1)[0]}/lat_scifact?{query}") as conn:
            register_vector(conn)
            rows = conn.execute(
                "SELECT embedding FROM chunk_embeddings WHERE model = %s ORDER BY chunk_id", [MODEL]
            ).fetchall()
        return np.array([v.to_numpy() for (v,) in rows], dtype=np.float32)
    finally:
        pg.stop()


def query_vectors(real_label: str, real: Vectors) -> Vectors:
    """The SciFact test queries, embedded like the service embeds them (cached)."""
    path = WORK / f"scifact-queries-{real_label}.npy"
    if path.exists():
        return np.asarray(np.load(path), dtype=np.float32)
    if real_label == "real":
        from embeddings.onnx import load_query_embedder

        texts = read_queries(DATASETS / "scifact")
        embedder = load_query_embedder(MODEL)
        vectors = np.array([embedder.embed_query(texts[qid]) for qid in read_qrels(DATASETS / "scifact")])
    else:
        rng = np.random.default_rng(5)
        vectors = _unit(real[rng.integers(0, len(real), 300)] + rng.normal(0, 0.04, (300, DIMS)))
    np.save(path, vectors.astype(np.float32))
    return np.asarray(vectors, dtype=np.float32)


def _unit(v: np.ndarray[Any, Any]) -> Vectors:
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=np.float32)


def dataset(
    real: Vectors, n: int, pieces: recombined.Pieces | None, seed: int = 7
) -> tuple[Vectors, np.ndarray[Any, Any]]:
    """`n` vectors (the real ones first, then synthetic ones: passages composed of `pieces`,
    or noise around real vectors without them) and the 1% tag mask."""
    out = np.empty((n, DIMS), dtype=np.float32)
    out[: min(n, len(real))] = real[:n]
    if n > len(real):
        extra = n - len(real)
        out[len(real) :] = noise(real, extra, seed) if pieces is None else recombined.compose(pieces, extra, seed)[0]
    tag = np.zeros(n, dtype=bool)
    tag[np.random.default_rng(11).choice(n, n // 100, replace=False)] = True
    return out, tag


def noise(real: Vectors, n: int, seed: int) -> Vectors:
    """`n` vectors of Gaussian noise around random real ones (sigma 0.015..0.045 per
    dimension, renormalised: cosine ~0.7-0.95 to the real vector)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIMS), dtype=np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        near = real[rng.integers(0, len(real), size)]
        sigma = rng.uniform(0.015, 0.045, (size, 1)).astype(np.float32)
        out[start : start + size] = _unit(near + rng.normal(0, 1, near.shape).astype(np.float32) * sigma)
    return out


def neighbourhood(scores: Vectors) -> dict[str, float]:
    """How the queries' neighbourhoods look, from their 100 best cosines (best first): mean
    cosine of the 1st, 10th and 100th nearest vector, and the median local intrinsic
    dimensionality (maximum-likelihood estimate over the 20 nearest). Gaussian noise in 384
    dimensions shows as a high LID and near-ties."""
    dist = np.sqrt(np.maximum(2 - 2 * scores[:, :20], 1e-12))
    lid = -1 / np.mean(np.log(dist / dist[:, -1:]), axis=1)
    return {
        "cos@1": round(float(scores[:, 0].mean()), 3),
        "cos@10": round(float(scores[:, 9].mean()), 3),
        "cos@100": round(float(scores[:, 99].mean()), 3),
        "lid@20": round(float(np.median(lid)), 1),
    }


def nearest(
    data: Vectors, queries: Vectors, k: int = K, mask: np.ndarray[Any, Any] | None = None
) -> tuple[Vectors, np.ndarray[Any, Any]]:
    """Cosines and ids of the exact top-k by cosine (inner product of unit vectors), best
    first, in 200k-row chunks."""
    ids = np.arange(len(data)) if mask is None else np.flatnonzero(mask)
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(ids), 200_000):
        chunk = ids[start : start + 200_000]
        scores = queries @ data[chunk].T
        top = np.argpartition(-scores, min(k, len(chunk)) - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        best_i = np.concatenate([best_i, chunk[top]], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_s, best_i


def id_sets(ids: np.ndarray[Any, Any]) -> list[set[int]]:
    """Each query's first K ids, as a set (the ground truth of recall@K)."""
    return [set(map(int, row[:K])) for row in ids]


# -- the server and the tables ------------------------------------------------------------


def start_server(shared_buffers: str) -> tuple[Any, str]:
    """The benchmark's own embedded server, started with `shared_buffers` (the package's
    default of <= 1 GB would not hold a 1M-vector HNSW index), or joined if it runs."""
    from knowledge.db import embedded

    embedded._shared_buffers = lambda: f"-c shared_buffers={shared_buffers}"
    pg = embedded.EmbeddedPostgres(WORK, preload=())
    return pg, pg.start()


def server_info(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    names = (
        "shared_buffers",
        "maintenance_work_mem",
        "max_parallel_maintenance_workers",
        "work_mem",
        "max_parallel_workers_per_gather",
        "effective_cache_size",
    )
    show = {name: conn.execute(f"SELECT current_setting('{name}')").fetchall()[0][0] for name in names}
    versions = dict(
        conn.execute(
            "SELECT name, default_version FROM pg_available_extensions"
            " WHERE name IN ('vector', 'vectorscale', 'pg_prewarm')"
        ).fetchall()
    )
    return {
        "postgres": conn.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
        "pgvector": versions.get("vector"),
        "vectorscale": versions.get("vectorscale"),
        "pg_prewarm": "pg_prewarm" in versions,
        "settings": show,
    }


def ensure_table(
    conn: psycopg.Connection[Any], n: int, data: Vectors, tag: np.ndarray[Any, Any], kind: str, table: str | None = None
) -> str:
    """The table of size `n` (`vec_<n>` unless named), kept while its comment says it holds the same data."""
    table = table or f"vec_{n}"
    digest = hashlib.blake2b(np.ascontiguousarray(data[:n]).data, digest_size=8)
    digest.update(np.packbits(tag[:n]).tobytes())
    kind = f"{kind} #{digest.hexdigest()}"  # a change of the recipe reloads the table
    row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", [table]).fetchone()
    if row and row[0] == kind:
        return table
    started = time.perf_counter()
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, tag boolean NOT NULL, embedding vector(384))").format(
            sql.Identifier(table)
        )
    )
    with (
        conn.transaction(),
        conn.cursor().copy(
            sql.SQL("COPY {} (id, tag, embedding) FROM STDIN WITH (FORMAT BINARY)").format(sql.Identifier(table))
        ) as copy,
    ):
        copy.set_types(["int8", "bool", "vector"])
        for i in range(n):
            copy.write_row((i, bool(tag[i]), data[i]))
    conn.execute(sql.SQL("CREATE INDEX {} ON {} (tag)").format(sql.Identifier(f"{table}_tag"), sql.Identifier(table)))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(table), sql.Literal(kind)))
    print(f"loaded {n} rows into {table} in {time.perf_counter() - started:.0f} s", flush=True)
    return table


def index_specs(n: int, args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, method, build params) of each vector index to measure at size `n`."""
    specs: list[tuple[str, str, dict[str, Any]]] = []
    pairs = args.hnsw_1m if n >= 1_000_000 else [(m, ec) for ec in args.ef_construction for m in args.m]
    for method in args.methods:
        if method == "hnsw":  # a halfvec index is an expression index on embedding::halfvec(384)
            specs += [
                (
                    f"vec_{n}_hnsw_m{m}_ec{ec}" + ("_halfvec" if kind == "halfvec" else ""),
                    "hnsw",
                    {"m": m, "ef_construction": ec} | ({"type": kind} if kind == "halfvec" else {}),
                )
                for kind in args.types
                for m, ec in pairs
            ]
        elif method == "ivfflat":
            specs.append((f"vec_{n}_ivfflat", "ivfflat", {"lists": max(10, n // 1000)}))
        elif method == "diskann":
            specs.append(
                (
                    f"vec_{n}_diskann",
                    "diskann",
                    {"num_neighbors": 50, "search_list_size": 100, "storage_layout": "memory_optimized"},
                )
            )
    return specs


def build(
    conn: psycopg.Connection[Any],
    table: str,
    name: str,
    method: str,
    params: dict[str, Any],
    builds: dict[str, float],
    args: argparse.Namespace,
) -> float | None:
    """Build the index unless it exists; its build time (None when skipped and absent)."""
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]:  # type: ignore[index]
        return builds.get(name)
    if args.skip_build:
        return None
    if method == "diskann":
        conn.execute("CREATE EXTENSION IF NOT EXISTS vectorscale CASCADE")
    column, ops, _ = indexed(params)
    with_ = ", ".join(f"{k} = {v}" for k, v in params.items() if k not in ("storage_layout", "type"))
    conn.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
    conn.execute("SET max_parallel_maintenance_workers = 2")
    print(f"building {name} ...", flush=True)
    started = time.perf_counter()
    conn.execute(f"CREATE INDEX {name} ON {table} USING {method} ({column} {ops}) WITH ({with_})")
    builds[name] = time.perf_counter() - started
    print(f"  {name} built in {builds[name]:.0f} s", flush=True)
    save_builds(builds)
    return builds[name]


def save_builds(builds: dict[str, float]) -> None:
    (WORK / "builds.json").write_text(json.dumps(builds, indent=1))


# -- measuring ----------------------------------------------------------------------------


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests (0 on bare metal)."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def own_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def indexed(params: dict[str, Any]) -> tuple[str, str, str]:
    """The indexed expression, operator class and query placeholder of a vector index with
    `params`: the column, or (`type` halfvec) the column cast to halfvec."""
    if params.get("type") == "halfvec":
        return f"(embedding::halfvec({DIMS}))", "halfvec_cosine_ops", f"%s::halfvec({DIMS})"
    return "embedding", "vector_cosine_ops", "%s"


def distance(params: dict[str, Any]) -> sql.Composable:
    """The ORDER BY expression that the index of `params` serves (its own expression)."""
    column, _, placeholder = indexed(params)
    return sql.SQL(f"{column} <=> {placeholder}")


def measure(
    conn: psycopg.Connection[Any],
    table: str,
    drop: list[str],
    settings: dict[str, str],
    queries: Vectors,
    truth: list[set[int]],
    filtered: bool,
    expect: str,
    order: sql.Composable,
) -> tuple[Row, list[float]]:
    """Latency and recall of `queries` one at a time, with the indexes in `drop` hidden; and
    each query's latency (for pooling rounds)."""
    query = sql.SQL("SELECT id FROM {} {} ORDER BY {} LIMIT 10").format(
        sql.Identifier(table), sql.SQL("WHERE tag" if filtered else ""), order
    )
    row: Row = {}
    pids = [os.getpid(), conn.info.backend_pid]
    with conn.transaction():
        for name in drop:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        for key, value in settings.items():
            conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(*key.split(".")), sql.Literal(value)))
        plan = [r[0] for r in conn.execute(sql.SQL("EXPLAIN ") + query, [queries[0]], prepare=False)]
        row["plan"] = " / ".join(line.strip()[:120] for line in plan[:4])  # cut the query vector
        row["plan_ok"] = expect in "\n".join(plan)
        with conn.cursor() as cur:
            for q in queries:  # warm-up: every query once
                cur.execute(query, [q], prepare=False).fetchall()
            load_before, busy0, own0, wall0 = os.getloadavg(), busy_seconds(), own_seconds(pids), time.perf_counter()
            steal0 = steal_seconds()
            latencies, recalls, returned = [], [], []
            for q, want in zip(queries, truth, strict=True):
                started = time.perf_counter()
                got = [r[0] for r in cur.execute(query, [q], prepare=False).fetchall()]
                latencies.append((time.perf_counter() - started) * 1000)
                recalls.append(len(want.intersection(got)) / K)
                returned.append(len(got))
            wall = time.perf_counter() - wall0
            others = (busy_seconds() - busy0 - (own_seconds(pids) - own0)) / wall
            steal = (steal_seconds() - steal0) / wall
        raise psycopg.Rollback()
    return row | {
        "queries": len(queries),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "recall@10": round(float(np.mean(recalls)), 4),
        "returned_mean": round(float(np.mean(returned)), 2),
        "loadavg": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "other_cpu_cores": round(max(0.0, others), 2),
        "steal_cores": round(steal, 3),
    }, latencies


def pooled(measured: list[tuple[Row, list[float]]]) -> Row:
    """One row from one or more measurements of the same configuration: percentiles of all
    their latencies together, each round's p50 (when several), the most any was disturbed."""
    rounds = [row for row, _ in measured]
    latencies = [ms for _, times in measured for ms in times]
    return (
        rounds[0]
        | {
            "queries": sum(r["queries"] for r in rounds),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "recall@10": round(float(np.mean([r["recall@10"] for r in rounds])), 4),
            "returned_mean": round(float(np.mean([r["returned_mean"] for r in rounds])), 2),
            "loadavg": [rounds[0]["loadavg"][0], rounds[-1]["loadavg"][1]],
            "other_cpu_cores": max(r["other_cpu_cores"] for r in rounds),
            "steal_cores": max(r.get("steal_cores", 0.0) for r in rounds),
        }
        | ({"round_p50_ms": [r["p50_ms"] for r in rounds]} if len(rounds) > 1 else {})
    )


def disturbed(row: Row) -> bool:
    """Other processes used > 0.3 of a core during the measurement (CPU time of the machine
    minus this process and its backend). The 1-minute load average is recorded too, but it
    lags by a minute and counts this benchmark itself (~1: client and backend take turns).
    Exact scans are never flagged: their own parallel workers count as other processes."""
    return bool(row["other_cpu_cores"] > 0.3 and row["method"] != "exact")


def wait_quiet(limit_s: float) -> None:
    """Wait up to `limit_s` for a 3-second window in which the cores are < 15% busy."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and psutil.cpu_percent(interval=3) > 15:
        pass


def run_size(
    conn: psycopg.Connection[Any],
    n: int,
    real: Vectors,
    label: str,
    queries: Vectors,
    pieces: recombined.Pieces | None,
    builds: dict[str, float],
    args: argparse.Namespace,
) -> list[Row]:
    data, tag = dataset(real, n, pieces)
    kind = label if n <= len(real) else f"{label}+{'synthetic-clustered' if pieces is None else 'recombined'}"
    table = ensure_table(conn, n, data, tag, f"{kind}: {len(real)} {label} vectors + seed 7")
    scores, ids = nearest(data, queries, 100)
    truth = {False: id_sets(ids), True: id_sets(nearest(data, queries, K, tag)[1])}
    around = neighbourhood(scores)
    print(f"  data {kind}; the queries' neighbourhoods: {json.dumps(around)}", flush=True)
    del data
    specs = index_specs(n, args)
    for name, method, params in specs:
        build(conn, table, name, method, params, builds, args)
    present = [name for name, _, _ in specs if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]]  # type: ignore[index]
    others = [
        r[0]
        for r in conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass AND NOT indisprimary",
            [table],
        )
    ]
    rows: list[Row] = []
    redo: list[tuple[int, tuple[Any, ...], int]] = []  # (row, measure() arguments, rounds)

    def margs_of(
        params: dict[str, Any], filtered: bool, keep: str | None, settings: dict[str, str], nq: int | None = None
    ) -> tuple[Any, ...]:
        drop = [i for i in others if i != keep and not (keep is None and i == f"{table}_tag")]
        expect = keep or (f"{table}_tag" if filtered else "Seq Scan")
        return conn, table, drop, settings, queries[:nq], truth[filtered][:nq], filtered, expect, distance(params)

    def record(
        method: str,
        params: dict[str, Any],
        filtered: bool,
        iterative: str | None,
        keep: str | None,
        settings: dict[str, str],
        nq: int | None = None,
        rounds: list[tuple[Row, list[float]]] | None = None,
    ) -> None:
        margs = margs_of(params, filtered, keep, settings, nq)
        rounds = rounds or [measure(*margs)]
        got = pooled(rounds)
        if disturbed(got | {"method": method}):
            redo.append((len(rows), margs, len(rounds)))
        size = None if keep is None else conn.execute("SELECT pg_relation_size(%s)", [keep]).fetchone()[0]  # type: ignore[index]
        row = {
            "vectors": n,
            "data": kind,
            "neighbourhood": around,
            "method": method,
            "params": params,
            "filter": "1%" if filtered else None,
            "iterative_scan": iterative,
            "build_s": None if keep is None else round(builds.get(keep, float("nan")), 1),
            "index_mb": None if size is None else round(size / 2**20, 1),
        } | got
        rows.append(row)
        print(
            f"  {n:>8} {method:8} {json.dumps(params):62} {row['filter'] or '-':3} {iterative or '-':13}"
            f" p50 {row['p50_ms']:8.2f}  p99 {row['p99_ms']:8.2f}  recall {row['recall@10']:.3f}"
            f"  rows {row['returned_mean']:5.2f}  plan_ok {row['plan_ok']}  others {row['other_cpu_cores']}"
            f"  steal {row['steal_cores']}",
            flush=True,
        )

    for name, method, params in specs:
        if name not in present:
            continue
        if info["pg_prewarm"]:
            conn.execute("SELECT pg_prewarm(%s)", [name])
        if method == "hnsw":
            # Unfiltered latency drifts by a millisecond or more from one minute to the next on
            # this kind of machine: each round measures every ef_search in turn, and a row
            # pools its rounds, so that drift spreads over all settings alike.
            rounds: dict[int, list[tuple[Row, list[float]]]] = {ef: [] for ef in args.ef_search}
            for _ in range(args.rounds):
                for ef in args.ef_search:
                    rounds[ef].append(
                        measure(
                            *margs_of(params, False, name, {"hnsw.ef_search": str(ef), "hnsw.iterative_scan": "off"})
                        )
                    )
            for ef in args.ef_search:
                p = params | {"ef_search": ef}
                record(
                    method,
                    p,
                    False,
                    "off",
                    name,
                    {"hnsw.ef_search": str(ef), "hnsw.iterative_scan": "off"},
                    rounds=rounds[ef],
                )
                for mode in ("off", "relaxed_order", "strict_order"):
                    record(
                        method,
                        p | {"max_scan_tuples": 20000},
                        True,
                        mode,
                        name,
                        {"hnsw.ef_search": str(ef), "hnsw.iterative_scan": mode},
                    )
                for tuples in args.max_scan_tuples if ef >= 100 else []:  # a longer iterative scan
                    longer = {"max_scan_tuples": tuples, "scan_mem_multiplier": args.scan_mem_multiplier}
                    record(
                        method,
                        p | longer,
                        True,
                        "relaxed_order",
                        name,
                        {
                            "hnsw.ef_search": str(ef),
                            "hnsw.iterative_scan": "relaxed_order",
                            "hnsw.max_scan_tuples": str(tuples),
                            "hnsw.scan_mem_multiplier": str(args.scan_mem_multiplier),
                        },
                    )
        elif method == "ivfflat":
            for probes in sorted({1, 2, 5, 10, 20, 50} | {params["lists"] // 10}):
                if probes <= params["lists"]:
                    p = params | {"probes": probes}
                    record(method, p, False, "off", name, {"ivfflat.probes": str(probes)})
                    record(
                        method,
                        p,
                        True,
                        "relaxed_order",
                        name,
                        {"ivfflat.probes": str(probes), "ivfflat.iterative_scan": "relaxed_order"},
                    )
        elif method == "diskann":
            for sls, rescore in [(25, 50), (50, 50), (100, 50), (200, 50), (400, 100)]:
                p = params | {"query_search_list_size": sls, "query_rescore": rescore}
                s = {"diskann.query_search_list_size": str(sls), "diskann.query_rescore": str(rescore)}
                record(method, p, False, None, name, s)
                record(method, p, True, None, name, s)
    if "exact" in args.methods:
        nq = args.exact_queries if n >= 1_000_000 else None
        record("exact", {}, False, None, None, {}, nq)
        record("exact", {"tag_index": True}, True, None, None, {})
    waiting_until = time.monotonic() + args.max_wait  # re-measure what other processes disturbed,
    for attempt in range(2):  # keep the least disturbed
        if redo:
            print(f"  re-measuring {len(redo)} disturbed configurations", flush=True)
        again = []
        for i, margs, n_rounds in redo:
            wait_quiet(min(60.0, waiting_until - time.monotonic()))
            got = pooled([measure(*margs) for _ in range(n_rounds)])
            if got["other_cpu_cores"] < rows[i]["other_cpu_cores"]:
                rows[i] |= got
            rows[i]["attempts"] = attempt + 2
            if disturbed(rows[i]):
                again.append((i, margs, n_rounds))
        redo = again
    return rows


# -- reporting ----------------------------------------------------------------------------


def label(row: Row) -> str:
    p = row["params"]
    if row["method"] == "hnsw":
        return f"hnsw m={p['m']} ef_c={p['ef_construction']}" + (" halfvec" if p.get("type") == "halfvec" else "")
    return str(row["method"]) + (f" lists={p['lists']}" if "lists" in p else "")


def data_short(row: Row) -> str:
    """ "" for real vectors, else how the synthetic ones were made."""
    return next(
        (
            f" [{short}]"
            for part, short in (("recombined", "recombined"), ("synthetic-clustered", "noise"))
            if part in row["data"]
        ),
        "",
    )


def knob(row: Row) -> str:
    p = row["params"]
    for key in ("ef_search", "probes", "query_search_list_size"):
        if key in p:
            return (
                f"{key}={p[key]}"
                + (f" rescore={p['query_rescore']}" if "query_rescore" in p else "")
                + (
                    f" max_scan_tuples={p.get('max_scan_tuples', 20000)}"
                    if row["method"] == "hnsw" and row["filter"] and row["iterative_scan"] != "off"
                    else ""
                )
                + (f" scan_mem_multiplier={p['scan_mem_multiplier']}" if p.get("scan_mem_multiplier", 1) != 1 else "")
            )
    return ""


def knob_value(row: Row) -> int:
    p = row["params"]
    return int(p.get("ef_search", p.get("probes", p.get("query_search_list_size", 0))))


def markdown(result: dict[str, Any]) -> str:
    rows = sorted(result["rows"], key=lambda r: (r["vectors"], r["data"], r["method"], label(r)))
    lines = [
        (
            f"machine: {result['machine']}; PostgreSQL {result['postgres']}, pgvector {result['pgvector']},"
            f" vectorscale {result['vectorscale']}; settings {json.dumps(result['settings'])}"
        ),
        "",
        "### Index builds",
        "",
        "| vectors | data | index | build s | index MB |",
        "|---:|---|---|---:|---:|",
    ]
    seen = set()
    for r in rows:
        if r["index_mb"] is not None and (r["vectors"], r["data"], label(r)) not in seen:
            seen.add((r["vectors"], r["data"], label(r)))
            lines.append(f"| {r['vectors']} | {r['data']} | {label(r)} | {r['build_s']} | {r['index_mb']} |")
    lines += [
        "",
        "### The queries' neighbourhoods",
        "",
        "| vectors | data | cos@1 | cos@10 | cos@100 | LID@20 (median) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    shown = set()
    for r in rows:
        if "neighbourhood" in r and (r["vectors"], r["data"]) not in shown:
            shown.add((r["vectors"], r["data"]))
            a = r["neighbourhood"]
            lines.append(
                f"| {r['vectors']} | {r['data']} | {a['cos@1']} | {a['cos@10']} | {a['cos@100']} | {a['lid@20']} |"
            )
    for title, filtered in (("Unfiltered top-10", False), ("Filtered top-10 (`WHERE tag`, 1% of rows)", True)):
        lines += [
            "",
            f"### {title}",
            "",
            (
                "| vectors | data | index | query setting | iterative scan | p50 ms (rounds' p50) | p99 ms |"
                " recall@10 | rows returned | plan uses index | others' CPU | load 1m |"
            ),
            "|---:|---|---|---|---|---:|---:|---:|---:|---|---:|---|",
        ]
        for r in rows:
            if (r["filter"] is not None) == filtered:
                spread = f" ({min(r['round_p50_ms'])}-{max(r['round_p50_ms'])})" if "round_p50_ms" in r else ""
                lines.append(
                    f"| {r['vectors']} | {r['data']} | {label(r)} | {knob(r)} | {r['iterative_scan'] or '-'}"
                    f" | {r['p50_ms']}{spread}"
                    f" | {r['p99_ms']} | {r['recall@10']} | {r['returned_mean']} | {r['plan_ok']}"
                    f" | {r['other_cpu_cores']} | {r['loadavg'][0]}→{r['loadavg'][1]} |"
                )
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    sizes = sorted({r["vectors"] for r in rows})
    for name, filtered in (("recall_latency", False), ("filtered_recall_latency", True)):
        fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
        for ax, n in zip(axes[0], sizes, strict=True):
            curves: dict[str, list[Row]] = {}
            for r in rows:
                if r["vectors"] == n and (r["filter"] is not None) == filtered:
                    key = (
                        label(r)
                        + data_short(r)
                        + (f" {r['iterative_scan']}" if filtered and r["iterative_scan"] else "")
                    )
                    if r["params"].get("max_scan_tuples", 20000) != 20000:
                        key += f" max_scan_tuples={r['params']['max_scan_tuples']}"
                    if r["params"].get("scan_mem_multiplier", 1) != 1:
                        key += f" scan_mem_multiplier={r['params']['scan_mem_multiplier']}"
                    curves.setdefault(key, []).append(r)
            for key, pts in sorted(curves.items()):
                pts.sort(key=lambda r: knob_value(r))
                ax.plot(
                    [r["p50_ms"] for r in pts],
                    [r["recall@10"] for r in pts],
                    "o-" if len(pts) > 1 else "s",
                    label=key,
                    markersize=4,
                )
                for r in pts:  # the ef_search / probes / search list size of each point
                    ax.annotate(
                        str(knob_value(r) or ""),
                        (r["p50_ms"], r["recall@10"]),
                        fontsize=5,
                        xytext=(2, -6),
                        textcoords="offset points",
                    )
            ax.set(
                xscale="log",
                xlabel="p50 latency, ms (log)",
                ylabel="recall@10",
                title=f"{n:,} vectors" + (", 1% filter" if filtered else ""),
            )
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(RESULTS / f"vector_index_{name}.png", dpi=110)
        plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    builds: dict[str, dict[int, tuple[float, float]]] = {}
    for r in rows:
        if r["index_mb"] is not None:
            key = ("ivfflat lists=rows/1000" if r["method"] == "ivfflat" else label(r)) + data_short(r)
            builds.setdefault(key, {})[r["vectors"]] = (r["build_s"], r["index_mb"])
    for key, by_n in sorted(builds.items()):
        ns = sorted(by_n)
        a1.plot(ns, [by_n[n][0] for n in ns], "o-", label=key)
        a2.plot(ns, [by_n[n][1] for n in ns], "o-", label=key)
    a1.set(xscale="log", yscale="log", xlabel="vectors", ylabel="build time, s", title="index build time")
    a2.set(xscale="log", yscale="log", xlabel="vectors", ylabel="pg_relation_size, MB", title="index size")
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "vector_index_build.png", dpi=110)
    plt.close(fig)


def save(new_rows: list[Row]) -> dict[str, Any]:
    """Merge into the JSON: a row replaces the earlier row of the same configuration unless it
    was disturbed and the earlier one was not; other rows are kept (another run may write too)."""
    with open(WORK / "results.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(OUT.read_text()) if OUT.exists() else {"rows": []}

        def key(r: Row) -> tuple[Any, ...]:
            return r["vectors"], r["data"], label(r), knob(r), r["filter"], r["iterative_scan"]

        for r in new_rows + old["rows"]:
            r["disturbed"] = disturbed(r)
        clean_old = {key(r) for r in old["rows"] if not r["disturbed"]}
        new_rows = [r for r in new_rows if not (r["disturbed"] and key(r) in clean_old)]
        replaced = {key(r) for r in new_rows}
        result = {
            **old,
            "machine": common.machine(),
            **{k: v for k, v in info.items() if k != "pg_prewarm"},
            "rows": [r for r in old["rows"] if key(r) not in replaced] + new_rows,
        }
        OUT.write_text(json.dumps(result, indent=1))
        (RESULTS / "vector_index.md").write_text(markdown(result))
        plots(result)
    return result


def main() -> None:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    def types(text: str) -> list[str]:
        kinds = [x for x in text.split(",") if x]
        if not kinds or set(kinds) - {"vector", "halfvec"}:
            raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of vector, halfvec")
        return kinds

    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: a whole number >= 1")
        return int(text)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["hnsw", "ivfflat", "diskann", "exact"])
    parser.add_argument("--m", type=ints, default=[8, 16, 32], help="HNSW m below 1M")
    parser.add_argument("--ef-construction", type=ints, default=[64], help="HNSW ef_construction below 1M")
    parser.add_argument(
        "--hnsw-1m",
        default=[(16, 64)],
        help="HNSW m:ef_construction pairs at >= 1M",
        type=lambda s: [tuple(map(int, pair.split(":"))) for pair in s.split(",")],
    )
    parser.add_argument("--ef-search", type=ints, default=[40, 64, 100, 200, 400])
    parser.add_argument(
        "--types",
        type=types,
        default=["vector"],
        help="what HNSW indexes: vector (the column), halfvec (an index on embedding::halfvec(384))",
    )
    parser.add_argument(
        "--rounds", type=positive, default=3, help="rounds of the unfiltered HNSW measurements (pooled)"
    )
    parser.add_argument("--exact-queries", type=int, default=20, help="queries for exact scan at >= 1M")
    parser.add_argument("--maintenance-work-mem", default="4GB")
    parser.add_argument("--shared-buffers", default="6GB")
    parser.add_argument(
        "--max-scan-tuples",
        type=ints,
        default=[],
        help="extra hnsw.max_scan_tuples values for filtered relaxed_order scans (default 20000)",
    )
    parser.add_argument(
        "--scan-mem-multiplier",
        type=int,
        default=1,
        help="hnsw.scan_mem_multiplier (x work_mem) with those extra max_scan_tuples",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=600,
        help="seconds to wait for a quiet machine before re-measuring disturbed configurations, per size",
    )
    parser.add_argument(
        "--synthetic",
        choices=["recombined", "noise"],
        default="recombined",
        help="vectors beyond the real ones: real text recombined (default), or Gaussian noise"
        " around real vectors (the earlier recipe, locally 384-dimensional)",
    )
    parser.add_argument(
        "--fidelity",
        type=int,
        default=500,
        metavar="N",
        help="embed N composed passages' texts to compare with their composed vectors (0: skip)",
    )
    parser.add_argument("--skip-build", action="store_true", help="measure only indexes that exist")
    parser.add_argument("--report-only", action="store_true", help="rewrite .md and plots from the JSON")
    args = parser.parse_args()
    if args.report_only:
        print(markdown(save([])))
        return
    from pgvector.psycopg import register_vector

    real, real_label = real_vectors()
    queries = query_vectors(real_label, real)
    pieces = recombined.pieces(WORK) if args.synthetic == "recombined" else None
    if pieces is not None:  # every piece of the collections is a real vector too
        real = np.concatenate([real, pieces.vectors])
        if args.fidelity:
            from embeddings.onnx import OnnxEmbedder

            info["recombined_fidelity"] = recombined.fidelity(pieces, OnnxEmbedder(), args.fidelity)
            print(
                f"composed vectors against the model's embedding of the same text: "
                f"{json.dumps(info['recombined_fidelity'])}",
                flush=True,
            )
    print(f"{len(real)} {real_label} passage vectors, {len(queries)} queries", flush=True)
    builds = json.loads((WORK / "builds.json").read_text()) if (WORK / "builds.json").exists() else {}
    pg, url = start_server(args.shared_buffers)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            info.update(server_info(conn))
            if "diskann" in args.methods and not info["vectorscale"]:
                args.methods.remove("diskann")
            if info["pg_prewarm"]:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            register_vector(conn)
            print(
                f"machine: {common.machine()}; PostgreSQL {info['postgres']}, pgvector {info['pgvector']}, "
                f"vectorscale {info['vectorscale']}; {json.dumps(info['settings'])}; index builds with "
                f"maintenance_work_mem {args.maintenance_work_mem}, 2 parallel workers",
                flush=True,
            )
            for n in args.sizes:
                print(f"\n## {n} vectors", flush=True)
                rows = run_size(conn, n, real, real_label, queries, pieces, builds, args)
                result = save(rows)
        print("\n" + markdown(result))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
