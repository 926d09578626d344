"""Search under load: throughput and latency of GET /search as concurrent clients grow.

    python benchmarks/load.py --database-url URL [--clients 1,8,32,64] [--modes hybrid,semantic,keyword]
        [--before DIR] [--peers DIR --peer-python PY] [--seconds 15]

Each client is an asyncio task on one keep-alive HTTP/1.1 connection that sends searches
(limit 10) back to back, one at a time, for --seconds per level. Measured by the client:
request sent to body read. The queries are the collection's real ones (--dataset): a share
(--fresh, default half) of the requests carry a query never sent before, so the query cache
cannot answer them; the others repeat one of --hot queries. Meanwhile a document is created
through the API every --write-every seconds and the service's own worker embeds it (so
searches share the machine with ingestion, as they do in use). Each mode and level runs in
a service started afresh (`hq-knowledge serve`, worker included; its query cache empty) on
`--database-url` or, by default, on the sample knowledge base in an embedded server kept
in --data-dir.

Set-ups measured side by side on the same database in one run (--setups; --setup adds more):

  unbounded   every search admitted at once (HQ_SEARCH_CONCURRENCY=10000, HQ_SEARCH_QUEUE=0)
  bounded     the defaults: searches in flight bounded by admission control (knowledge.search.admission)
  batched     the defaults with concurrent queries embedded together, up to 16 in one ONNX
              run (HQ_QUERY_BATCH=16; embeddings.batching)
  before      --before DIR: the service run from another checkout (the code before a change)
  txtai, lancedb
              --peers DIR: what a user would otherwise pick, behind the same kind of HTTP
              endpoint (benchmarks/peers/), on the passages and vectors peers/export.py
              wrote from the same database; hybrid only, at --peer-clients levels, no writes

For each level: requests/s answered 200, p50/p95/p99/max latency of those, how many were
refused with 503 (a client that is refused waits the Retry-After, as a client should, before
its next request: that wait is not counted as latency), the query embedding batches formed
(from /status), and the documents written and embedded. Before the levels, each set-up
answers the collection's test queries one at a time: its nDCG@10 (hybrid). Prints markdown
tables; writes --output (benchmarks/results/load.json) and a plot beside it (.png).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import deque
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import common
import httpx
import numpy as np
from common import DATASETS, RESULTS, add_data_dir_option, read_corpus, read_qrels, read_queries, running_service

SETUPS: dict[str, dict[str, str]] = {
    "unbounded": {"HQ_SEARCH_CONCURRENCY": "10000", "HQ_SEARCH_QUEUE": "0"},
    "bounded": {},
    "batched": {"HQ_QUERY_BATCH": "16"},
}
PEERS = ("txtai", "lancedb")  # benchmarks/peers/<name>_app.py
SOURCES: dict[str, Path] = {}  # set-ups whose service runs from another source tree (--before)


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
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class QueryStream:
    """The queries the clients of one level send, real ones from the collection: a share
    `fresh` of the requests carry a query never sent before in the service's life (its query
    cache cannot answer it), the others one of `hot` queries asked again and again (as
    agents re-ask their standing questions). Shared by the clients of a level."""

    def __init__(self, queries: list[str], fresh: float, hot: int, seed: int) -> None:
        pool = list(queries)
        random.Random(seed).shuffle(pool)
        self.hot, self.fresh = pool[:hot], deque(pool[hot:])
        self.share = fresh
        self.sent_fresh = self.ran_out = 0

    def next(self, rng: random.Random) -> str:
        if rng.random() < self.share:
            if self.fresh:
                self.sent_fresh += 1
                return self.fresh.popleft()
            self.ran_out += 1  # every query was sent once: this one is a repeat
        return rng.choice(self.hot)


async def level(
    base: str, stream: QueryStream, clients: int, seconds: float, seed: int, params: dict[str, str]
) -> dict[str, Any]:
    """`clients` clients for `seconds`: each sends searches back to back."""
    latencies: list[float] = []
    refused = errors = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal refused, errors
        conn = Connection(base)
        rng = random.Random(seed * 1000 + i)
        try:
            while time.perf_counter() < stop:
                path = "/search?" + urlencode({"q": stream.next(rng), **params})
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
    return {
        "clients": clients,
        "ok": len(latencies),
        "refused_503": refused,
        "errors": errors,
        "requests_per_s": round(len(latencies) / took, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
        "fresh_queries": stream.sent_fresh,
        "fresh_ran_out": stream.ran_out,
    }


class Writer:
    """Documents created through the API while a level runs, one every `every` seconds, from
    another collection's texts; the service's worker embeds them. `summary` waits for them,
    says how long each took to be embedded, and deletes them."""

    def __init__(self, base: str, texts: list[tuple[str, str]], every: float) -> None:
        self.base, self.texts, self.every = base, texts, every
        self.ids: list[str] = []
        self.failed: list[str] = []

    async def run(self, seconds: float) -> None:
        stop = time.perf_counter() + seconds
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as client:
            n = 0
            while time.perf_counter() < stop:
                title, text = self.texts[n % len(self.texts)]
                n += 1
                r = await client.post(
                    "/documents",
                    json={
                        "title": f"{' '.join(title.split())[:150]} (load {n})",
                        "content_format": "markdown",
                        "content_text": text,
                    },
                )
                if r.status_code == 201:
                    self.ids.append(r.json()["id"])
                else:
                    self.failed.append(f"{r.status_code} {r.text[:200]}")
                await asyncio.sleep(self.every)

    def summary(self, wait: float = 60) -> dict[str, Any]:
        """Documents created, failed, and embedded within `wait` s of the level's end, with
        the seconds from creation to embedded (p50, max); the documents are then deleted."""
        deadline = time.monotonic() + wait
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while True:
                docs = [client.get(f"/documents/{i}").json() for i in self.ids]
                if all(d["embedding_status"] in ("indexed", "failed") for d in docs) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for i in self.ids:
                client.delete(f"/documents/{i}")
        lags = [
            (datetime.fromisoformat(d["embedded_at"]) - datetime.fromisoformat(d["created_at"])).total_seconds()
            for d in docs
            if d["embedding_status"] == "indexed" and d["embedded_at"]
        ]
        return {
            "created": len(self.ids),
            "failed": len(self.failed),
            "first_failure": self.failed[:1],
            "embedded": len(lags),
            "embed_lag_p50_s": round(float(np.median(lags)), 1) if lags else None,
            "embed_lag_max_s": round(max(lags), 1) if lags else None,
        }


async def while_writing(
    searched: Coroutine[Any, Any, dict[str, Any]], writer: Writer | None, seconds: float
) -> dict[str, Any]:
    """What `searched` measured, with `writer` writing for `seconds` meanwhile."""
    if writer is None:
        return await searched
    row: dict[str, Any]
    row, _ = await asyncio.gather(searched, writer.run(seconds))
    return row


def ranked_ids(body: dict[str, Any]) -> list[str]:
    """Corpus ids of a page, best first, each once: our hits name the imported file, a peer's
    answer lists them."""
    ids = body["ids"] if "ids" in body else [Path(h["source_path"]).stem for h in body["hits"] if h.get("source_path")]
    return list(dict.fromkeys(i for i in ids if i))


def quality(
    base: str, queries: dict[str, str], qrels: dict[str, dict[str, int]], params: dict[str, str]
) -> dict[str, Any]:
    """nDCG@10 of the collection's test queries, one at a time, and their p50 latency."""
    from quality import ndcg_at

    scores, took, paths = [], [], set()
    with httpx.Client(base_url=base, timeout=60) as client:
        for qid, rel in qrels.items():
            started = time.perf_counter()
            r = client.get("/search", params={"q": queries[qid][:1000], "limit": "10", **params})
            took.append((time.perf_counter() - started) * 1000)
            r.raise_for_status()
            scores.append(ndcg_at(ranked_ids(r.json()), rel))
            paths.add(r.json().get("keyword_path", "-"))  # ours: bm25 unless the index was found broken
    return {
        "ndcg@10": round(float(np.mean(scores)), 4),
        "queries": len(scores),
        "p50_ms": round(float(np.median(took)), 1),
        "keyword_path": ",".join(sorted(paths)),
    }


