"""Retrieval quality of /search on a BEIR collection, next to reference systems.

    python benchmarks/quality.py [--dataset scifact] [--limit-docs N] [--keyword-index sql]

Each corpus entry becomes a markdown file (`# title` + text) imported through the real
import path and embedded by the real worker (all-MiniLM-L6-v2) into a throw-away embedded
PostgreSQL; the service runs as `hq-knowledge serve` and every test query goes through
GET /search over HTTP in keyword, semantic and hybrid mode. References on the same data in
the same run: bm25s (English stemming and stop words) and exact dense search (numpy over
the same model's passage embeddings, a document scored by its best passage).

--keyword-index compares the keyword paths (knowledge.db.keyword_index). `pg_textsearch`: the
rows above with HQ_KEYWORD_INDEX=pg_textsearch, every response checked to report keyword
path `bm25`. `sql`: bm25s, and the keyword and hybrid rows of each path: `bm25` on that
server; `sql-bm25` on a second embedded server started without pg_textsearch (migrated,
filled by copying the passages and their vectors from the first: its triggers fill the BM25
tables, its HNSW index is built again); `ts_rank_cd` on that second server once
hq_sql_bm25_top is dropped. Every row checks that each response reports the path it names,
and the run checks the issue's bounds: |sql-bm25 keyword - bm25s| and |sql-bm25 hybrid -
bm25 hybrid| in nDCG@10. `all`: both, with the semantic rows of both servers, exact dense
search, and `sql-bm25` chosen by HQ_KEYWORD_INDEX=sql on the server with pg_textsearch.
Without the option, the rows above with the keyword path the service chooses (reported).

Prints a markdown table; writes benchmarks/results/quality-<dataset>.json (a `sql` run
keeps the rows of the file's earlier run that it does not measure again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import httpx
import numpy as np
import psycopg
from common import (
    DATASETS,
    RESULTS,
    Corpus,
    Qrels,
    read_corpus,
    read_qrels,
    read_queries,
    running_service,
    write_corpus_markdown,
)
from psycopg import sql

Runs = dict[str, list[str]]

# The issue's bounds on nDCG@10 for the SQL keyword index.
SQL_KEYWORD_VS_BM25S = 0.01
SQL_HYBRID_VS_PG_TEXTSEARCH = 0.005
# What a server without pg_textsearch is filled with, in this order (foreign keys).
COPIED = ("document_folders", "documents", "knowledge_chunks", "chunk_embeddings")


def load(dataset: Path, limit_docs: int | None) -> tuple[Corpus, dict[str, str], Qrels]:
    corpus, qrels = read_corpus(dataset), read_qrels(dataset)
    if limit_docs:  # keep every judged document, fill up with others
        keep = {d for rel in qrels.values() for d in rel} | set(list(corpus)[:limit_docs])
        corpus = {k: v for k, v in corpus.items() if k in keep}
    queries = {qid: text for qid, text in read_queries(dataset).items() if qid in qrels}
    return corpus, queries, qrels


def ndcg_at(ranked: list[str], rel: dict[str, int], k: int = 10) -> float:
    dcg = sum((2 ** rel.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum((2**r - 1) / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], rel: dict[str, int], k: int) -> float:
    return len(set(ranked[:k]) & set(rel)) / len(rel) if rel else 0.0


def score(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    qids = [q for q in qrels if q in runs]
    return {
        "ndcg@10": float(np.mean([ndcg_at(runs[q], qrels[q]) for q in qids])),
        "recall@10": float(np.mean([recall_at(runs[q], qrels[q], 10) for q in qids])),
        "recall@100": float(np.mean([recall_at(runs[q], qrels[q], 100) for q in qids])),
    }


def bm25s_runs(corpus: dict[str, tuple[str, str]], queries: dict[str, str]) -> dict[str, list[str]]:
    import bm25s
    import Stemmer

    ids = list(corpus)
    stemmer = Stemmer.Stemmer("english")
    tokens = bm25s.tokenize(
        [f"{t} {x}" for t, x in corpus.values()], stopwords="en", stemmer=stemmer, show_progress=False
    )
    model = bm25s.BM25()
    model.index(tokens, show_progress=False)
    qids = list(queries)
    qtokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    docs, _ = model.retrieve(qtokens, k=min(100, len(ids)), show_progress=False)
    return {q: [ids[i] for i in docs[n]] for n, q in enumerate(qids)}


def dense_runs(url: str, queries: dict[str, str]) -> dict[str, list[str]]:
    from embeddings.model import SentenceTransformerEmbedder

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT d.source_path, e.embedding::text FROM chunk_embeddings e"
            " JOIN knowledge_chunks c ON c.id = e.chunk_id"
            " JOIN documents d ON d.id = c.document_id WHERE e.model = 'all-MiniLM-L6-v2'"
        ).fetchall()
    owners = [Path(r[0]).stem for r in rows]
    matrix = np.array([json.loads(r[1]) for r in rows], dtype=np.float32)
    model = SentenceTransformerEmbedder()
    qids = list(queries)
    qv = model.embed([queries[q] for q in qids])
    sims = qv @ matrix.T
    runs = {}
    for n, q in enumerate(qids):
        best: dict[str, float] = {}
        for j in np.argsort(-sims[n])[:1000]:
            best.setdefault(owners[j], float(sims[n, j]))
        runs[q] = sorted(best, key=lambda d: -best[d])[:100]
    return runs


def service_rows(
    env: dict[str, str],
    log: Path,
    systems: list[tuple[str, str]],
    queries: dict[str, str],
    qrels: Qrels,
    expect: str | None,
    server: str,
    runs_out: dict[str, Runs],
) -> list[dict[str, Any]]:
    """One row per (system name, mode) from a service started with `env`: every query over
    HTTP. Raises SystemExit when a response reports another keyword path than `expect`
    (None: any, the same for every response of the row). Each row's runs go to `runs_out`."""
    rows: list[dict[str, Any]] = []
    with running_service(env, log) as base, httpx.Client(base_url=base, timeout=60) as client:
        for system, mode in systems:
            runs, took, paths = {}, [], set()
            for qid, text in queries.items():
                r = client.get("/search", params={"q": text[:1000], "mode": mode, "limit": 100})
                r.raise_for_status()
                body = r.json()
                took.append(body["took_ms"])
                paths.add(body["keyword_path"])
                if expect is not None and body["keyword_path"] != expect:
                    raise SystemExit(
                        f"{system}: the service searched with keyword path "
                        f"{body['keyword_path']!r}, not {expect!r} (query {qid})"
                    )
                runs[qid] = [Path(h["source_path"]).stem for h in body["hits"]]
            if len(paths) != 1:
                raise SystemExit(f"{system}: responses reported several keyword paths: {sorted(paths)}")
            rows.append(
                {
                    "system": system,
                    "keyword_path": paths.pop(),
                    "server": server,
                    **score(runs, qrels),
                    "p50_ms": float(np.median(took)),
                }
            )
            runs_out[system] = runs
            print(f"{system}: done (keyword path {rows[-1]['keyword_path']})", flush=True)
    return rows


