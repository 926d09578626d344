"""What the benchmarks share: BEIR collections, the machine line, and a running service."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"

Corpus = dict[str, tuple[str, str]]
Qrels = dict[str, dict[str, int]]


def machine() -> str:
    """Architecture, CPU model and the SIMD extensions timings depend on, cores, Python."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return (
        f"{platform.machine()} {model} ({', '.join(simd) or 'no AVX2'}), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def read_corpus(dataset: Path) -> Corpus:
    corpus: Corpus = {}
    with open(dataset / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            corpus[row["_id"]] = (row.get("title") or "", row.get("text") or "")
    return corpus


def read_queries(dataset: Path) -> dict[str, str]:
    with open(dataset / "queries.jsonl", encoding="utf-8") as f:
        return {row["_id"]: row["text"] for row in map(json.loads, f)}


def read_qrels(dataset: Path) -> Qrels:
    qrels: Qrels = defaultdict(dict)
    with open(dataset / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")[:3]
            if int(score) > 0:
                qrels[qid][did] = int(score)
    return dict(qrels)


def add_data_dir_option(
    parser: argparse.ArgumentParser,
    folder: str = ".data",
    description: str = "where the embedded server keeps the benchmark databases between runs",
) -> None:
    """--data-dir: the data directory of an embedded PostgreSQL kept between runs, by
    default `folder` in benchmarks/."""
    parser.add_argument("--data-dir", type=Path, default=BENCHMARKS / folder, help=description)


def write_corpus_markdown(corpus: Corpus, folder: Path) -> None:
    """One markdown file per corpus entry, `# title` then the text: the import path's input."""
    folder.mkdir(parents=True, exist_ok=True)
    for did, (title, text) in corpus.items():
        (folder / f"{did}.md").write_text(f"# {title.strip() or did}\n\n{text}\n", encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_service(
    env: Mapping[str, str],
    log_path: Path,
    *,
    timeout: float = 180,
    source: Path | None = None,
    worker: bool = False,
    command: list[str] | None = None,
) -> Iterator[str]:
    """`hq-knowledge serve --no-worker` on a free port; yields its base URL once /healthz
    answers 200, and shows the end of its log if it does not start. `source`: run the
    service from that source tree (another checkout of the project) instead of this one;
    `worker`: with its ingestion worker; `command`: another service altogether, started with
    `--port N` appended."""
    if source is not None:
        env = {**env, "PYTHONPATH": str(source)}
    port = free_port()
    argv = command or [sys.executable, "-m", "knowledge", "serve", *([] if worker else ["--no-worker"])]
    with open(log_path, "w+", encoding="utf-8") as log:
        service = subprocess.Popen(
            [*argv, "--port", str(port)], env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=source
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            with httpx.Client(base_url=base, timeout=10) as client:
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or service.poll() is not None:
                        log.seek(0)
                        raise SystemExit(f"the service did not start:\n{log.read()[-3000:]}")
                    time.sleep(0.2)
            yield base
        finally:
            service.terminate()
            service.wait(timeout=120)
