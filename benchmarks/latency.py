"""Latency of GET /search over HTTP, at collection size and at 100k passages.

    python benchmarks/latency.py [--dataset scifact] [--passages 100000] [--requests 300]

A BEIR collection is imported through the real import path and embedded by the real worker
(all-MiniLM-L6-v2) into an embedded PostgreSQL kept in --data-dir, so later runs start at
once. A copy of that database is filled up to --passages with real text (passages of the
collections in the datasets folder) and synthetic vectors clustered around the collection's
own passage vectors (each a real vector plus Gaussian noise, cosine ~0.7-0.95 to it); the
BM25 and HNSW indexes are rebuilt after the bulk load, as a re-embed would.

For each size the service runs as `hq-knowledge serve --no-worker` with its query cache off
(HQ_QUERY_CACHE=0: every request embeds its query), and the collection's queries go to
/search over keep-alive HTTP connections (http.client), from 1 and from 8 concurrent clients, in each mode,
without a filter and with a tag held by 1% of the passages. The service is warmed up first
with other collections' queries; each mode then gets its own share of the collection's
queries, new to the service in its first row. Latency is measured by the client: request
sent to body read. The semantic leg's recall@10 is measured against exact
search (numpy over every stored vector, the same query vectors, items ranked by their best
passage), unfiltered and filtered by tags that hold 1% and 5% of the passages. Each
response's took_ms and embed_ms split the server's time into embedding the query and the
rest, and each leg's index scan is timed alone (HNSW and BM25 top-k, as many as a first page
of 10 hits fetches: knowledge.search.passage_quota and bm25_quota): the floor that
no statement around the legs goes under.

--keyword-indexes names the keyword paths measured (knowledge.db.keyword_index), each row
checked to report the path it is listed with: `pg_textsearch` (HQ_KEYWORD_INDEX=pg_textsearch,
path `bm25`: every row above) and `sql` (the SQL keyword index, path `sql-bm25`). With both
(the default), the large size is measured again after its pg_textsearch rows by a service
restarted with HQ_KEYWORD_INDEX=sql on the same database, in keyword and hybrid mode, its
rows printed beside theirs; the SQL leg (hq_sql_bm25_top, as many as bm25_top) is timed
alone at every size beside the BM25 index's, and the ratios of the two paths' p50 are
checked against the issue's bound (at most 3x). The SQL tables are filled by the triggers
as the passages are copied in; each size checks that they count every passage and vacuums
them first (index-only scans that skip the heap). With `sql` alone, every row is sql-bm25.

Prints markdown tables; writes benchmarks/results/latency.json.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
import httpx
import numpy as np
import psycopg
from common import (
    DATASETS,
    RESULTS,
    add_data_dir_option,
    read_corpus,
    read_queries,
    running_service,
    write_corpus_markdown,
)
from psycopg import sql

MODEL = "all-MiniLM-L6-v2"
DIMS = 384
FILTER_TAGS = {"1%": ("bench:1pct", 0.01), "5%": ("bench:5pct", 0.05)}
KEYWORD_PATHS = {"pg_textsearch": "bm25", "sql": "sql-bm25"}  # HQ_KEYWORD_INDEX -> keyword_path
SQL_BOUND = 3.0  # the bound on SQL keyword p50 / pg_textsearch keyword p50
BM25_INDEX = (
    "CREATE INDEX knowledge_chunks_bm25_idx ON knowledge_chunks USING bm25 (indexed_text)"
    " WITH (text_config = 'english')"
)


def database_url(server_url: str, name: str) -> str:
    """The URL of database `name` on the embedded server whose URL is `server_url`."""
    base, _, query = server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def database_exists(admin: psycopg.Connection[Any], name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def passages(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM chunk_embeddings WHERE model = %s", [MODEL]).fetchone()
        return int(row[0]) if row else 0


def collection_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a benchmark on a collection load_collection keeps, described by the
    first paragraph of `doc`: --dataset, the BEIR collection, and --data-dir, where the
    embedded server keeps its database `lat_<dataset>` between runs."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--dataset", default="scifact")
    add_data_dir_option(parser)
    return parser


def load_collection(admin: psycopg.Connection[Any], server_url: str, name: str, dataset: str) -> str:
    """The database `name` holding `dataset`, imported and embedded (kept between runs)."""
    from knowledge.db.migrations import migrate
    from knowledge.store.importer import import_folder

    url = database_url(server_url, name)
    if database_exists(admin, name):
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE embedding_status <> 'indexed'), count(*) FROM documents"
            ).fetchone()
        if row and row[0] == 0 and row[1] > 0:
            return url
        admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    corpus = read_corpus(DATASETS / dataset)
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        folder = Path(tmp) / dataset
        write_corpus_markdown(corpus, folder)
        started = time.perf_counter()
        imported = import_folder(conn, folder)
        print(f"imported {imported.created} documents in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "knowledge", "worker", "--once"], env={**os.environ, "HQ_DATABASE_URL": url}, check=True
    )
    print(f"embedded {passages(url)} passages in {time.perf_counter() - started:.0f} s", flush=True)
    return url


def text_pool(limit_chars: int = 1200) -> list[tuple[str, str]]:
    """(title, text) of every entry of every collection in the datasets folder: real prose."""
    pool = []
    for dataset in sorted(p for p in DATASETS.iterdir() if (p / "corpus.jsonl").exists()):
        for title, text in read_corpus(dataset).values():
            if text.strip():
                pool.append((title.strip(), text.strip()[:limit_chars]))
    return pool


def fill(admin: psycopg.Connection[Any], server_url: str, source: str, name: str, target: int, seed: int = 7) -> str:
    """A copy of database `source` filled up to `target` passages (kept between runs)."""
    from pgvector.psycopg import register_vector

    url = database_url(server_url, name)
    if database_exists(admin, name):
        if passages(url) >= target:
            return url
        admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(source)))
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    pool = text_pool()
    with psycopg.connect(url) as conn:
        register_vector(conn)
        centres = np.array(
            [v.to_numpy() for (v,) in conn.execute("SELECT embedding FROM chunk_embeddings WHERE model = %s", [MODEL])],
            dtype=np.float32,
        )
        missing = target - len(centres)
        print(
            f"filling {name}: {missing} passages of real text with vectors clustered around {len(centres)} real ones",
            flush=True,
        )
        started = time.perf_counter()
        hnsw = conn.execute("SELECT hq_embedding_index_name(%s)", [MODEL]).fetchone()[0]  # type: ignore[index]
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(hnsw)))
        conn.execute("DROP INDEX IF EXISTS knowledge_chunks_bm25_idx")
        docs: list[tuple[uuid.UUID, str, list[str]]] = []
        while missing > 0:
            parts = [pick.choice(pool)[1] for _ in range(min(missing, pick.randint(1, 5)))]
            title = pick.choice(pool)[0] or f"Note {len(docs)}"
            docs.append((uuid.uuid4(), title[:200], parts))
            missing -= len(parts)
        with conn.cursor().copy(
            "COPY documents (id, title, content_format, content_text, metadata) FROM STDIN"
        ) as copy:
            for doc_id, title, parts in docs:
                copy.write_row((doc_id, title, "markdown", "\n\n".join(parts), '{"bench": "filler"}'))
        conn.execute(
            "UPDATE documents SET embedding_status = 'indexed', extracted_text = content_text,"
            " embedding_model = %s, embedding_dims = %s, embedded_at = now()"
            " WHERE metadata->>'bench' = 'filler'",
            [MODEL, DIMS],
        )
        with conn.cursor().copy(
            "COPY knowledge_chunks (document_id, chunk_index, content, indexed_text, content_hash) FROM STDIN"
        ) as copy:
            for doc_id, title, parts in docs:
                for i, part in enumerate(parts):
                    indexed = f"{title}\n\n{part}"
                    copy.write_row((doc_id, i, part, indexed, hashlib.sha256(indexed.encode()).hexdigest()))
        ids = conn.execute(
            "SELECT c.id, c.content_hash FROM knowledge_chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE d.metadata->>'bench' = 'filler' ORDER BY c.id"
        ).fetchall()
        with conn.cursor().copy(
            "COPY chunk_embeddings (chunk_id, model, embedding, content_hash) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "text", "vector", "text"])
            for start in range(0, len(ids), 10_000):
                batch = ids[start : start + 10_000]
                near = centres[rng.integers(0, len(centres), len(batch))]
                sigma = rng.uniform(0.015, 0.045, (len(batch), 1)).astype(np.float32)
                vectors = near + rng.normal(0, 1, near.shape).astype(np.float32) * sigma
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                for (chunk_id, digest), vector in zip(batch, vectors, strict=True):
                    copy.write_row((chunk_id, MODEL, vector, digest))
        conn.commit()
        print(f"  rows written in {time.perf_counter() - started:.0f} s", flush=True)
        conn.autocommit = True
        conn.execute("SET maintenance_work_mem = '2GB'")
        started = time.perf_counter()
        conn.execute("SELECT hq_ensure_embedding_index(%s)", [MODEL])
        print(f"  HNSW index built in {time.perf_counter() - started:.0f} s", flush=True)
        if conn.execute("SELECT 1 FROM pg_am WHERE amname = 'bm25'").fetchone():
            started = time.perf_counter()
            conn.execute(BM25_INDEX)
            print(f"  BM25 index built in {time.perf_counter() - started:.0f} s", flush=True)
        conn.execute("VACUUM ANALYZE")
    return url


def tag_fractions(url: str, seed: int = 11) -> dict[str, int]:
    """Give each filter tag to random documents until they hold its share of the passages;
    returns the passages each tag holds."""
    held = {}
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE documents SET tags = array(SELECT t FROM unnest(tags) t WHERE t NOT LIKE 'bench:%%')"
            " WHERE tags && %s",
            [[tag for tag, _ in FILTER_TAGS.values()]],
        )
        counts = conn.execute(
            "SELECT document_id, count(*) FROM knowledge_chunks GROUP BY document_id ORDER BY document_id"
        ).fetchall()
        total = sum(n for _, n in counts)
        for tag, share in FILTER_TAGS.values():
            order = counts[:]
            random.Random(f"{seed}{tag}").shuffle(order)
            chosen, n = [], 0
            for doc_id, k in order:
                if n >= share * total:
                    break
                chosen.append(doc_id)
                n += k
            conn.execute("UPDATE documents SET tags = tags || %s::text WHERE id = ANY(%s)", [tag, chosen])
            held[tag] = n
        conn.execute("ANALYZE documents")
    return held


class ExactSearch:
    """Exact cosine search over every stored vector, items ranked by their best passage."""

    def __init__(self, url: str) -> None:
        from pgvector.psycopg import register_vector

        with psycopg.connect(url) as conn:
            register_vector(conn)
            rows = conn.execute(
                "SELECT coalesce(c.document_id, c.asset_id), coalesce(d.tags, a.tags), e.embedding"
                " FROM chunk_embeddings e JOIN knowledge_chunks c ON c.id = e.chunk_id"
                " LEFT JOIN documents d ON d.id = c.document_id LEFT JOIN assets a ON a.id = c.asset_id"
                " WHERE e.model = %s AND d.archived_at IS NULL AND a.archived_at IS NULL",
                [MODEL],
            ).fetchall()
        self.items = np.array([str(r[0]) for r in rows])
        self.tags = [set(r[1]) for r in rows]
        self.matrix = np.stack([r[2].to_numpy() for r in rows]).astype(np.float32)

    def top_items(self, qv: np.ndarray[Any, Any], k: int, tag: str | None = None) -> list[str]:
        sims = self.matrix @ qv
        if tag is not None:
            sims = np.where([tag in t for t in self.tags], sims, -np.inf)
        found: list[str] = []
        for j in np.argsort(-sims):
            if not np.isfinite(sims[j]):
                break
            if self.items[j] not in found:
                found.append(str(self.items[j]))
                if len(found) == k:
                    break
        return found


def percentiles(samples: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2)}


def run_requests(
    base: str,
    queries: list[str],
    params: dict[str, Any],
    clients: int,
    embed_ms: list[float] | None = None,
    paths: set[str] | None = None,
) -> tuple[list[float], list[float]]:
    """Each query once, spread over `clients` keep-alive connections; client and server ms
    (the server's took_ms), into `embed_ms` the server's query-embedding ms and into `paths`
    the keyword paths the responses report."""
    client_ms: list[float] = []
    server_ms: list[float] = []
    lock = threading.Lock()

    # The standard library's HTTP client: httpx takes ~2 ms a request more on this machine
    # (building and parsing on its side), which is not the service's time.
    address = urllib.parse.urlsplit(base)

    def worker(share: list[str]) -> None:
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=60)
        try:
            for text in share:
                path = "/search?" + urllib.parse.urlencode({"q": text, **params})
                started = time.perf_counter()
                connection.request("GET", path)
                response = connection.getresponse()
                data = response.read()
                took = (time.perf_counter() - started) * 1000
                if response.status != 200:
                    raise SystemExit(f"/search answered {response.status}: {data[:300]!r}")
                body = json.loads(data)
                with lock:
                    client_ms.append(took)
                    server_ms.append(body["took_ms"])
                    if embed_ms is not None:
                        embed_ms.append(body["embed_ms"])
                    if paths is not None:
                        paths.add(body["keyword_path"])
        finally:
            connection.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, [queries[i::clients] for i in range(clients)]))
    return client_ms, server_ms


def check_filter(base: str, queries: list[str], tag: str, limit: int = 10) -> str:
    """Does every filtered hybrid search return the full limit, every hit holding the tag?"""
    with httpx.Client(base_url=base, timeout=60) as client:
        for text in queries:
            hits = client.get("/search", params={"q": text, "limit": limit, "tags_any": tag}).json()["hits"]
            if len(hits) != limit or any(tag not in h["tags"] for h in hits):
                return f"NO: {len(hits)} hits for {text!r}, {sum(tag in h['tags'] for h in hits)} with {tag}"
    return f"yes ({len(queries)} queries: {limit} hits each, all tagged {tag})"


def semantic_recall(base: str, exact: ExactSearch, queries: list[str], tag: str | None) -> float:
    from embeddings.onnx import load_query_embedder

    embedder = load_query_embedder(MODEL)
    recalls = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for text in queries:
            params: dict[str, Any] = {"q": text, "mode": "semantic", "limit": 10}
            if tag:
                params["tags_any"] = tag
            got = [h["id"] for h in client.get("/search", params=params).json()["hits"]]
            want = exact.top_items(embedder.embed_query(text), 10, tag)
            recalls.append(len(set(got) & set(want)) / len(want) if want else 1.0)
    return round(float(np.mean(recalls)), 4)


def hnsw_settings(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        from knowledge.db.pools import configure_for_search

        configure_for_search(conn)
        options = conn.execute(
            "SELECT c.reloptions FROM pg_class c WHERE c.relname = hq_embedding_index_name(%s)", [MODEL]
        ).fetchone()
        settings: dict[str, Any] = {"index": dict(o.split("=", 1) for o in (options[0] or [])) if options else None}
        for name in ("hnsw.ef_search", "hnsw.iterative_scan", "hnsw.max_scan_tuples"):
            settings[name] = conn.execute("SELECT current_setting(%s, true)", [name]).fetchone()[0]  # type: ignore[index]
        # What a search sets for the active model's index size (the connection's default above).
        from knowledge.search.setup import search_setup

        setup = search_setup(conn)
        settings["hnsw.ef_search"] = str(setup.ef_search)
        settings["exact_scan_below"] = setup.exact_below
        settings["server"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings["pgvector"] = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[
            0
        ]  # type: ignore[index]
    return settings


def embedding_alone(queries: list[str]) -> dict[str, float]:
    """p50/p95 ms of embedding each query with the service's ONNX model, no cache, in this
    process: how fast this machine is at the part of a search that is not the database's."""
    from embeddings.onnx import OnnxEmbedder

    embedder = OnnxEmbedder(cache_size=0)
    embedder.load()
    for text in queries[:20]:
        embedder.embed([text])
    samples = []
    for text in queries:
        started = time.perf_counter()
        embedder.embed([text])
        samples.append((time.perf_counter() - started) * 1000)
    p50, p95 = np.percentile(samples, [50, 95])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}


