"""Search under load: throughput and latency of GET /search as concurrent clients grow.

    python benchmarks/load.py [--database-url URL] [--clients 1,8,32,64] [--seconds 15]

The service runs as `hq-knowledge serve --no-worker` with its query cache off
(HQ_QUERY_CACHE=0: every request embeds its query), on `--database-url` or, by default, on the
sample knowledge base in an embedded server kept in --data-dir (imported and embedded by the
real worker on the first run). Each client is an asyncio task on one keep-alive HTTP/1.1
connection that sends hybrid searches back to back, one at a time, cycling through the
collection's queries (--dataset), for --seconds per level. Measured by the client: request
sent to body read.

Set-ups measured side by side on the same database in one run (--setups; --setup adds more):

  unbounded   every search admitted at once (HQ_SEARCH_CONCURRENCY=10000, HQ_SEARCH_QUEUE=0):
              the service as it was
  bounded     the defaults: searches in flight bounded by admission control (two per core,
              four waiting places per slot, 503 with Retry-After past them; knowledge.admission)
  batched     the defaults with concurrent queries embedded together, up to 16 in one ONNX
              run (HQ_QUERY_BATCH=16; embeddings.batching)

For each level: requests/s answered 200, p50/p99/max latency of those, how many were refused
with 503 (a client that is refused waits the Retry-After, as a client should, before its next
request: that wait is not counted as latency), and the query embedding batches formed (from
/status). Prints a markdown table; writes benchmarks/results/load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import common
import httpx
import numpy as np
from common import DATASETS, RESULTS, read_queries, running_service

SETUPS: dict[str, dict[str, str]] = {
    "unbounded": {"HQ_SEARCH_CONCURRENCY": "10000", "HQ_SEARCH_QUEUE": "0"},
    "bounded": {},
    "batched": {"HQ_QUERY_BATCH": "16"},
}


class Connection:
    """One keep-alive HTTP/1.1 connection: GET and read the answer (Content-Length bodies)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def level(base: str, queries: list[str], clients: int, seconds: float, seed: int) -> dict[str, Any]:
    """`clients` clients for `seconds`: each sends searches back to back."""
    latencies: list[float] = []
    refused = errors = 0
    stop = time.perf_counter() + seconds
    rng = random.Random(seed)
    offsets = [rng.randrange(len(queries)) for _ in range(clients)]

    async def client(i: int) -> None:
        nonlocal refused, errors
        conn = Connection(base)
        n = offsets[i]
        try:
            while time.perf_counter() < stop:
                path = "/search?" + urlencode({"q": queries[n % len(queries)], "mode": "hybrid"})
                n += 1
                started = time.perf_counter()
                try:
                    status, headers, _ = await conn.get(path)
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    await conn.close()
                    continue
                if status == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
                elif status == 503:
                    refused += 1
                    await asyncio.sleep(float(headers.get("retry-after", "1")))
                else:
                    errors += 1
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    took = time.perf_counter() - started
    ms = np.array(latencies) if latencies else np.array([float("nan")])
    return {"clients": clients, "ok": len(latencies), "refused_503": refused, "errors": errors,
            "requests_per_s": round(len(latencies) / took, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def batches(base: str) -> dict[int, int]:
    load = httpx.get(f"{base}/status", timeout=30).json()["searches"]
    return {int(k): int(v) for k, v in load["query_batches"].items()}


def batch_summary(before: dict[int, int], after: dict[int, int]) -> dict[str, Any]:
    runs = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    runs = {k: v for k, v in sorted(runs.items()) if v}
    total = sum(runs.values())
    queries = sum(k * v for k, v in runs.items())
    return {"runs": total, "mean_batch": round(queries / total, 2) if total else None,
            "max_batch": max(runs) if runs else None, "sizes": runs}


def sample_database(url: str) -> None:
    """The sample knowledge base in the database at `url`, imported and embedded by the real
    worker unless it already is."""
    import subprocess

    import psycopg

    from knowledge.importer import import_folder, sample_dir
    from knowledge.migrations import migrate

    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        row = conn.execute("SELECT count(*) FILTER (WHERE embedding_status <> 'indexed'), count(*) FROM documents"
                           ).fetchone()
        if row is not None and row[1] > 0 and row[0] == 0:
            return
        import_folder(conn, sample_dir())
    subprocess.run([sys.executable, "-m", "knowledge", "worker", "--once"], env={**os.environ, "HQ_DATABASE_URL": url},
                   check=True)


def measure(url: str, setups: list[str], levels: list[int], queries: list[str], seconds: float,
            log_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for setup in setups:
        env = {**os.environ, "HQ_DATABASE_URL": url, "HQ_QUERY_CACHE": "0", **SETUPS[setup]}
        with running_service(env, log_dir / f"load-{setup}.log") as base:
            asyncio.run(level(base, queries[::-1], 4, 5, seed=0))  # warm-up: connections, pages, ONNX
            for i, clients in enumerate(levels):
                before = batches(base)
                row = asyncio.run(level(base, queries, clients, seconds, seed=i + 1))
                row = {"setup": setup, **row, "query_batches": batch_summary(before, batches(base))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a database the service already searches (default: the sample)")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent / ".data-load",
                        help="where the embedded server keeps the sample database between runs")
    parser.add_argument("--dataset", default="scifact", help="whose queries to send")
    parser.add_argument("--clients", default="1,8,32,64", help="concurrent clients, comma-separated levels")
    parser.add_argument("--seconds", type=float, default=15, help="seconds per level")
    parser.add_argument("--setups", default="unbounded,bounded,batched", help=f"comma-separated: {', '.join(SETUPS)}")
    parser.add_argument("--setup", action="append", default=[], metavar="NAME:VAR=VALUE,...",
                        help="another set-up to measure, named, with the settings it changes (repeatable), "
                             "e.g. narrow:HQ_SEARCH_CONCURRENCY=2,HQ_SEARCH_QUEUE=4")
    parser.add_argument("--output", type=Path, default=RESULTS / "load.json")
    args = parser.parse_args()
    for spec in args.setup:
        name, _, assignments = spec.partition(":")
        pairs = [a.partition("=") for a in assignments.split(",") if a.strip()]
        if not name or any(not k.startswith("HQ_") or not sep for k, sep, _ in pairs):
            parser.error(f"--setup: NAME:HQ_VAR=VALUE,..., got {spec!r}")
        SETUPS[name] = {k: v for k, _, v in pairs}
        if name not in args.setups.split(","):
            args.setups += f",{name}"
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if not levels or any(c < 1 for c in levels):
        parser.error(f"--clients: positive numbers, got {args.clients!r}")
    if not setups or any(s not in SETUPS for s in setups):
        parser.error(f"--setups: {', '.join(SETUPS)}, got {args.setups!r}")

    queries = list(dict.fromkeys(t[:1000] for t in read_queries(DATASETS / args.dataset).values()))
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.database_url:
        rows = measure(args.database_url, setups, levels, queries, args.seconds, args.data_dir)
    else:
        from knowledge.embedded import EmbeddedPostgres

        with EmbeddedPostgres(args.data_dir / "pg") as server:
            sample_database(server.url)
            rows = measure(server.url, setups, levels, queries, args.seconds, args.data_dir)
    print(f"\n{common.machine()}\n")
    print("| setup | clients | requests/s | p50 ms | p99 ms | max ms | 503 | errors | mean batch | max batch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["query_batches"]
        print(f"| {r['setup']} | {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} |"
              f" {r['max_ms']} | {r['refused_503']} | {r['errors']} | {b['mean_batch'] or '-'} |"
              f" {b['max_batch'] or '-'} |")
    args.output.write_text(json.dumps({"machine": common.machine(), "seconds_per_level": args.seconds,
                                       "database": "sample" if not args.database_url else "given",
                                       "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
