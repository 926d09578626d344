"""What the query side buys in ranking: ef_search and int8 query vectors judged by nDCG@10.

    python benchmarks/query_quality.py --database-url URL [--dataset scifact] [--ef 40,64,100,200] [--int8]

On a database holding a BEIR collection (imported by benchmarks/latency.py or quality.py:
each document's source_path is its corpus id; at 100k passages the rest is filler text that
no query is judged against), every test query of --dataset runs through the service's own
search statement (knowledge.search.search) in semantic and hybrid mode, for a first page of
10 hits, in this process:

  --ef     hnsw.ef_search values (the HNSW scan's candidate list): nDCG@10, recall@10 of the
           judged documents, and the statement's p50 time for each, with the query vectors
           of the service's ONNX model
  --int8   query vectors from the int8 export of the same model (dynamic quantization,
           OnnxEmbedder(quantized=True)) against the stored fp32 passage vectors, beside the
           fp32 query vectors, at the service's ef_search: nDCG@10 of both, the difference,
           and each embedder's p50 time per query (one query at a time, this CPU)

Prints markdown tables; writes benchmarks/results/query_quality-<dataset>-<passages>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import numpy as np
import psycopg
from common import DATASETS, RESULTS, read_qrels, read_queries
from psycopg import sql
from quality import ndcg_at, recall_at

MODES = ("semantic", "hybrid")


def fixed(vector: np.ndarray[Any, Any]) -> Callable[[str], np.ndarray[Any, Any]]:
    """An `embed_query` that answers `vector`, embedded beforehand, whatever the text."""
    return lambda _text: vector


def run(
    conn: psycopg.Connection[Any], queries: dict[str, str], vectors: dict[str, np.ndarray[Any, Any]], mode: str
) -> tuple[dict[str, list[str]], float]:
    """Each query's first page (corpus ids, best first) and the p50 ms of the search call."""
    from knowledge.search import SearchQuery, search
    from knowledge.search.setup import search_setup

    setup = search_setup(conn)
    runs: dict[str, list[str]] = {}
    took = []
    for qid, text in queries.items():
        query = SearchQuery(q=text[:1000], limit=10, mode=mode)
        started = time.perf_counter()
        result = search(
            conn,
            query,
            keyword_path=setup.keyword_path,
            model=setup.model,
            dims=setup.dims,
            embed_query=fixed(vectors[qid]),
            exact_below=setup.exact_below,
        )
        took.append((time.perf_counter() - started) * 1000)
        runs[qid] = [Path(h.source_path).stem for h in result.hits if h.source_path]
    return runs, float(np.median(took))