def copy_search_rows(source: str, target: str) -> dict[str, int]:
    """Copy the passages, their documents and folders, and their vectors from database
    `source` into `target` (migrated, empty), without their generated columns, in one
    transaction: `target`'s triggers fill its BM25 tables as the passages arrive. The
    documents keep their embedding status (the trigger that re-queues new documents is off
    meanwhile). Returns the rows copied per table."""
    copied: dict[str, int] = {}
    with psycopg.connect(source) as src, psycopg.connect(target) as dst:
        dst.execute("ALTER TABLE documents DISABLE TRIGGER documents_requeue_embedding")
        for table in COPIED:
            names = [
                r[0]
                for r in src.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                    " AND table_name = %s AND is_generated = 'NEVER' ORDER BY ordinal_position",
                    [table],
                )
            ]
            columns = sql.SQL(", ").join(map(sql.Identifier, names))
            with (
                src.cursor().copy(
                    sql.SQL("COPY {} ({}) TO STDOUT (FORMAT BINARY)").format(sql.Identifier(table), columns)
                ) as out,
                dst.cursor().copy(
                    sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(sql.Identifier(table), columns)
                ) as into,
            ):
                for block in out:
                    into.write(block)
            row = dst.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
            copied[table] = int(row[0]) if row else 0
        dst.execute("ALTER TABLE documents ENABLE TRIGGER documents_requeue_embedding")
        dst.execute(
            "SELECT setval(pg_get_serial_sequence('knowledge_chunks', 'id'),"
            " (SELECT coalesce(max(id), 1) FROM knowledge_chunks))"
        )
    return copied


