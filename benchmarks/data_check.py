"""Are the vector-index benchmark's synthetic vectors as hard for HNSW as real ones?

    python benchmarks/data_check.py [--ef-search 10,20,40,64,100,200]

Three collections of the same size (13,484 real SciFact passage vectors plus 76,956 more):

- `real`: the 76,956 more are real too: every piece (sentence) of SciFact, NPL
  and Cranfield documents embedded with the model (benchmarks/recombined.py);
- `recombined`: 76,956 composed passages (2-4 of those pieces, vector = weighted mean);
- `noise`: 76,956 vectors of Gaussian noise around the real passages (the earlier recipe).

For each: the queries' neighbourhoods (cosine of the 1st/10th/100th nearest, local intrinsic
dimensionality), and HNSW (m=16, ef_construction=64) recall@10 against exact search and p50 at
several ef_search, the 300 SciFact test queries, in the benchmark's embedded server. A generator
that is easier than real data would show higher recall at the same ef_search; the composed
vectors are also compared with the model's embedding of their concatenated texts.

Prints a table; writes benchmarks/results/vector_index_data_check.json. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json

import common
import numpy as np
import psycopg
import recombined
import vector_index as vi
from common import RESULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ef-search", type=lambda s: [int(x) for x in s.split(",")], default=[10, 20, 40, 64, 100, 200]
    )
    parser.add_argument("--fidelity", type=int, default=500, metavar="N", help="composed passages to embed for real")
    args = parser.parse_args()
    from pgvector.psycopg import register_vector

    chunks, label = vi.real_vectors()
    if label != "real":
        raise SystemExit("needs the real SciFact passage vectors")
    queries = vi.query_vectors(label, chunks)
    pieces = recombined.pieces(vi.WORK)
    n = len(chunks) + len(pieces.vectors)
    kinds = {
        "real": np.concatenate([chunks, pieces.vectors]),
        "recombined": np.concatenate([chunks, recombined.compose(pieces, len(pieces.vectors), 9)[0]]),
        "noise": np.concatenate([chunks, vi.noise(chunks, len(pieces.vectors), 9)]),
    }
    fidelity = None
    if args.fidelity:
        from embeddings.onnx import OnnxEmbedder

        fidelity = recombined.fidelity(pieces, OnnxEmbedder(), args.fidelity)
        print(f"composed vectors against the model's embedding of the same text: {json.dumps(fidelity)}", flush=True)
    rows = []
    pg, url = vi.start_server("6GB")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            builds = json.loads((vi.WORK / "builds.json").read_text()) if (vi.WORK / "builds.json").exists() else {}
            build_args = argparse.Namespace(skip_build=False, maintenance_work_mem="4GB")
            for kind, data in kinds.items():
                tag = np.zeros(n, dtype=bool)
                table = vi.ensure_table(conn, n, data, tag, f"data check {kind} {n}: seed 9", table=f"check_{kind}")
                scores, ids = vi.nearest(data, queries, 100)
                truth, around = vi.id_sets(ids), vi.neighbourhood(scores)
                name = f"{table}_hnsw_m16_ec64"
                vi.build(conn, table, name, "hnsw", {"m": 16, "ef_construction": 64}, builds, build_args)
                for ef in args.ef_search:
                    got, _ = vi.measure(
                        conn,
                        table,
                        [f"{table}_tag"],
                        {"hnsw.ef_search": str(ef)},
                        queries,
                        truth,
                        False,
                        name,
                        vi.distance({}),
                    )
                    rows.append(
                        {
                            "data": kind,
                            "vectors": n,
                            "neighbourhood": around,
                            "ef_search": ef,
                            "build_s": round(builds.get(name, float("nan")), 1),
                        }
                        | got
                    )
                    print(
                        f"  {kind:10} ef_search {ef:4}  recall@10 {got['recall@10']:.4f}  p50 {got['p50_ms']:6.2f} ms"
                        f"  plan_ok {got['plan_ok']}  others {got['other_cpu_cores']}",
                        flush=True,
                    )
    finally:
        pg.stop()
    lines = [
        "| data | cos@1 | cos@10 | cos@100 | LID@20 | " + " | ".join(f"ef {ef}" for ef in args.ef_search) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(args.ef_search),
    ]
    for kind in kinds:
        mine = [r for r in rows if r["data"] == kind]
        a = mine[0]["neighbourhood"]
        lines.append(
            f"| {kind} | {a['cos@1']} | {a['cos@10']} | {a['cos@100']} | {a['lid@20']} | "
            + " | ".join(f"{r['recall@10']:.3f} ({r['p50_ms']:.1f} ms)" for r in mine)
            + " |"
        )
    print(f"\n{n} vectors each, HNSW m=16 ef_construction=64, recall@10 (p50) by ef_search\n\n" + "\n".join(lines))
    (RESULTS / "vector_index_data_check.json").write_text(
        json.dumps({"machine": common.machine(), "vectors": n, "fidelity": fidelity, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
