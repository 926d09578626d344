"""Query embedding: per-query latency of the torch model, the ONNX model with 1 and 2
intra-op threads and the query cache, and passages/s of torch vs ONNX on SciFact abstracts.

    python benchmarks/query_embedding.py [--runs 200] [--passages 256] [--dataset DIR] [--cache-dir DIR]

The ONNX export goes to a temporary directory unless --cache-dir is given, so the first
start (export) and a later start (reuse) are both timed. Latencies are measured warm, in
rounds that alternate between the embedders so that load from other processes falls on
all of them alike. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from common import DATASETS

from embeddings.model import SentenceTransformerEmbedder
from embeddings.onnx import OnnxEmbedder

QUERY = "how do I rotate the on-call schedule?"
ROUNDS = 4


def load_abstracts(dataset: Path, n: int) -> list[str]:
    texts = []
    with (dataset / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            texts.append(f"{doc['title']}\n\n{doc['text']}")
            if len(texts) == n:
                break
    return texts


def latencies(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, tuple[list[float], float]]:
    """Per call name: wall-clock seconds of each run, and CPU seconds (all threads) per run."""
    for call in calls.values():
        for _ in range(20):
            call()
    walls: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    per_round = runs // ROUNDS
    for _ in range(ROUNDS):
        for name, call in calls.items():
            cpu_start = time.process_time()
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                walls[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - cpu_start
    return {name: (walls[name], cpu[name] / len(walls[name])) for name in calls}


def rate(embed: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = embed(texts)
    return len(texts) / (time.perf_counter() - start), vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--dataset", type=Path, default=DATASETS / "scifact")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="hq-onnx-") as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        start = time.perf_counter()
        first = OnnxEmbedder(cache_dir=cache_dir, threads=2)
        first.load()
        first_start = time.perf_counter() - start
        start = time.perf_counter()
        two = OnnxEmbedder(cache_dir=cache_dir, threads=2)
        two.load()
        second_start = time.perf_counter() - start
        one = OnnxEmbedder(cache_dir=cache_dir, threads=1)
        one.load()
        start = time.perf_counter()
        torch_model = SentenceTransformerEmbedder()
        torch_model.embed(["warm up"])
        torch_start = time.perf_counter() - start

        cached = OnnxEmbedder(cache_dir=cache_dir, threads=2)
        cached.embed_query(QUERY)
        timings = latencies(
            {
                "torch (sentence-transformers)": lambda: torch_model.embed([QUERY]),
                "ONNX fp32, 1 thread": lambda: one.embed([QUERY]),
                "ONNX fp32, 2 threads": lambda: two.embed([QUERY]),
                "cached embed_query (hit)": lambda: cached.embed_query(QUERY),
            },
            args.runs,
        )

        texts = load_abstracts(args.dataset, args.passages)
        throughput = {}
        for name, model in (
            ("torch (sentence-transformers)", torch_model),
            ("ONNX fp32, 1 thread", one),
            ("ONNX fp32, 2 threads", two),
            ("torch, run 2", torch_model),
        ):
            throughput[name] = rate(model.embed, texts)
        reference = throughput["torch (sentence-transformers)"][1]
        tokens = [min(torch_model.count_tokens(t) + 2, 256) for t in texts]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load {load:.2f}, "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {onnxruntime.__version__}, model all-MiniLM-L6-v2"
    )
    print(
        f"start: first (export + open) {first_start:.2f} s, next (cached file) {second_start:.2f} s, "
        f"torch model load {torch_start:.2f} s"
    )
    print()
    print(f"single short query ({len(QUERY)} chars), warm, {args.runs} runs in {ROUNDS} alternating rounds")
    print("| embedder | p50 ms | p95 ms | CPU ms/query |")
    print("|----------|-------:|-------:|-------------:|")
    for name, (walls, cpu) in timings.items():
        p50, p95 = np.percentile(walls, [50, 95]) * 1000
        print(f"| {name} | {p50:.3f} | {p95:.3f} | {cpu * 1000:.3f} |")
    print()
    print(
        f"{len(texts)} SciFact abstracts (title + text, mean {np.mean(tokens):.0f} word pieces, "
        f"{sum(t == 256 for t in tokens)} truncated at 256), batch 32"
    )
    print("| embedder | passages/s | min cosine vs torch |")
    print("|----------|-----------:|--------------------:|")
    for name, (per_second, vectors) in throughput.items():
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        print(f"| {name} | {per_second:.1f} | {cosine:.5f} |")


if __name__ == "__main__":
    main()