def warmup_queries(n: int, measured: str) -> list[str]:
    """`n` queries of the collections in the datasets folder other than `measured`."""
    found: list[str] = []
    for dataset in sorted(p for p in DATASETS.iterdir() if (p / "queries.jsonl").is_file()):
        if dataset.name != measured:
            found += [t[:1000] for t in read_queries(dataset).values()]
    return found[:n] or ["warm up"]


def legs_alone(
    url: str, queries: list[str], indexes: tuple[str, ...] = ("pg_textsearch",), warmup: Sequence[str] = ()
) -> dict[str, dict[str, float]]:
    """p50/p99 ms of each leg's index scan by itself, as a search runs it unfiltered for a
    first page of 10 hits (HNSW at the ef_search the service uses for this size), from a client
    in this process over the socket, each query once: the part of a hybrid search that no
    statement around the legs can make faster. With `sql` in `indexes`, the SQL keyword
    index's top-k too (hq_sql_bm25_top, as many as the BM25 index's), its pages warmed up
    first with the `warmup` queries as the service's warm-up does for the others."""
    from embeddings.onnx import load_query_embedder
    from knowledge.db.pools import configure_for_search
    from knowledge.search import bm25_quota, passage_quota
    from knowledge.search.setup import search_setup

    embedder = load_query_embedder(MODEL)
    vectors = [embedder.embed_query(text) for text in queries]
    n = passage_quota(10, 0)  # a first page of 10 hits
    kn = bm25_quota(n, False)
    hnsw_name, bm25_name, sql_name = f"hnsw_top{n}", f"bm25_top{kn}", f"sql_bm25_top{kn}"
    timings: dict[str, list[float]] = {hnsw_name: [], bm25_name: []}
    if "sql" in indexes:
        timings[sql_name] = []
    with psycopg.connect(url, autocommit=True) as conn:
        configure_for_search(conn)
        conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(search_setup(conn).ef_search)))
        hnsw = sql.SQL(
            "SELECT chunk_id FROM chunk_embeddings WHERE model = {} ORDER BY embedding::vector({}) <=> %s LIMIT {}"
        ).format(sql.Literal(MODEL), sql.Literal(DIMS), sql.Literal(n))
        bm25 = sql.SQL(
            "SELECT id FROM knowledge_chunks ORDER BY indexed_text <@> to_bm25query(%s,"
            " 'knowledge_chunks_bm25_idx') LIMIT {}"
        ).format(sql.Literal(kn))
        sql_top = sql.SQL("SELECT id FROM hq_sql_bm25_top(%s, {})").format(sql.Literal(kn))
        if sql_name in timings:
            for text in warmup:
                conn.execute(sql_top, [text], prepare=False).fetchall()
        for text, vector in zip(queries, vectors, strict=True):
            for name, statement, value in (
                (hnsw_name, hnsw, vector),
                (bm25_name, bm25, text),
                (sql_name, sql_top, text),
            ):
                if name not in timings:
                    continue
                started = time.perf_counter()
                conn.execute(statement, [value], prepare=False).fetchall()
                timings[name].append((time.perf_counter() - started) * 1000)
    return {
        name: {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}
        for name, ms in timings.items()
    }