def batches(base: str) -> dict[int, int]:
    load = httpx.get(f"{base}/status", timeout=30).json().get("searches")
    if load is None:  # a service from before admission control reports no batches
        return {}
    return {int(k): int(v) for k, v in load["query_batches"].items()}


def batch_summary(before: dict[int, int], after: dict[int, int]) -> dict[str, Any]:
    runs = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    runs = {k: v for k, v in sorted(runs.items()) if v}
    total = sum(runs.values())
    queries = sum(k * v for k, v in runs.items())
    return {
        "runs": total,
        "mean_batch": round(queries / total, 2) if total else None,
        "max_batch": max(runs) if runs else None,
        "sizes": runs,
    }


def sample_database(url: str) -> None:
    """The sample knowledge base in the database at `url`, imported and embedded by the real
    worker unless it already is."""
    import subprocess

    import psycopg

    from knowledge.db.migrations import migrate
    from knowledge.store.importer import import_folder, sample_dir

    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE embedding_status <> 'indexed'), count(*) FROM documents"
        ).fetchone()
        if row is not None and row[1] > 0 and row[0] == 0:
            return
        import_folder(conn, sample_dir())
    subprocess.run(
        [sys.executable, "-m", "knowledge", "worker", "--once"], env={**os.environ, "HQ_DATABASE_URL": url}, check=True
    )


