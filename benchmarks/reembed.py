"""Re-embed throughput next to the raw model's, in the same run.

    python benchmarks/reembed.py [--passages 5000] [--sample 1000] [--model all-MiniLM-L6-v2]

A database on the benchmark server gets --passages SciFact passages (title and abstract,
cut to 200 words, so each fits the model's 256 word pieces) as documents and passages
without vectors. The raw model then embeds a random --sample of those passages (the same
embedder the command uses, the same call size as its batches); `hq-knowledge reembed
--stale` embeds all of them as a user would run it (a subprocess, HQ_DATABASE_URL); the raw
model is timed again after, so that a drift of the machine shows. The command's own rate
(its last line: passages embedded / its wall time, model loading excluded) is set against
the mean of the two raw rates.

Prints a markdown table; writes benchmarks/results/reembed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import common
import psycopg
from common import DATASETS, RESULTS, add_data_dir_option, read_corpus
from psycopg import sql

DATABASE = "reembed_bench"


def prepare(server_url: str, passages: int) -> str:
    """A fresh database holding `passages` SciFact passages and no vectors."""
    from knowledge.db.migrations import migrate

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    url = server_url.replace("/hq?", f"/{DATABASE}?")
    corpus = list(read_corpus(DATASETS / "scifact").items())[:passages]
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        docs = [(uuid.uuid4(), title.strip() or did, " ".join(text.split()[:200])) for did, (title, text) in corpus]
        with conn.cursor().copy("COPY documents (id, title, content_format, content_text) FROM STDIN") as copy:
            for doc_id, title, text in docs:
                copy.write_row((doc_id, title[:500], "markdown", text))
        conn.execute("UPDATE documents SET embedding_status = 'indexed', extracted_text = content_text")
        with conn.cursor().copy(
            "COPY knowledge_chunks (document_id, chunk_index, content, indexed_text, content_hash) FROM STDIN"
        ) as copy:
            for doc_id, title, text in docs:
                copy.write_row((doc_id, 0, text, f"{title}\n\n{text}", uuid.uuid4().hex))
        conn.execute("VACUUM ANALYZE")
    return url


def raw_rate(texts: list[str], model: str, batch: int) -> float:
    """Passages per second of the model alone, called as the command calls it."""
    from embeddings.registry import load_model, resolve_model

    embedder = load_model(resolve_model(model))
    embedder.embed(texts[:8])  # load the weights, warm up
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.embed(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=5000)
    parser.add_argument("--sample", type=int, default=1000, help="passages the raw model embeds, before and after")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--batch", type=int, default=128, help="passages per re-embed transaction (its default)")
    add_data_dir_option(parser)
    args = parser.parse_args()

    from knowledge.db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(args.data_dir / "pg")
    server_url = server.start()
    try:
        url = prepare(server_url, args.passages)
        with psycopg.connect(url) as conn:
            texts = [r[0] for r in conn.execute("SELECT indexed_text FROM knowledge_chunks")]
        sample = random.Random(5).sample(texts, min(args.sample, len(texts)))
        before = raw_rate(sample, args.model, args.batch)
        print(f"raw model before: {before:.1f} passages/s on {len(sample)} passages", flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")} | {"HQ_DATABASE_URL": url}
        command = [sys.executable, "-m", "knowledge", "reembed", "--stale", "--batch", str(args.batch)]
        if args.model != "all-MiniLM-L6-v2":
            command += ["--model", args.model]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        print(done.stderr.strip().splitlines()[-1])
        print(done.stdout.strip())
        found = re.search(r"re-embedded (\d+) passages in ([\d.]+) s \(([\d.]+) passages/s", done.stdout)
        assert found, done.stdout
        embedded, seconds, rate = int(found[1]), float(found[2]), float(found[3])
        after = raw_rate(sample, args.model, args.batch)
        print(f"raw model after: {after:.1f} passages/s", flush=True)
    finally:
        server.stop()

    raw = (before + after) / 2
    row: dict[str, Any] = {
        "passages": embedded,
        "model": args.model,
        "batch": args.batch,
        "raw_before_per_s": round(before, 2),
        "raw_after_per_s": round(after, 2),
        "reembed_per_s": rate,
        "reembed_seconds": seconds,
        "command_wall_seconds": round(wall, 1),
        "ratio": round(rate / raw, 3),
    }
    machine = common.machine()
    print(f"\nmachine: {machine}; loadavg {os.getloadavg()[0]:.2f}")
    print("| passages | model | raw before /s | raw after /s | reembed /s | reembed / raw |")
    print("|---:|---|---:|---:|---:|---:|")
    print(f"| {embedded} | {args.model} | {before:.1f} | {after:.1f} | {rate:.1f} | {rate / raw:.1%} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "reembed.json"
    out.write_text(json.dumps({"machine": machine, "rows": [row]}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
