"""Time the schema layer: embedded server start, migrate, re-run, bundle, check.

    python benchmarks/schema.py [--repeat 5]

Prints a table of median and max milliseconds. Uses a throw-away embedded server in a
temporary directory; nothing else is touched.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from knowledge.db.embedded import EmbeddedPostgres
from knowledge.db.migrations import bundle, load_migrations, migrate
from knowledge.db.schema_check import check_database


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    migrations = load_migrations()
    results: dict[str, list[float]] = {}

    def record(name: str, ms: float) -> None:
        results.setdefault(name, []).append(ms)

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            server = EmbeddedPostgres(Path(tmp) / f"cold{i}")
            record("embedded start, new data dir (initdb)", timed(server.start))
            server.stop()
            record("embedded start, existing data dir", timed(server.start))
            with psycopg.connect(server.url, autocommit=True) as conn:
                version = conn.execute("SHOW server_version").fetchone()
                record("db migrate, empty database (17 files)", timed(lambda: migrate(conn, migrations)))
                record("db migrate, nothing pending", timed(lambda: migrate(conn, migrations)))
                record("db migrate --reapply (17 files)", timed(lambda: migrate(conn, migrations, reapply=True)))
                record("db check", timed(lambda: check_database(conn, migrations)))
                conn.execute("CREATE DATABASE bundled")
            with psycopg.connect(server.url.replace("/hq?", "/bundled?"), autocommit=True) as conn:
                script = bundle(migrations).encode()

                def apply_bundle(c: psycopg.Connection[Any] = conn, s: bytes = script) -> None:
                    c.execute(s)

                record("db bundle applied in one transaction", timed(apply_bundle))
            record("embedded stop", timed(server.stop))

    print(
        f"machine: {platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, PostgreSQL {version[0] if version else '?'}, repeat {args.repeat}"
    )
    print(f"| {'step':<42} | {'median ms':>9} | {'max ms':>8} |")
    print(f"|{'-' * 44}|{'-' * 11}|{'-' * 10}|")
    for name, values in results.items():
        print(f"| {name:<42} | {statistics.median(values):>9.1f} | {max(values):>8.1f} |")


if __name__ == "__main__":
    main()
