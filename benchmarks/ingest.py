"""Ingestion: insert-to-indexed latency with an idle worker, and worker throughput next to
raw model.encode throughput on the same passages, in one run.

    python benchmarks/ingest.py [--docs 300] [--latency-runs 10] [--dataset ../shared/datasets/scifact]

Uses the packaged all-MiniLM-L6-v2 on the CPU and a throw-away embedded PostgreSQL.
Documents are SciFact abstracts (title + text). Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import torch
from common import DATASETS

from embeddings.model import SentenceTransformerEmbedder
from knowledge.db.embedded import EmbeddedPostgres
from knowledge.db.migrations import migrate
from knowledge.ingest.chunking import chunk_markdown
from knowledge.ingest.worker import Worker

ONE_PAGE = """# Incident response

When an alert fires, the on-call engineer acknowledges it within five minutes and opens an
incident channel. {n}

## Severity

Sev 1 means customers cannot log in or lose data; Sev 2 means a feature is broken for many
customers; Sev 3 is everything else. The incident commander decides the severity and can
change it as facts arrive. Every Sev 1 gets a status page update within fifteen minutes.

## Roles

The incident commander coordinates and decides; the communications lead writes the status
page and customer emails; the operations lead changes production. One person may hold two
roles in a small incident, never all three.

## Afterwards

Within two working days the commander writes a blameless review: timeline, impact, root
cause, what went well, what did not, and actions with owners and dates. The review is read
aloud at the weekly operations meeting, and every action is tracked in the incident stream
until it is closed or explicitly dropped with a reason.

## Communication

Customers hear from us before they have to ask. The communications lead posts the first
status page update within fifteen minutes of a Sev 1 being declared, then every thirty
minutes until the incident is resolved, even when there is nothing new to say. Updates say
what customers see, what we are doing, and when the next update comes; they never guess at
a root cause. Enterprise customers with a named account manager also get an email from that
manager once the incident is resolved, with a summary of the impact on their workspace.

## Hand-offs

An incident that runs past the end of a shift is handed over in the incident channel, not
in a private message: the outgoing commander writes the current state, the open questions
and the next decision to be made, and the incoming commander acknowledges in writing before
the outgoing one leaves. Nobody hands over in the middle of a change to production.

## Tools

Alerts come from the monitoring system and page through the paging tool; the runbook for
each alert is linked from the alert itself. Dashboards for latency, error rate, queue depth
and database load are pinned in the incident channel template. Access to production is
granted for the length of the incident and revoked automatically four hours after it closes.
"""


def load_corpus(dataset: Path, n: int) -> list[tuple[str, str]]:
    docs = []
    with open(dataset / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["text"].strip():
                docs.append((row["title"].strip() or row["_id"], row["text"]))
            if len(docs) == n:
                break
    return docs


def insert(conn: psycopg.Connection[Any], docs: list[tuple[str, str]]) -> None:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO documents (title, content_format, content_text) VALUES (%s, 'markdown', %s)", docs)


def measure_latency(url: str, model: SentenceTransformerEmbedder, runs: int) -> list[float]:
    stop = threading.Event()
    worker = Worker(url, model, poll_seconds=30)
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(runs):
            time.sleep(1.0)  # the worker is idle, listening
            start = time.perf_counter()
            doc = conn.execute(
                "INSERT INTO documents (title, content_format, content_text) VALUES (%s, 'markdown', %s) RETURNING id",
                [f"Incident response {i}", ONE_PAGE.format(n=f"Run {i}.")],
            ).fetchall()[0][0]
            status = "SELECT embedding_status FROM documents WHERE id = %s"
            while conn.execute(status, [doc]).fetchall()[0][0] != "indexed":
                time.sleep(0.002)
            times.append(time.perf_counter() - start)
    stop.set()
    thread.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--dataset", type=Path, default=DATASETS / "scifact")
    args = parser.parse_args()
    model = SentenceTransformerEmbedder()
    model.embed(["warm up the model"])
    corpus = load_corpus(args.dataset, args.docs)
    texts = [
        c.indexed_text
        for title, text in corpus
        for c in chunk_markdown(title, text, model.count_tokens, max_tokens=model.max_tokens)
    ]

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp))
        url = server.start()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                migrate(conn)
                version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            latencies = measure_latency(url, model, args.latency_runs)

            raw_rates = []
            start = time.perf_counter()
            model.embed(texts)
            raw_rates.append(len(texts) / (time.perf_counter() - start))

            with psycopg.connect(url, autocommit=True) as conn:
                insert(conn, corpus)
            worker = Worker(url, model)
            start = time.perf_counter()
            stats = worker.run(once=True)
            worker_seconds = time.perf_counter() - start
            worker_rate = stats.passages_embedded / worker_seconds

            start = time.perf_counter()
            model.embed(texts)
            raw_rates.append(len(texts) / (time.perf_counter() - start))
        finally:
            server.stop()

    raw = statistics.mean(raw_rates)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), PostgreSQL {version}, "
        f"model {model.name}, batch {model.batch_size}"
    )
    print()
    print(f"insert -> indexed, one-page document ({len(ONE_PAGE.split())} words), idle worker, {len(latencies)} runs")
    print("| p50 s | max s |")
    print("|-------|-------|")
    print(f"| {statistics.median(latencies):.3f} | {max(latencies):.3f} |")
    print()
    print(f"throughput on {len(corpus)} SciFact abstracts = {len(texts)} passages")
    print("| what | passages/s | vs raw |")
    print("|------|-----------:|-------:|")
    for i, rate in enumerate(raw_rates):
        print(f"| raw model.encode, run {i + 1} ({'before' if i == 0 else 'after'}) | {rate:.1f} | |")
    print(f"| worker (lease, chunk, embed, write, HNSW) | {worker_rate:.1f} | {worker_rate / raw:.1%} |")
    print(
        f"| worker time in model.encode | {stats.seconds_embedding:.1f} s of {worker_seconds:.1f} s | "
        f"{stats.seconds_embedding / worker_seconds:.1%} |"
    )
    print(
        f"records indexed {stats.indexed}, passages embedded {stats.passages_embedded}, reused {stats.passages_reused}"
    )


if __name__ == "__main__":
    main()