def server_without_pg_textsearch(data_dir: Path, source: str) -> tuple[Any, str]:
    """An embedded server started without pg_textsearch, migrated and filled from database
    `source` (no re-embedding), its HNSW index built and its statistics gathered. Returns
    the server (the caller stops it) and its URL."""
    from knowledge.db.embedded import EmbeddedPostgres
    from knowledge.db.migrations import migrate

    server = EmbeddedPostgres(data_dir, preload=())
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_textsearch'").fetchone():
                raise SystemExit("the second server has pg_textsearch: it must run without it")
            models = [r[0] for r in conn.execute("SELECT name FROM embedding_models")]
            for model in models:  # built once after the copy, not row by row during it
                index = conn.execute("SELECT hq_embedding_index_name(%s)", [model]).fetchall()[0][0]
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index)))
        started = time.perf_counter()
        copied = copy_search_rows(source, url)
        print(f"server without pg_textsearch: copied {copied} in {time.perf_counter() - started:.0f} s", flush=True)
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute("SET maintenance_work_mem = '1GB'")
            for model in models:
                conn.execute("SELECT hq_ensure_embedding_index(%s)", [model])
            conn.execute("VACUUM ANALYZE")
            corpus = conn.execute(
                "SELECT sum(passages), (SELECT count(*) FROM knowledge_chunks),"
                " (SELECT count(*) FROM bm25_postings) FROM bm25_corpus"
            ).fetchone()
            assert corpus is not None
            print(
                f"  HNSW index built and VACUUM ANALYZE in {time.perf_counter() - started:.0f} s; BM25 tables:"
                f" {corpus[0]} passages counted of {corpus[1]}, {corpus[2]} postings",
                flush=True,
            )
            if corpus[0] != corpus[1]:
                raise SystemExit(f"bm25_corpus counts {corpus[0]} passages, knowledge_chunks holds {corpus[1]}")
    except BaseException:
        server.stop()
        raise
    return server, url


def with_keyword_choice(env: dict[str, str], choice: str | None) -> dict[str, str]:
    """`env` with HQ_KEYWORD_INDEX set to `choice` (None: unset, i.e. auto)."""
    env = {k: v for k, v in env.items() if k != "HQ_KEYWORD_INDEX"}
    return env | ({"HQ_KEYWORD_INDEX": choice} if choice else {})


def compare_paths(rows: list[dict[str, Any]], runs: dict[str, Runs], qrels: Qrels) -> dict[str, Any]:
    """The issue's two checks, and how often sql-bm25 ranks the first 10 as bm25 does."""
    ndcg = {r["system"]: r["ndcg@10"] for r in rows}
    keyword = abs(ndcg["keyword sql-bm25"] - ndcg["bm25s"])
    hybrid = abs(ndcg["hybrid sql-bm25"] - ndcg["hybrid"])
    same = {
        mode: sum(runs[mode][q][:10] == runs[f"{mode} sql-bm25"][q][:10] for q in qrels if q in runs[mode])
        for mode in ("keyword", "hybrid")
    }
    return {
        "sql_keyword_vs_bm25s": {
            "diff": keyword,
            "bound": SQL_KEYWORD_VS_BM25S,
            "pass": keyword <= SQL_KEYWORD_VS_BM25S,
        },
        "sql_hybrid_vs_pg_textsearch_hybrid": {
            "diff": hybrid,
            "bound": SQL_HYBRID_VS_PG_TEXTSEARCH,
            "pass": hybrid <= SQL_HYBRID_VS_PG_TEXTSEARCH,
        },
        "sql_keyword_vs_pg_textsearch_keyword": {"diff": abs(ndcg["keyword sql-bm25"] - ndcg["keyword"])},
        "same_top10_as_bm25": {mode: f"{n}/{len(runs[mode])}" for mode, n in same.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--limit-docs", type=int, default=None, help="a smaller corpus (judged documents kept)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a database already holding this collection, imported and embedded (as "
        "benchmarks/latency.py leaves it): skips the import and the embedding",
    )
    parser.add_argument(
        "--keyword-index",
        choices=("pg_textsearch", "sql", "all"),
        default=None,
        help="compare keyword paths (see the docstring); default: the service's own choice",
    )
    args = parser.parse_args()
    corpus, queries, qrels = load(DATASETS / args.dataset, args.limit_docs)
    print(f"{args.dataset}: {len(corpus)} documents, {len(queries)} judged test queries", flush=True)

    from knowledge.db.embedded import EmbeddedPostgres
    from knowledge.db.migrations import migrate
    from knowledge.store.importer import import_folder

    choice = args.keyword_index
    compare = choice in ("sql", "all")
    rows: list[dict[str, Any]] = []
    runs: dict[str, Runs] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = plain = None
        if args.database_url:
            url = args.database_url
        else:
            server = EmbeddedPostgres(Path(tmp) / "db")
            url = server.start()
        env = {**os.environ, "HQ_DATABASE_URL": url}
        log = Path(tmp) / "serve.log"
        try:
            if server is not None:
                folder = Path(tmp) / args.dataset
                write_corpus_markdown(corpus, folder)
                with psycopg.connect(url, autocommit=True) as conn:
                    migrate(conn)
                    started = time.perf_counter()
                    imported = import_folder(conn, folder)
                    print(f"imported {imported.created} documents in {time.perf_counter() - started:.0f} s", flush=True)
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "knowledge", "worker", "--once"], env=env, check=True)
                print(f"embedded in {time.perf_counter() - started:.0f} s", flush=True)
            if compare:  # both servers searched with fresh statistics, as the second one is
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("VACUUM ANALYZE")

            modes = ("keyword", "hybrid") if choice == "sql" else ("keyword", "semantic", "hybrid")
            main_env = with_keyword_choice(env, "pg_textsearch") if choice else env
            rows += service_rows(
                main_env,
                log,
                [(m, m) for m in modes],
                queries,
                qrels,
                "bm25" if choice else None,
                "pg_textsearch" if choice or server is not None else "--database-url",
                runs,
            )
            if choice == "all":
                rows += service_rows(
                    with_keyword_choice(env, "sql"),
                    log,
                    [(f"{m} sql-bm25 (HQ_KEYWORD_INDEX=sql)", m) for m in ("keyword", "hybrid")],
                    queries,
                    qrels,
                    "sql-bm25",
                    "pg_textsearch",
                    runs,
                )
            if choice != "sql":
                rows.append({"system": "exact-dense", **score(dense_runs(url, queries), qrels)})
            if compare:
                plain, plain_url = server_without_pg_textsearch(Path(tmp) / "db-plain", url)
                plain_env = with_keyword_choice({**env, "HQ_DATABASE_URL": plain_url}, None)
                systems = [("keyword sql-bm25", "keyword"), ("hybrid sql-bm25", "hybrid")]
                if choice == "all":
                    systems.insert(1, ("semantic (no pg_textsearch)", "semantic"))
                rows += service_rows(plain_env, log, systems, queries, qrels, "sql-bm25", "no pg_textsearch", runs)
                # Last: without hq_sql_bm25_top the keyword leg falls back to ts_rank_cd.
                with psycopg.connect(plain_url, autocommit=True) as conn:
                    conn.execute("DROP FUNCTION hq_sql_bm25_top(text, integer)")
                rows += service_rows(
                    plain_env,
                    log,
                    [(f"{m} ts_rank_cd", m) for m in ("keyword", "hybrid")],
                    queries,
                    qrels,
                    "ts_rank_cd",
                    "no pg_textsearch",
                    runs,
                )
        finally:
            if plain is not None:
                plain.stop()
            if server is not None:
                server.stop()
    runs["bm25s"] = bm25s_runs(corpus, queries)
    rows.append({"system": "bm25s", **score(runs["bm25s"], qrels)})
    report(args, corpus, queries, rows, compare_paths(rows, runs, qrels) if compare else None)


