"""How much of the postings an exact BM25 top-k over the SQL keyword index must read.

    python benchmarks/keyword_pruning.py --database-url URL [--dataset scifact] [--queries 200] [--k 60]

hq_sql_bm25_top (migration 020) reads every posting of the query's lexemes and scores every
passage holding one. pg_textsearch's Block-Max WAND skips blocks of postings that cannot
reach the current k-th score. In SQL the skipping that can be written is term-level:
MaxScore. With the lexemes ordered by their upper bound, the longest prefix of low-bound
lexemes whose bounds sum below the k-th score threshold is "non-essential": a passage holding
only those cannot enter the top k, so only the other lexemes' postings must be read (the
non-essential ones are then probed for the candidates alone).

For each query, from the real postings of a database filled by the triggers (bm25_postings,
bm25_corpus), this computes the exact top-k and then, with the best information any SQL
formulation could have (the final threshold known in advance), the share of postings that
MaxScore must still read, for two per-lexeme bounds: the lexeme's weight (what the tables
hold today) and the exact maximum of its postings' scores (a per-lexeme maximum kept up to
date). It is a floor for any exact, term-at-a-time top-k in SQL, not a timing.

Prints a table.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from typing import Any

import numpy as np
import psycopg
from common import DATASETS, read_queries

K1, B = 1.2, 0.75


def postings(
    conn: psycopg.Connection[Any], text: str, n: float, avgdl: float
) -> dict[str, tuple[float, dict[int, float]]]:
    """Each query lexeme's weight and its postings' scores, by passage."""
    out: dict[str, tuple[float, dict[int, float]]] = {}
    for lexeme, qtf in conn.execute(
        "SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) FROM unnest(to_tsvector('english', %s)) u", [text]
    ).fetchall():
        rows = conn.execute("SELECT chunk_id, tf, dl FROM bm25_postings WHERE term = %s", [lexeme]).fetchall()
        if not rows:
            continue
        df = len(rows)
        w = qtf * (K1 + 1) * math.log(1 + (n - df + 0.5) / (df + 0.5))
        out[lexeme] = (w, {cid: w * tf / (tf + K1 * (1 - B + B * dl / avgdl)) for cid, tf, dl in rows})
    return out


def must_read(terms: dict[str, tuple[float, dict[int, float]]], bound: dict[str, float], theta: float) -> int:
    """Postings MaxScore reads with per-lexeme `bound` and threshold `theta` known upfront."""
    skipped, total = 0, 0.0
    for lexeme in sorted(terms, key=lambda t: bound[t]):
        if total + bound[lexeme] >= theta:
            break
        total += bound[lexeme]
        skipped += len(terms[lexeme][1])
    return sum(len(p) for _, p in terms.values()) - skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a database with the SQL keyword index filled")
    parser.add_argument("--dataset", default="scifact", help="whose queries")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=60, help="top-k (60: what a first page of 10 hybrid hits fetches)")
    args = parser.parse_args()
    queries = list(dict.fromkeys(read_queries(DATASETS / args.dataset).values()))[: args.queries]
    shares: dict[str, list[float]] = {"weight": [], "max score": []}
    read_all: list[int] = []
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sum(passages)::float8, sum(total_length)::float8 / sum(passages) FROM bm25_corpus"
        ).fetchone()
        assert row is not None and row[0], "the SQL keyword index is empty"
        n, avgdl = row
        for text in queries:
            terms = postings(conn, text, n, avgdl)
            if not terms:
                continue
            scores: dict[int, float] = defaultdict(float)
            for _, p in terms.values():
                for cid, s in p.items():
                    scores[cid] += s
            if len(scores) < args.k:
                continue
            theta = sorted(scores.values(), reverse=True)[args.k - 1]
            total = sum(len(p) for _, p in terms.values())
            read_all.append(total)
            shares["weight"].append(must_read(terms, {t: w for t, (w, _) in terms.items()}, theta) / total)
            shares["max score"].append(
                must_read(terms, {t: max(p.values()) for t, (_, p) in terms.items()}, theta) / total
            )
        passages = int(n)
    print(
        f"\n{len(read_all)} {args.dataset} queries, {passages} passages, top-{args.k}: postings of the query's "
        f"lexemes p50 {np.percentile(read_all, 50):.0f}, p90 {np.percentile(read_all, 90):.0f}\n"
    )
    print("| per-lexeme bound | share MaxScore must read: p10 | p50 | p90 | mean |\n|---|---:|---:|---:|---:|")
    for name, values in shares.items():
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        print(f"| {name} | {p10:.2f} | {p50:.2f} | {p90:.2f} | {np.mean(values):.2f} |")


if __name__ == "__main__":
    main()
