"""Readiness: can this service do its whole job now? The answer of GET /readyz and of
`hq-knowledge status`.

Required, each with its state and since when it has been in it:
- database: a connection answers within TIMEOUT_SECONDS;
- schema: complete (`schema_check.check_database`);
- disk: the database's disk takes a write that needs new space (`DISK_PROBE`);
- worker: the ingestion worker's state is ok and its loop went round within its stale_after
  (`health`'s "worker"); a process that runs no worker (`serve --no-worker`, or `status`
  without --url) lists it as not required;
- database_server: the embedded server's watchdog is ok, when the process has one.
Any other component of `health` is listed, not required. A read replica (`replica <url>`, from
knowledge.db.replicas) that is down or lagging leaves the service ready, reads going to the primary,
but `degraded`.

The disk probe sorts more rows than `work_mem` holds, so the sort spills to a temporary file
in the data directory: a write of fresh blocks, as inserting a document needs when a table or
index grows, that fails with "No space left on device" (SQLSTATE 53100, an ERROR) on a full
disk. It writes no WAL: a probe that wrote WAL could be the write that makes PostgreSQL PANIC
(a WAL write that fails is fatal to the server), and an UPDATE of a one-row table would fit in
its page and WAL segment already on disk, and pass on a full disk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from knowledge.db.errors import is_disk_full
from knowledge.db.schema_check import check_database
from knowledge.errors import KnowledgeError, first_line
from knowledge.health import Health

__all__ = ["ComponentReport", "Readiness", "check_readiness"]

TIMEOUT_SECONDS = 3
PROBES = ("database", "schema", "disk")
"""The components the check itself measures (and records in `health`, for their `since`)."""
REQUIRED = ("worker", "database_server")
"""Components of `health` that readiness requires when they are registered."""
DEGRADED = ("down", "lagging")
"""States of a component that is not required (a read replica) that make a ready service degraded."""
DISK_PROBE = "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY g) FROM generate_series(1, 5000) AS g"
"""With work_mem at its minimum (64 kB): the rows and their sort spill ~150 kB to temporary files, in ~2 ms."""
NO_WORKER = "not run by this process (serve --no-worker): documents are embedded by a separate worker"
UNKNOWN_WORKER = "unknown: ask the running service with --url"

Connect = Callable[[], contextlib.AbstractContextManager[psycopg.Connection[Any]]]


@dataclass(frozen=True)
class ComponentReport:
    name: str
    state: str
    """'ok', or what is wrong: 'failed', 'stuck', 'starting', 'recovering', 'stopped', 'not run',
    'unknown'."""
    since: datetime | None
    """When it entered this state, None when not known."""
    detail: str
    required: bool
    """Whether the service is ready only when this component is ok."""

    @property
    def ok(self) -> bool:
        return self.state == "ok" or not self.required

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "required": self.required,
            "since": self.since.isoformat() if self.since else None,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Readiness:
    components: list[ComponentReport]
    checked_at: datetime

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.components)

    @property
    def degraded(self) -> bool:
        """Ready, but a component that is not required (a read replica) is down or lagging."""
        return self.ready and any(not c.required and c.state in DEGRADED for c in self.components)

    @property
    def summary(self) -> str:
        """'ready', 'ready, degraded: ' and each component that is down or lagging, or 'not
        ready: ' and each required component that is not ok."""
        failing = [c for c in self.components if not c.ok]
        if not failing:
            weak = [c for c in self.components if not c.required and c.state in DEGRADED]
            return (
                "ready, degraded: " + "; ".join(f"{c.name} {c.state} ({c.detail})" for c in weak) if weak else "ready"
            )
        return "not ready: " + "; ".join(f"{c.name} {c.state} ({c.detail})" for c in failing)

    @property
    def retry_after(self) -> int:
        """Seconds worth waiting before asking again: longer for a full disk, which an operator
        must free."""
        return 30 if any(c.name == "disk" and not c.ok for c in self.components) else 5

    def as_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "degraded": self.degraded,
            "detail": self.summary,
            "checked_at": self.checked_at.isoformat(),
            "components": [c.as_json() for c in self.components],
        }


