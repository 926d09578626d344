"""Retrieval quality of /search on a BEIR collection, next to reference systems.

    python benchmarks/quality.py [--dataset scifact] [--limit-docs N]

Each corpus entry becomes a markdown file (`# title` + text) imported through the real
import path and embedded by the real worker (all-MiniLM-L6-v2) into a throw-away embedded
PostgreSQL; the service runs as `hq-knowledge serve` and every test query goes through
GET /search over HTTP in keyword, semantic and hybrid mode. References on the same data in
the same run: bm25s (English stemming and stop words) and exact dense search (numpy over
the same model's passage embeddings, a document scored by its best passage).
Prints a markdown table; writes benchmarks/results/quality-<dataset>.json.
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
    idcg = sum((2 ** r - 1) / math.log2(i + 2) for i, r in enumerate(ideal))
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
    tokens = bm25s.tokenize([f"{t} {x}" for t, x in corpus.values()], stopwords="en", stemmer=stemmer,
                            show_progress=False)
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
            "SELECT d.source_path, e.embedding::text FROM chunk_embeddings e JOIN knowledge_chunks c ON c.id = e.chunk_id"
            " JOIN documents d ON d.id = c.document_id WHERE e.model = 'all-MiniLM-L6-v2'").fetchall()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--limit-docs", type=int, default=None, help="a smaller corpus (judged documents kept)")
    parser.add_argument("--database-url", default=None,
                        help="a database already holding this collection, imported and embedded (as "
                             "benchmarks/latency.py leaves it): skips the import and the embedding")
    args = parser.parse_args()
    corpus, queries, qrels = load(DATASETS / args.dataset, args.limit_docs)
    print(f"{args.dataset}: {len(corpus)} documents, {len(queries)} judged test queries", flush=True)

    from knowledge.embedded import EmbeddedPostgres
    from knowledge.importer import import_folder
    from knowledge.migrations import migrate

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.database_url:
            url = args.database_url
        else:
            server = EmbeddedPostgres(Path(tmp) / "db")
            url = server.start()
        env = {**os.environ, "HQ_DATABASE_URL": url}
        try:
            if server is not None:
                folder = Path(tmp) / args.dataset
                write_corpus_markdown(corpus, folder)
                with psycopg.connect(url, autocommit=True) as conn:
                    migrate(conn)
                    started = time.perf_counter()
                    imported = import_folder(conn, folder)
                    print(f"imported {imported.created} documents in {time.perf_counter() - started:.0f} s",
                          flush=True)
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "knowledge", "worker", "--once"], env=env, check=True)
                print(f"embedded in {time.perf_counter() - started:.0f} s", flush=True)

            with running_service(env, Path(tmp) / "serve.log") as base, \
                    httpx.Client(base_url=base, timeout=60) as client:
                for mode in ("keyword", "semantic", "hybrid"):
                    runs, took = {}, []
                    for qid, text in queries.items():
                        r = client.get("/search", params={"q": text[:1000], "mode": mode, "limit": 100})
                        r.raise_for_status()
                        body = r.json()
                        took.append(body["took_ms"])
                        runs[qid] = [Path(h["source_path"]).stem for h in body["hits"]]
                    rows.append({"system": mode, **score(runs, qrels), "p50_ms": float(np.median(took))})
                    print(f"{mode}: done", flush=True)
            rows.append({"system": "exact-dense", **score(dense_runs(url, queries), qrels)})
        finally:
            if server is not None:
                server.stop()
    rows.append({"system": "bm25s", **score(bm25s_runs(corpus, queries), qrels)})

    machine = common.machine()
    print(f"\nmachine: {machine}; dataset {args.dataset}: {len(corpus)} documents, {len(queries)} queries")
    print("| system | nDCG@10 | recall@10 | recall@100 | server ms p50 |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        ms = f"{row['p50_ms']:.1f}" if "p50_ms" in row else ""
        print(f"| {row['system']} | {row['ndcg@10']:.3f} | {row['recall@10']:.3f} | {row['recall@100']:.3f} | {ms} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"quality-{args.dataset}.json"
    out.write_text(json.dumps({"dataset": args.dataset, "documents": len(corpus), "queries": len(queries),
                               "machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