def report(
    args: argparse.Namespace,
    corpus: Corpus,
    queries: dict[str, str],
    rows: list[dict[str, Any]],
    checks: dict[str, Any] | None,
) -> None:
    """Print the table (and the checks), and write the JSON file."""
    machine = common.machine()
    print(f"\nmachine: {machine}; dataset {args.dataset}: {len(corpus)} documents, {len(queries)} queries")
    print("| system | keyword_path | server | nDCG@10 | recall@10 | recall@100 | server ms p50 |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        ms = f"{row['p50_ms']:.1f}" if "p50_ms" in row else ""
        print(
            f"| {row['system']} | {row.get('keyword_path', '')} | {row.get('server', '')} | {row['ndcg@10']:.3f} |"
            f" {row['recall@10']:.3f} | {row['recall@100']:.3f} | {ms} |"
        )
    if checks:
        for name, label in (
            ("sql_keyword_vs_bm25s", "|sql-bm25 keyword - bm25s| nDCG@10"),
            ("sql_hybrid_vs_pg_textsearch_hybrid", "|sql-bm25 hybrid - bm25 hybrid| nDCG@10"),
        ):
            c = checks[name]
            print(f"{label}: {c['diff']:.4f} (bound {c['bound']}): {'PASS' if c['pass'] else 'FAIL'}")
        print(
            f"|sql-bm25 keyword - bm25 keyword| nDCG@10: {checks['sql_keyword_vs_pg_textsearch_keyword']['diff']:.4f};"
            f" queries whose first 10 documents sql-bm25 ranks as bm25 does: {checks['same_top10_as_bm25']}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"quality-{args.dataset}.json"
    kept: list[dict[str, Any]] = []
    if args.keyword_index == "sql" and out.exists():  # the rows this run does not measure stay
        earlier = json.loads(out.read_text())
        if earlier.get("documents") == len(corpus) and earlier.get("queries") == len(queries):
            measured = {r["system"] for r in rows}
            kept = [r for r in earlier.get("rows", []) if r["system"] not in measured]
    document: dict[str, Any] = {
        "dataset": args.dataset,
        "documents": len(corpus),
        "queries": len(queries),
        "machine": machine,
        "rows": kept + rows,
    }
    if args.keyword_index:
        document["keyword_index"] = args.keyword_index
    if checks:
        document["checks"] = checks
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