def sql_keyword_index(url: str) -> dict[str, Any]:
    """Check that the SQL keyword index's tables count every passage (the triggers filled
    them as the passages were copied in) and vacuum its postings, so that their index-only
    scans skip the heap. Returns what was found; raises SystemExit when a count is off."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regprocedure('hq_sql_bm25_top(text, integer)')").fetchone() == (None,):
            raise SystemExit("this database has no SQL keyword index (migration 020): run `hq-knowledge db migrate`")
        row = conn.execute(
            "SELECT (SELECT sum(passages) FROM bm25_corpus), (SELECT count(*) FROM knowledge_chunks)"
        ).fetchone()
        assert row is not None
        counted, held = int(row[0] or 0), int(row[1])
        if counted != held:
            raise SystemExit(f"bm25_corpus counts {counted} passages, knowledge_chunks holds {held}")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE bm25_postings")
        took = time.perf_counter() - started
        found = conn.execute(
            "SELECT (SELECT count(*) FROM bm25_postings), pg_total_relation_size('bm25_postings'),"
            " (SELECT relallvisible::float8 / greatest(relpages, 1) FROM pg_class"
            "   WHERE oid = 'bm25_postings'::regclass)"
        ).fetchone()
        assert found is not None
    info = {
        "passages": counted,
        "postings": int(found[0]),
        "size_mb": round(found[1] / 2**20, 1),
        "all_visible": round(float(found[2]), 3),
        "vacuum_s": round(took, 1),
    }
    print(f"SQL keyword index: {json.dumps(info)}", flush=True)
    return info


def sql_leg_plan(url: str, query: str) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL leg alone for `query`, as legs_alone runs it."""
    from knowledge.search import bm25_quota, passage_quota

    kn = bm25_quota(passage_quota(10, 0), False)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, BUFFERS) SELECT id FROM hq_sql_bm25_top(%s, {})").format(sql.Literal(kn)),
            [query],
            prepare=False,
        ).fetchall()
    return [r[0] for r in rows]


