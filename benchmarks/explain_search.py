"""Where the search statement spends its time: EXPLAIN (ANALYZE, BUFFERS) over many queries.

    python benchmarks/explain_search.py --database-url URL [--mode hybrid] [--queries 50] [--dataset scifact]

Each query of --dataset runs through the service's own search (knowledge.query_models.search_active,
a first page of 10, unfiltered, the service's ef_search and keyword path); the statement it
sends is captured and run again under EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) on the same
connection. The plans are summed by node (its type and what it reads: index, function,
CTE or subplan) as exclusive time (the node's own, its children's taken off, times loops),
and printed as p50 over the queries, largest first, with planning and execution time and
the buffers hit. Queries are embedded as the service embeds them (the database's active
model), outside the statement measured.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any

import common
import numpy as np
import psycopg
from common import DATASETS, read_queries

CAPTURED: list[tuple[str, Any]] = []


class CapturingCursor(psycopg.Cursor[Any]):
    """A cursor that records the search statement (and its parameters) it is asked to run."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query if isinstance(query, str) else query.as_string(self.connection)
        if "WITH RECURSIVE" in text:
            CAPTURED.append((text, params))
        return super().execute(query, params, **kwargs)


def label(node: dict[str, Any]) -> str:
    what = (
        node.get("Index Name")
        or node.get("Function Name")
        or node.get("CTE Name")
        or node.get("Relation Name")
        or node.get("Subplan Name")
        or ""
    )
    parent = node.get("Parent Relationship", "")
    sub = (
        f" [{node['Subplan Name']}]"
        if parent == "SubPlan" and node.get("Subplan Name") and what != node.get("Subplan Name")
        else ""
    )
    return f"{node['Node Type']} {what}".strip() + sub


def exclusive(node: dict[str, Any], out: dict[str, float]) -> None:
    loops = node.get("Actual Loops", 1) or 1
    total = node.get("Actual Total Time", 0.0) * loops
    children = node.get("Plans", [])
    inner = sum(
        c.get("Actual Total Time", 0.0) * (c.get("Actual Loops", 1) or 1)
        for c in children
        if c.get("Parent Relationship") != "InitPlan"
    )
    out[label(node)] += max(total - inner, 0.0)
    for child in children:
        exclusive(child, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--mode", default="hybrid", choices=("hybrid", "semantic", "keyword"))
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--top", type=int, default=15, help="nodes shown")
    args = parser.parse_args()

    from knowledge.db.keyword_index import repair_bm25_index
    from knowledge.db.pools import configure_for_search
    from knowledge.search import SearchQuery
    from knowledge.search.setup import search_active, search_setup

    texts = list(dict.fromkeys(t[:1000] for t in read_queries(DATASETS / args.dataset).values()))[: args.queries]
    per_node: dict[str, list[float]] = defaultdict(list)
    planning, execution, hits = [], [], []
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        configure_for_search(conn)
        repair_bm25_index(conn)  # pg_textsearch 1.0 forgets its statistics at a restart
        setup = search_setup(conn)
        conn.cursor_factory = CapturingCursor
        for text in texts:
            CAPTURED.clear()
            search_active(conn, SearchQuery(q=text, limit=10, mode=args.mode))
            statement, params = CAPTURED[-1]
            row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params, prepare=False).fetchone()
            assert row is not None
            plan = row[0][0] if isinstance(row[0], list) else json.loads(row[0])[0]
            planning.append(plan["Planning Time"])
            execution.append(plan["Execution Time"])
            hits.append(plan["Plan"].get("Shared Hit Blocks", 0))
            nodes: dict[str, float] = defaultdict(float)
            exclusive(plan["Plan"], nodes)
            for name, ms in nodes.items():
                per_node[name].append(ms)
        passages = conn.execute("SELECT count(*) FROM knowledge_chunks").fetchone()[0]  # type: ignore[index]
    n = len(texts)
    print(
        f"\n{common.machine()}; {args.mode}, {n} {args.dataset} queries, {passages} passages, keyword path "
        f"{setup.keyword_path}, ef_search {setup.ef_search}"
    )
    print(
        f"planning p50 {np.percentile(planning, 50):.2f} ms, execution p50 {np.percentile(execution, 50):.2f} ms "
        f"(under EXPLAIN ANALYZE's timing), shared buffers hit p50 {np.percentile(hits, 50):.0f}\n"
    )
    print("| node | exclusive ms p50 | p90 | share of execution |\n|---|---:|---:|---:|")
    ranked = sorted(per_node.items(), key=lambda kv: -float(np.median(kv[1] + [0.0] * (n - len(kv[1])))))
    total = float(np.median(execution))
    for name, values in ranked[: args.top]:
        values = values + [0.0] * (n - len(values))  # a node absent from a plan took 0 there
        p50 = float(np.percentile(values, 50))
        print(f"| {name} | {p50:.2f} | {np.percentile(values, 90):.2f} | {p50 / total:.0%} |")


if __name__ == "__main__":
    main()