def check_readiness(connect: Connect, health: Health, *, worker_here: bool = True) -> Readiness:
    """Check the database now and read the process's components from `health`.

    `connect()` gives a connection to use for the checks (closed or returned on exit); it may
    raise KnowledgeError (DatabaseUnavailable) or psycopg.Error, reported as the database's
    failure. The probes' states are recorded in `health` under PROBES. `worker_here`: False
    when the worker's state cannot be known here (`status` without a service), so that it is
    listed as unknown rather than as not run.
    """
    for name, state, detail in _probe(connect):
        health.set(name, state, detail)
    reports = [_from_health(health, name, required=True) for name in PROBES]
    registered = {c.name: c for c in health.components()}
    if "worker" in registered:
        reports.append(_from_health(health, "worker", required=True))
    else:
        reports.append(
            ComponentReport(
                "worker",
                "not run" if worker_here else "unknown",
                None,
                NO_WORKER if worker_here else UNKNOWN_WORKER,
                required=False,
            )
        )
    reports += [
        _from_health(health, name, required=name in REQUIRED)
        for name in sorted(registered)
        if name not in PROBES and name != "worker"
    ]
    return Readiness(reports, datetime.now(UTC))


def _from_health(health: Health, name: str, *, required: bool) -> ComponentReport:
    component = health.get(name)
    assert component is not None
    age = component.beat_age()
    if component.stuck and age is not None and component.stale_after is not None:
        stuck_since = datetime.now(UTC) - timedelta(seconds=age - component.stale_after)
        return ComponentReport(
            name,
            "stuck",
            stuck_since,
            f"its loop last went round {age:.0f} s ago (expected within "
            f"{component.stale_after:.0f} s); last state ok: {component.detail}",
            required,
        )
    return ComponentReport(name, component.state, component.since, component.detail, required)


def _probe(connect: Connect) -> list[tuple[str, str, str]]:
    """(name, state, detail) of the database, the schema and the disk, measured now."""
    unknown = "unknown: the database did not answer"
    try:
        with connect() as conn, conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            began = time.perf_counter()
            cur.execute(f"SET LOCAL statement_timeout = '{TIMEOUT_SECONDS}s'")
            row = cur.execute("SELECT current_setting('server_version')").fetchone()
            assert row is not None
            took = (time.perf_counter() - began) * 1000
            database = ("database", "ok", f"PostgreSQL {row[0]} answered in {took:.0f} ms")
            report = check_database(conn)
            schema = (
                ("schema", "ok", "complete")
                if report.complete
                else (
                    "schema",
                    "failed",
                    f"incomplete: missing {', '.join(report.missing[:5])}"
                    + (f" and {len(report.missing) - 5} more" if len(report.missing) > 5 else "")
                    + "; run `hq-knowledge db migrate`",
                )
            )
            return [database, schema, _disk(conn)]
    except psycopg.errors.QueryCanceled:
        return [
            ("database", "failed", f"no answer within {TIMEOUT_SECONDS} s"),
            ("schema", "unknown", unknown),
            ("disk", "unknown", unknown),
        ]
    except (psycopg.Error, KnowledgeError) as e:
        return [("database", "failed", first_line(e)), ("schema", "unknown", unknown), ("disk", "unknown", unknown)]


def _disk(conn: psycopg.Connection[Any]) -> tuple[str, str, str]:
    try:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            cur.execute("SET LOCAL work_mem = '64kB'")
            cur.execute(DISK_PROBE)
    except psycopg.errors.QueryCanceled:
        raise
    except psycopg.Error as e:
        if is_disk_full(e):
            detail = (
                f"disk full: the database cannot write ({first_line(e)}); writes fail until "
                "space is freed on the database's disk; searches still work"
            )
            return ("disk", "failed", detail)
        return ("disk", "failed", f"a write to the database's disk failed: {first_line(e)}")
    return ("disk", "ok", "writable (a temporary file written in the data directory)")