def request_rows(
    base: str,
    size: int,
    by_mode: dict[str, list[str]],
    modes: tuple[str, ...],
    expect: str,
    recall: dict[str | None, float],
) -> list[dict[str, Any]]:
    """The measured rows of one service: each mode, 1 and 8 clients, without and with the 1%
    filter. Raises SystemExit when a response reports another keyword path than `expect`."""
    rows: list[dict[str, Any]] = []
    for filter_label, extra in (("none", {}), ("tag 1%", {"tags_any": FILTER_TAGS["1%"][0]})):
        for mode in modes:
            for clients in (1, 8):
                use = by_mode[mode]
                started = time.perf_counter()
                embed_ms: list[float] = []
                paths: set[str] = set()
                client_ms, server_ms = run_requests(base, use, {"mode": mode, **extra}, clients, embed_ms, paths)
                wall = time.perf_counter() - started
                if paths != {expect}:
                    raise SystemExit(
                        f"{mode} {clients} client(s) filter {filter_label}: the responses report"
                        f" keyword path(s) {sorted(paths)}, not {expect!r}"
                    )
                row = {
                    "passages": size,
                    "mode": mode,
                    "clients": clients,
                    "filter": filter_label,
                    "keyword_path": expect,
                    **percentiles(client_ms),
                    "recall@10": recall[None if filter_label == "none" else "1%"] if mode == "semantic" else None,
                    "server_p50_ms": round(float(np.median(server_ms)), 2),
                    # of the server's time: embedding the query, and the rest (the
                    # statement, its planning and the assembly of the hits)
                    "embed_p50_ms": round(float(np.median(embed_ms)), 2),
                    "statement_p50_ms": round(float(np.median(np.subtract(server_ms, embed_ms))), 2),
                    "requests": len(use),
                    "per_second": round(len(use) / wall, 1),
                }
                rows.append(row)
                print(
                    f"  {mode:8} {expect:10} {clients} client(s) filter {filter_label:6}: p50 {row['p50_ms']:6.1f}  "
                    f"p95 {row['p95_ms']:6.1f}  p99 {row['p99_ms']:6.1f} ms  "
                    f"({row['per_second']} req/s)",
                    flush=True,
                )
    return rows