class Run:
    """What every set-up of one run shares: the database, the queries, the levels."""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args, self.url = args, url
        dataset = DATASETS / args.dataset
        self.queries = read_queries(dataset)
        self.qrels = read_qrels(dataset)
        self.stream_queries = list(dict.fromkeys(t[:1000] for t in self.queries.values()))
        self.texts = [(t or "Note", x[:1500]) for t, x in read_corpus(DATASETS / args.write_from).values() if x.strip()]
        self.levels: list[int] = args.levels
        self.rows: list[dict[str, Any]] = []
        self.quality: dict[str, dict[str, Any]] = {}

    def service(self, setup: str, log: str) -> Any:
        if setup in PEERS:
            command = [
                str(self.args.peer_python),
                str(Path(__file__).resolve().parent / "peers" / f"{setup}_app.py"),
                "--data",
                str(self.args.peers),
            ]
            return running_service(os.environ, self.args.data_dir / log, command=command, timeout=3600)
        env = {**os.environ, "HQ_DATABASE_URL": self.url, **SETUPS[setup]}
        return running_service(env, self.args.data_dir / log, source=SOURCES.get(setup), worker=True)

    def measure(self, setup: str) -> None:
        """The quality pass, then each mode and level in a service started afresh (an empty
        query cache: the fresh queries stay fresh)."""
        peer = setup in PEERS
        modes = ["hybrid"] if peer else self.args.modes.split(",")
        levels = [c for c in self.levels if c in self.args.peer_levels] if peer else self.levels
        with self.service(setup, f"load-{setup}-quality.log") as base:
            self.quality[setup] = quality(base, self.queries, self.qrels, {} if peer else {"mode": "hybrid"})
            print(json.dumps({"setup": setup, **self.quality[setup]}), flush=True)
        for mode in modes:
            for i, clients in enumerate(levels):
                params = {"limit": "10"} if peer else {"mode": mode, "limit": "10"}
                with self.service(setup, f"load-{setup}-{mode}-{clients}.log") as base:
                    warm = QueryStream([f"warm-up {n}" for n in range(400)], 1.0, 1, seed=0)
                    asyncio.run(level(base, warm, 4, 3, seed=0, params=params))  # connections, pages, ONNX
                    before = {} if peer else batches(base)
                    stream = QueryStream(self.stream_queries, self.args.fresh, self.args.hot, seed=i + 1)
                    writer = (
                        None if peer or not self.args.write_every else Writer(base, self.texts, self.args.write_every)
                    )
                    searched = level(base, stream, clients, self.args.seconds, seed=i + 1, params=params)
                    row = {
                        "setup": setup,
                        "mode": mode,
                        **asyncio.run(while_writing(searched, writer, self.args.seconds)),
                    }
                    row["query_batches"] = batch_summary(before, {} if peer else batches(base))
                    row["documents_written"] = writer.summary() if writer is not None else None
                self.rows.append(row)
                print(json.dumps(row), flush=True)


