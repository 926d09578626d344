"""Export one of our databases' passages for the benchmark peers (txtai_app.py, lancedb_app.py).

    .venv/bin/python benchmarks/peers/export.py --database-url URL --out DIR

Run with the project's own virtualenv. Writes DIR/passages.jsonl, one JSON object a line
({"id": chunk id, "doc": corpus id or "" for filler passages, "text": the indexed text}),
and DIR/vectors.npy (float32, N x 384, row i = line i): the all-MiniLM-L6-v2 vectors the
database already holds, so the peers index the same passages with the same vectors
without embedding them again. The corpus id is the stem of the document's source path
(a BEIR collection's documents are imported as `<collection>/<corpus id>.md`).

A benchmark tool, never shipped in the package.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

MODEL = "all-MiniLM-L6-v2"
DIMS = 384
QUERY = """
    SELECT c.id, coalesce(d.source_path, ''), c.indexed_text, e.embedding
    FROM knowledge_chunks c
    JOIN documents d ON d.id = c.document_id
    JOIN chunk_embeddings e ON e.chunk_id = c.id
    WHERE e.model = %s
    ORDER BY c.id
"""


def export(database_url: str, out: Path) -> int:
    """Write out/passages.jsonl and out/vectors.npy; returns the number of passages."""
    out.mkdir(parents=True, exist_ok=True)
    vectors: list[np.ndarray] = []
    with psycopg.connect(database_url) as conn, (out / "passages.jsonl").open("w", encoding="utf-8") as lines:
        register_vector(conn)
        with conn.cursor(name="peers_export") as cur:  # server-side: streamed, not all in memory
            cur.execute(QUERY, (MODEL,))
            for chunk_id, source_path, text, embedding in cur:
                doc = Path(source_path).stem if source_path else ""
                lines.write(json.dumps({"id": str(chunk_id), "doc": doc, "text": text}) + "\n")
                vectors.append(embedding.to_numpy().astype(np.float32))
    matrix = np.vstack(vectors) if vectors else np.zeros((0, DIMS), np.float32)
    if matrix.shape[1] != DIMS:
        raise SystemExit(f"expected {DIMS}-dimension vectors, got {matrix.shape[1]}")
    np.save(out / "vectors.npy", matrix)
    return len(matrix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HQ_DATABASE_URL"),
        help="the database to read (default: $HQ_DATABASE_URL)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("--database-url or HQ_DATABASE_URL is required")
    started = time.perf_counter()
    n = export(args.database_url, args.out)
    print(f"{n} passages written to {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
