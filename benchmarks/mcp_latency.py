"""Latency of a search through MCP (`search_knowledge` over streamable HTTP) against GET /search.

    cd benchmarks && ../.venv/bin/python mcp_latency.py [--requests 200] [--block 20]

The collection (SciFact by default) is the one latency.py loads into the embedded PostgreSQL
kept in --data-dir (database `lat_<dataset>`; loaded and embedded on first use, reused after).
The service runs as `hq-knowledge serve --no-worker` with its query cache off
(HQ_QUERY_CACHE=0: every request embeds its query), and the same test queries go to it by two
paths, one client each, one request at a time:

- MCP: `search_knowledge` {query, limit 10, mode} over one long-lived session of the SDK's own
  client (`mcp.Client` on `streamable_http_client`, httpx2 underneath);
- REST: `GET /search?q=...&limit=10&mode=...` over one keep-alive httpx.Client.

Latency is measured by the client, from the call to the parsed answer (the SDK's validated
CallToolResult; the REST body decoded from JSON). After 20 warm-up queries on each path (not
among the measured ones), the queries are sent in blocks of --block, MCP then REST, then
REST then MCP, and so on, so that machine noise and warmed database pages fall on both paths
alike. Modes: hybrid, then keyword (no query embedding). Every query's hit ids (in order) from
the two paths are compared: they should all agree.

Prints a markdown table; writes benchmarks/results/mcp_latency.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import httpx
import httpx2
import numpy as np
import psycopg
from common import DATASETS, RESULTS, read_qrels, read_queries, running_service
from latency import collection_parser, load_collection, percentiles
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

MODES = ("hybrid", "keyword")
LIMIT = 10
WARMUP = 20

Timed = tuple[float, list[str]]  # client ms, hit ids in rank order


async def via_mcp(client: Client, query: str, mode: str) -> Timed:
    started = time.perf_counter()
    result = await client.call_tool("search_knowledge", {"query": query, "limit": LIMIT, "mode": mode})
    took = (time.perf_counter() - started) * 1000
    if result.is_error or result.structured_content is None:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise SystemExit(f"search_knowledge failed for {query!r}: {text[:500]}")
    return took, [str(h["id"]) for h in result.structured_content["hits"]]


def via_rest(client: httpx.Client, query: str, mode: str) -> tuple[float, list[str], float]:
    """Client ms, hit ids, and the server's took_ms."""
    started = time.perf_counter()
    r = client.get("/search", params={"q": query, "limit": LIMIT, "mode": mode})
    body = r.json()
    took = (time.perf_counter() - started) * 1000
    if r.status_code != 200:
        raise SystemExit(f"GET /search failed for {query!r}: {r.status_code} {str(body)[:500]}")
    return took, [str(h["id"]) for h in body["hits"]], float(body["took_ms"])


async def measure(base: str, queries: list[str], warmup: list[str], block: int) -> dict[str, Any]:
    """Per mode: client ms of each path, the REST server's took_ms, and the queries whose hit
    ids differ between the paths (query, MCP ids, REST ids)."""
    out: dict[str, Any] = {}
    # The REST client is synchronous: while it waits, the MCP session (idle) waits too.
    async with (
        httpx2.AsyncClient(timeout=60) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http), read_timeout_seconds=120) as mcp,
    ):
        with httpx.Client(base_url=base, timeout=60) as rest:
            for mode in MODES:
                for text in warmup:
                    await via_mcp(mcp, text, mode)
                    via_rest(rest, text, mode)
                mcp_ms: list[float] = []
                rest_ms: list[float] = []
                server_ms: list[float] = []
                mcp_ids: dict[int, list[str]] = {}
                rest_ids: dict[int, list[str]] = {}
                for n, start in enumerate(range(0, len(queries), block)):
                    chunk = list(enumerate(queries[start : start + block], start=start))
                    for path in ("mcp", "rest") if n % 2 == 0 else ("rest", "mcp"):
                        for i, text in chunk:
                            if path == "mcp":
                                took, mcp_ids[i] = await via_mcp(mcp, text, mode)
                                mcp_ms.append(took)
                            else:
                                took, rest_ids[i], server = via_rest(rest, text, mode)
                                rest_ms.append(took)
                                server_ms.append(server)
                differ = [
                    (queries[i], mcp_ids[i], rest_ids[i]) for i in range(len(queries)) if mcp_ids[i] != rest_ids[i]
                ]
                out[mode] = {"mcp": mcp_ms, "rest": rest_ms, "server": server_ms, "differ": differ}
                print(
                    f"  {mode}: MCP p50 {np.median(mcp_ms):.1f} ms, REST p50 {np.median(rest_ms):.1f} ms, "
                    f"{len(queries) - len(differ)}/{len(queries)} agree",
                    flush=True,
                )
    return out


def main() -> None:
    parser = collection_parser(__doc__)
    parser.add_argument("--requests", type=int, default=200, help="measured queries per path and mode")
    parser.add_argument("--block", type=int, default=20, help="queries per path before the other path's turn")
    args = parser.parse_args()

    from knowledge.db.embedded import EmbeddedPostgres

    dataset = DATASETS / args.dataset
    test = read_qrels(dataset)
    texts = read_queries(dataset)
    queries = list(dict.fromkeys(texts[qid][:1000] for qid in texts if qid in test))[: args.requests]
    warmup = [t[:1000] for qid, t in texts.items() if qid not in test][:WARMUP]
    print(f"{len(queries)} {args.dataset} test queries per path and mode, {len(warmup)} others to warm up", flush=True)

    server = EmbeddedPostgres(args.data_dir / "pg")
    server_url = server.start()
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            url = load_collection(admin, server_url, f"lat_{args.dataset}", args.dataset)
        env = {**os.environ, "HQ_DATABASE_URL": url, "HQ_QUERY_CACHE": "0"}
        with tempfile.TemporaryDirectory() as tmp, running_service(env, Path(tmp) / "serve.log") as base:
            results = asyncio.run(measure(base, queries, warmup, args.block))
    finally:
        server.stop()

    machine = common.machine()
    rows: list[dict[str, Any]] = [
        {"path": path, "mode": mode, "requests": len(results[mode][path]), **percentiles(results[mode][path])}
        for mode in MODES
        for path in ("mcp", "rest")
    ]
    print(
        f"\nmachine: {machine}; queries: {args.dataset} test; limit {LIMIT}; one client per path, one request "
        f"at a time, blocks of {args.block} alternating; latency by the client, call to parsed answer, "
        "query embedding included (cache off)"
    )
    print("| path | mode | requests | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['path']} | {r['mode']} | {r['requests']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |"
            f" {r['p99_ms']:.1f} |"
        )
    print()
    for mode in MODES:
        mcp, rest = (next(r for r in rows if r["path"] == p and r["mode"] == mode) for p in ("mcp", "rest"))
        differ = results[mode]["differ"]
        print(
            f"{mode}: MCP - REST at p50 {mcp['p50_ms'] - rest['p50_ms']:+.1f} ms; REST server took_ms p50 "
            f"{np.median(results[mode]['server']):.1f} ms; same hit ids on both paths for "
            f"{len(queries) - len(differ)}/{len(queries)} queries"
        )
        for text, mcp_ids, rest_ids in differ[:5]:
            print(f"  DIFFER {text[:80]!r}:\n    mcp  {mcp_ids}\n    rest {rest_ids}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "mcp_latency.json"
    out.write_text(json.dumps({"machine": machine, "dataset": args.dataset, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