def table(run: Run) -> str:
    lines = [
        (
            "| set-up | mode | clients | requests/s | p50 ms | p95 ms | p99 ms | max ms | 503 | errors |"
            " mean batch | documents written / embedded (lag p50, max s) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run.rows:
        b, w = r["query_batches"], r["documents_written"]
        written = f"{w['created']} / {w['embedded']} ({w['embed_lag_p50_s']}, {w['embed_lag_max_s']})" if w else "-"
        lines.append(
            f"| {r['setup']} | {r['mode']} | {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} |"
            f" {r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['refused_503']} | {r['errors']} |"
            f" {b['mean_batch'] or '-'} | {written} |"
        )
    lines += [
        "",
        "| set-up | nDCG@10 (hybrid, one client) | p50 ms | queries | keyword path |",
        "|---|---|---|---|---|",
    ]
    for setup, q in run.quality.items():
        lines.append(f"| {setup} | {q['ndcg@10']} | {q['p50_ms']} | {q['queries']} | {q['keyword_path']} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Requests/s and p99 against clients, hybrid, one line a set-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for setup in dict.fromkeys(r["setup"] for r in rows):
        pts = sorted((r for r in rows if r["setup"] == setup and r["mode"] == "hybrid"), key=lambda r: r["clients"])
        a1.plot([r["clients"] for r in pts], [r["requests_per_s"] for r in pts], "o-", label=setup)
        a2.plot([r["clients"] for r in pts], [r["p99_ms"] for r in pts], "o-", label=setup)
    a1.set(xscale="log", xlabel="concurrent clients", ylabel="searches answered / s", title="Hybrid search: throughput")
    a2.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent clients",
        ylabel="p99 latency, ms",
        title="Hybrid search: p99 latency",
    )
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a database the service already searches (default: the sample)")
    add_data_dir_option(
        parser, ".data-load", "where the embedded server keeps the sample database between runs, and the logs"
    )
    parser.add_argument("--dataset", default="scifact", help="whose queries to send and score")
    parser.add_argument("--clients", default="1,8,32,64", help="concurrent clients, comma-separated levels")
    parser.add_argument("--modes", default="hybrid,semantic,keyword", help="search modes, comma-separated")
    parser.add_argument("--seconds", type=float, default=15, help="seconds per level")
    parser.add_argument(
        "--fresh", type=float, default=0.5, help="share of requests whose query was never sent before (default 0.5)"
    )
    parser.add_argument("--hot", type=int, default=50, help="how many queries the other requests repeat")
    parser.add_argument(
        "--write-every", type=float, default=1.0, help="seconds between documents created during each level (0: none)"
    )
    parser.add_argument(
        "--write-from", default="cranfield", help="the collection whose texts the written documents carry"
    )
    parser.add_argument("--setups", default="unbounded,bounded", help=f"comma-separated: {', '.join(SETUPS)}")
    parser.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE,...",
        help="another set-up to measure, named, with the settings it changes (repeatable), "
        "e.g. narrow:HQ_SEARCH_CONCURRENCY=2,HQ_SEARCH_QUEUE=4",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="a checkout of the code before a change: measured as the set-up 'before'",
    )
    parser.add_argument(
        "--peers",
        type=Path,
        metavar="DIR",
        help="passages exported by peers/export.py: also measure txtai and LanceDB on them",
    )
    parser.add_argument("--peer-python", type=Path, help="the Python of the peers' own virtualenv")
    parser.add_argument("--peer-clients", default="1,32", help="the levels the peers are measured at")
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
    if args.before is not None:
        if not (args.before / "knowledge" / "__main__.py").is_file():
            parser.error(f"--before: a checkout of this project, got {str(args.before)!r}")
        SETUPS["before"], SOURCES["before"] = {}, args.before.resolve()
        if "before" not in args.setups.split(","):
            args.setups = f"before,{args.setups}"
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if args.peers is not None:
        if not (args.peers / "passages.jsonl").is_file() or args.peer_python is None:
            parser.error("--peers: a folder written by peers/export.py, with --peer-python")
        setups += [p for p in PEERS if p not in setups]
    try:
        args.levels = levels = [int(c) for c in args.clients.split(",") if c.strip()]
        args.peer_levels = {int(c) for c in args.peer_clients.split(",") if c.strip()}
    except ValueError:
        parser.error(f"--clients/--peer-clients: comma-separated numbers, got {args.clients!r}")
    if not levels or any(c < 1 for c in levels):
        parser.error(f"--clients: positive numbers, got {args.clients!r}")
    if any(s not in SETUPS and s not in PEERS for s in setups):
        parser.error(f"--setups: {', '.join(SETUPS)}, got {args.setups!r}")
    if any(m not in ("hybrid", "semantic", "keyword") for m in args.modes.split(",")):
        parser.error(f"--modes: hybrid, semantic, keyword, got {args.modes!r}")
    if not 0 <= args.fresh <= 1:
        parser.error(f"--fresh: a share from 0 to 1, got {args.fresh}")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def measure_all(url: str) -> Run:
        run = Run(args, url)
        for setup in setups:
            run.measure(setup)
        return run

    if args.database_url:
        run = measure_all(args.database_url)
    else:
        from knowledge.db.embedded import EmbeddedPostgres

        with EmbeddedPostgres(args.data_dir / "pg") as server:
            sample_database(server.url)
            run = measure_all(server.url)
    print(f"\n{common.machine()}\n\n{table(run)}")
    args.output.write_text(
        json.dumps(
            {
                "machine": common.machine(),
                "seconds_per_level": args.seconds,
                "fresh_share": args.fresh,
                "hot_queries": args.hot,
                "write_every_s": args.write_every,
                "database": "sample" if not args.database_url else "given",
                "took_s": round(time.perf_counter() - started),
                "quality": run.quality,
                "rows": run.rows,
            },
            indent=2,
        )
        + "\n"
    )
    plot(run.rows, args.output.with_suffix(".png"))


if __name__ == "__main__":
    main()