def scores(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    qids = [q for q in qrels if q in runs]
    return {
        "ndcg@10": round(float(np.mean([ndcg_at(runs[q], qrels[q]) for q in qids])), 4),
        "recall@10": round(float(np.mean([recall_at(runs[q], qrels[q], 10) for q in qids])), 4),
    }


def embed_all(embed: Any, queries: dict[str, str]) -> tuple[dict[str, np.ndarray[Any, Any]], float]:
    """Every query's vector and the p50 ms of embedding one query."""
    for text in list(queries.values())[:20]:  # warm-up
        embed.embed([text[:1000]])
    vectors, took = {}, []
    for qid, text in queries.items():
        started = time.perf_counter()
        vectors[qid] = embed.embed([text[:1000]])[0]
        took.append((time.perf_counter() - started) * 1000)
    return vectors, float(np.median(took))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--ef", default="", help="hnsw.ef_search values, comma-separated (e.g. 40,64,100,200)")
    parser.add_argument("--int8", action="store_true", help="int8 query vectors against fp32 passages")
    args = parser.parse_args()
    efs = [int(v) for v in args.ef.split(",") if v.strip()]
    if not efs and not args.int8:
        parser.error("nothing to measure: give --ef and/or --int8")

    from embeddings.onnx import OnnxEmbedder
    from knowledge.db.keyword_index import repair_bm25_index
    from knowledge.db.pools import configure_for_search
    from knowledge.search.setup import search_setup

    qrels = read_qrels(DATASETS / args.dataset)
    queries = {q: t for q, t in read_queries(DATASETS / args.dataset).items() if q in qrels}
    fp32 = OnnxEmbedder(query_batch=0)
    vectors, fp32_ms = embed_all(fp32, queries)
    out: dict[str, Any] = {"machine": common.machine(), "dataset": args.dataset, "queries": len(queries)}
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        configure_for_search(conn)
        repair_bm25_index(conn)  # pg_textsearch 1.0 forgets its statistics at a restart
        setup = search_setup(conn)
        passages = conn.execute("SELECT count(*) FROM knowledge_chunks").fetchone()[0]  # type: ignore[index]
        out |= {"passages": passages, "service_ef_search": setup.ef_search, "keyword_path": setup.keyword_path}
        print(
            f"\n{common.machine()}; {args.dataset}, {len(queries)} queries, {passages} passages, "
            f"keyword path {setup.keyword_path}, the service's ef_search {setup.ef_search}\n"
        )
        if efs:
            rows = []
            conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(max(efs))))
            for mode in MODES:  # warm-up: every query's pages into shared buffers once
                run(conn, queries, vectors, mode)
            for ef in efs:
                conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
                for mode in MODES:
                    runs, p50 = run(conn, queries, vectors, mode)
                    rows.append({"ef_search": ef, "mode": mode, **scores(runs, qrels), "p50_ms": round(p50, 2)})
                    print(json.dumps(rows[-1]), flush=True)
            out["ef_search"] = rows
            print("\n| ef_search | mode | nDCG@10 | recall@10 | p50 ms (statement) |\n|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['ef_search']} | {r['mode']} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {r['p50_ms']} |")
        if args.int8:
            conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(setup.ef_search)))
            int8_vectors, int8_ms = embed_all(OnnxEmbedder(quantized=True, query_batch=0), queries)
            cosine = [float(np.dot(vectors[q], int8_vectors[q])) for q in queries]
            rows = []
            for mode in MODES:
                fp_runs, _ = run(conn, queries, vectors, mode)
                i8_runs, _ = run(conn, queries, int8_vectors, mode)
                fp, i8 = scores(fp_runs, qrels), scores(i8_runs, qrels)
                same = sum(fp_runs[q] == i8_runs[q] for q in queries)
                rows.append(
                    {
                        "mode": mode,
                        "fp32_ndcg@10": fp["ndcg@10"],
                        "int8_ndcg@10": i8["ndcg@10"],
                        "drop": round(fp["ndcg@10"] - i8["ndcg@10"], 4),
                        "same_first_page": same,
                    }
                )
            out["int8"] = {
                "rows": rows,
                "fp32_embed_p50_ms": round(fp32_ms, 2),
                "int8_embed_p50_ms": round(int8_ms, 2),
                "cosine_mean": round(float(np.mean(cosine)), 4),
                "cosine_min": round(float(np.min(cosine)), 4),
            }
            print(
                f"\nquery embedding p50: fp32 {fp32_ms:.2f} ms, int8 {int8_ms:.2f} ms; cosine int8 to fp32 "
                f"mean {np.mean(cosine):.4f}, min {np.min(cosine):.4f}"
            )
            print("\n| mode | fp32 nDCG@10 | int8 nDCG@10 | drop | same first page |\n|---|---|---|---|---|")
            for r in rows:
                print(
                    f"| {r['mode']} | {r['fp32_ndcg@10']:.4f} | {r['int8_ndcg@10']:.4f} | {r['drop']:+.4f} |"
                    f" {r['same_first_page']}/{len(queries)} |"
                )
    path = RESULTS / f"query_quality-{args.dataset}-{passages}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