def beside(rows: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with each row of `extra` right after the row of the same size, mode, clients
    and filter (at the end when there is none)."""
    out = list(rows)
    for row in extra:
        key = (row["passages"], row["mode"], row["clients"], row["filter"])
        at = max(
            (i for i, r in enumerate(out) if (r["passages"], r["mode"], r["clients"], r["filter"]) == key),
            default=len(out) - 1,
        )
        out.insert(at + 1, row)
    return out


def measure(
    url: str,
    size: int,
    dataset: str,
    queries: list[str],
    requests: int,
    log: Path,
    indexes: tuple[str, ...],
    sql_rows: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of one size, and what else was measured there: each leg alone and, with `sql`
    in `indexes`, the SQL keyword index's state. The service's keyword path is pg_textsearch's
    when `indexes` names it, else the SQL index's; `sql_rows`: then measure keyword and hybrid
    again with HQ_KEYWORD_INDEX=sql."""
    held = tag_fractions(url)
    print(f"\n## {size} passages: tags {', '.join(f'{t} on {n} passages' for t, n in held.items())}", flush=True)
    print(f"HNSW: {json.dumps(hnsw_settings(url))}", flush=True)
    extra: dict[str, Any] = {}
    if "sql" in indexes:
        extra["sql_keyword_index"] = sql_keyword_index(url)

    # Each mode gets queries no search has seen yet in this run (its 1-client unfiltered row
    # is the first to send them), and the leg timings and recall their own: a query sent
    # again finds its index pages in the CPU caches and its BM25 terms looked up, and runs
    # up to ~25% faster than a new one. Wrapped around when the collection has too few.
    def pick(start: int, n: int) -> list[str]:
        return [queries[(start + i) % len(queries)] for i in range(n)]

    by_mode = {mode: pick(i * requests, requests) for i, mode in enumerate(("hybrid", "semantic", "keyword"))}
    recall_queries = pick(3 * requests, 200)
    warmup = warmup_queries(300, dataset)
    exact = ExactSearch(url)
    rows: list[dict[str, Any]] = []
    choice = "pg_textsearch" if "pg_textsearch" in indexes else "sql"
    env = {**os.environ, "HQ_DATABASE_URL": url, "HQ_QUERY_CACHE": "0", "HQ_KEYWORD_INDEX": choice}
    with running_service(env, log) as base:
        # Warm-up with other collections' queries: connections, the service's caches, and the
        # index pages into shared buffers, as in a service that has been running a while.
        run_requests(base, warmup, {"mode": "hybrid"}, 1)
        legs = legs_alone(url, recall_queries, indexes, warmup)
        print(f"each leg's index scan alone: {json.dumps(legs)}", flush=True)
        recall: dict[str | None, float] = {None: semantic_recall(base, exact, recall_queries, None)}
        for label, (tag, _) in FILTER_TAGS.items():
            recall[label] = semantic_recall(base, exact, recall_queries, tag)
            print(f"{label} filter, full limit and all matching: {check_filter(base, recall_queries, tag)}", flush=True)
        for label in ("5%",):
            rows.append(
                {
                    "passages": size,
                    "mode": "semantic",
                    "clients": 1,
                    "filter": f"tag {label}",
                    "keyword_path": None,
                    "p50_ms": None,
                    "p95_ms": None,
                    "p99_ms": None,
                    "recall@10": recall[label],
                }
            )
        rows += request_rows(base, size, by_mode, ("hybrid", "semantic", "keyword"), KEYWORD_PATHS[choice], recall)
    if "sql" in indexes:
        extra["sql_leg_plan"] = sql_leg_plan(url, recall_queries[0])
        print(
            "the SQL leg's plan, first query: "
            + "; ".join(
                line.strip()
                for line in extra["sql_leg_plan"]
                if "Heap Fetches" in line or "Execution" in line or "Planning" in line
            ),
            flush=True,
        )
    if sql_rows:
        # The same database and queries, the service restarted to search with the SQL index.
        print(f"restarting the service with HQ_KEYWORD_INDEX=sql ({size} passages)", flush=True)
        with running_service(env | {"HQ_KEYWORD_INDEX": "sql"}, log) as base:
            run_requests(base, warmup, {"mode": "hybrid"}, 1)
            rows = beside(rows, request_rows(base, size, by_mode, ("hybrid", "keyword"), "sql-bm25", recall))
    extra["legs"] = legs
    return rows, extra


def ratios(rows: list[dict[str, Any]], legs: dict[int, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """SQL keyword index p50 / pg_textsearch p50: over HTTP (1 client, no filter, per mode)
    and each top-k alone, per size where both were measured; `pass` against SQL_BOUND for
    keyword search and the legs."""
    found: dict[str, Any] = {}
    for size, leg in legs.items():
        at: dict[str, Any] = {}
        names = {name.split("_top")[0]: name for name in leg}
        if "sql_bm25" in names and "bm25" in names:
            a, b = leg[names["sql_bm25"]]["p50_ms"], leg[names["bm25"]]["p50_ms"]
            at["leg"] = {"sql_ms": a, "pg_textsearch_ms": b, "ratio": round(a / b, 2), "pass": a / b <= SQL_BOUND}
        for mode in ("keyword", "hybrid"):
            p50 = {
                r["keyword_path"]: r["p50_ms"]
                for r in rows
                if r["passages"] == size and r["mode"] == mode and r["clients"] == 1 and r["filter"] == "none"
            }
            if "sql-bm25" in p50 and "bm25" in p50:
                a, b = p50["sql-bm25"], p50["bm25"]
                at[f"{mode}_http"] = {"sql_ms": a, "pg_textsearch_ms": b, "ratio": round(a / b, 2)}
                if mode == "keyword":
                    at[f"{mode}_http"]["pass"] = a / b <= SQL_BOUND
        if at:
            found[str(size)] = at
    return found


# What a hybrid search may take over its parts (embedding, HNSW leg, BM25 leg) timed alone:
# fusion, the page's passages and snippets, HTTP.
PARTS_SLACK_MS = 4.0


def sum_of_parts(
    rows: list[dict[str, Any]], legs: dict[int, dict[str, dict[str, float]]], embedding: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per size: the hybrid p50 over HTTP (1 client, no filter, the first keyword path
    measured) against query embedding + HNSW leg + BM25 leg p50s alone + PARTS_SLACK_MS."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if (r["mode"], r["clients"], r["filter"]) != ("hybrid", 1, "none") or str(r["passages"]) in out:
            continue
        leg = legs[r["passages"]]
        hnsw = next(v["p50_ms"] for k, v in leg.items() if k.startswith("hnsw_"))
        bm25 = next(
            v["p50_ms"] for k, v in leg.items() if k.startswith("bm25_" if r["keyword_path"] == "bm25" else "sql_bm25_")
        )
        bound = embedding["p50_ms"] + hnsw + bm25 + PARTS_SLACK_MS
        out[str(r["passages"])] = {
            "hybrid_p50_ms": r["p50_ms"],
            "embedding_ms": embedding["p50_ms"],
            "hnsw_ms": hnsw,
            "bm25_ms": bm25,
            "bound_ms": round(bound, 2),
            "pass": r["p50_ms"] <= bound,
        }
    return out


def main() -> None:
    parser = collection_parser(__doc__)
    parser.add_argument("--passages", type=int, default=100_000, help="the large size (default 100000)")
    parser.add_argument("--requests", type=int, default=300, help="requests per measured row")
    parser.add_argument("--skip-collection-size", action="store_true", help="measure the large size only")
    parser.add_argument(
        "--keyword-indexes",
        default="pg_textsearch,sql",
        help="keyword paths measured, comma-separated: pg_textsearch, sql (see the docstring)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latency.json")
    args = parser.parse_args()
    indexes = tuple(dict.fromkeys(name.strip() for name in args.keyword_indexes.split(",") if name.strip()))
    if not indexes or any(name not in KEYWORD_PATHS for name in indexes):
        parser.error(f"--keyword-indexes: pg_textsearch, sql or both, got {args.keyword_indexes!r}")

    from knowledge.db.embedded import EmbeddedPostgres

    queries = list(dict.fromkeys(t[:1000] for t in read_queries(DATASETS / args.dataset).values()))
    server = EmbeddedPostgres(args.data_dir / "pg")
    server_url = server.start()
    rows: list[dict[str, Any]] = []
    legs: dict[int, dict[str, dict[str, float]]] = {}
    sql_index: dict[int, Any] = {}
    started = time.perf_counter()
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            collection = load_collection(admin, server_url, f"lat_{args.dataset}", args.dataset)
            filled = fill(
                admin, server_url, f"lat_{args.dataset}", f"lat_{args.dataset}_{args.passages}", args.passages
            )
        sizes = [(collection, passages(collection))] if not args.skip_collection_size else []
        sizes.append((filled, passages(filled)))
        for url, size in sizes:
            measured, extra = measure(
                url,
                size,
                args.dataset,
                queries,
                args.requests,
                args.data_dir / "serve.log",
                indexes,
                len(indexes) == 2 and url == filled,
            )
            rows += measured
            legs[size] = extra.pop("legs")
            if extra:
                sql_index[size] = extra
    finally:
        server.stop()

    machine = common.machine()
    embedding = embedding_alone(queries[: args.requests])
    print(
        f"\nquery embedding alone (ONNX, no cache, same queries, this process): p50 {embedding['p50_ms']} ms,"
        f" p95 {embedding['p95_ms']} ms"
    )
    print(
        f"machine: {machine}; queries: {args.dataset}; latency measured by the client over HTTP, "
        "query embedding included (cache off)"
    )
    print("| passages | mode | keyword_path | clients | filter | p50 ms | p95 ms | p99 ms | recall@10 | req/s |")
    print("|---:|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:

        def ms(key: str, row: dict[str, Any] = r) -> str:
            return "" if row[key] is None else f"{row[key]:.1f}"

        recall = "" if r["recall@10"] is None else f"{r['recall@10']:.3f}"
        path = "" if r["mode"] == "semantic" else r["keyword_path"]  # a semantic search runs no keyword leg
        print(
            f"| {r['passages']} | {r['mode']} | {path} | {r['clients']} | {r['filter']} | {ms('p50_ms')} |"
            f" {ms('p95_ms')} | {ms('p99_ms')} | {recall} | {r.get('per_second', '')} |"
        )
    print(
        "\nWhere a search's time goes, one client, no filter (p50 ms): over HTTP; the server's took_ms;"
        " of it, embedding the query and the rest; each leg's index scan alone, as the search runs it"
    )
    leg_names = list(next(iter(legs.values())))  # hnsw_top<n>, bm25_top<k>[, sql_bm25_top<k>]
    print(
        "| passages | mode | keyword_path | HTTP | server | embedding | statement + hits |"
        + "".join(f" {name} alone |" for name in leg_names)
    )
    print("|---:|---|---|---:|---:|---:|---:|" + "---:|" * len(leg_names))
    for r in rows:
        if r["clients"] == 1 and r["filter"] == "none":
            leg = legs[r["passages"]]
            path = "" if r["mode"] == "semantic" else r["keyword_path"]
            print(
                f"| {r['passages']} | {r['mode']} | {path} | {r['p50_ms']:.1f} | {r['server_p50_ms']:.1f} |"
                f" {r['embed_p50_ms']:.1f} | {r['statement_p50_ms']:.1f} |"
                + "".join(f" {leg[name]['p50_ms']:.1f} |" for name in leg_names)
            )
    compared = ratios(rows, legs)
    if compared:
        print(
            f"\nSQL keyword index (sql-bm25) p50 / pg_textsearch (bm25) p50, bound {SQL_BOUND:g}x on keyword search"
            " and the top-k alone (1 client, no filter):"
        )
        for at_size, at in compared.items():
            for name, label in (
                ("keyword_http", "keyword search over HTTP"),
                ("leg", "top-k alone"),
                ("hybrid_http", "hybrid search over HTTP"),
            ):
                if name in at:
                    c = at[name]
                    verdict = ("PASS" if c["pass"] else "FAIL") if "pass" in c else "(information)"
                    print(
                        f"  {at_size} passages, {label}: {c['sql_ms']:.2f} / {c['pg_textsearch_ms']:.2f} ms"
                        f" = {c['ratio']:.2f}x {verdict}"
                    )
    parts = sum_of_parts(rows, legs, embedding)
    if parts:
        print(
            f"\nHybrid search over HTTP (1 client, no filter, {indexes[0]}) against the sum of its parts"
            f" measured alone (query embedding + HNSW leg + BM25 leg) + {PARTS_SLACK_MS:g} ms:"
        )
        for at_size, c in parts.items():
            print(
                f"  {at_size} passages: {c['hybrid_p50_ms']:.1f} ms against {c['embedding_ms']:.1f}"
                f" + {c['hnsw_ms']:.1f}"
                f" + {c['bm25_ms']:.1f} + {PARTS_SLACK_MS:g} = {c['bound_ms']:.1f} ms {'PASS' if c['pass'] else 'FAIL'}"
            )
    print(f"benchmark run: {time.perf_counter() - started:.0f} s")
    out = args.output
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "dataset": args.dataset,
                "query_embedding": embedding,
                "keyword_indexes": list(indexes),
                "legs_alone": {str(k): v for k, v in legs.items()},
                "rows": rows,
                "sql_vs_pg_textsearch": compared,
                "sum_of_parts": parts,
                "sql_keyword_index": {str(k): v for k, v in sql_index.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
