"""GET /healthz (liveness: the process answers, and what it knows of itself) and GET /readyz
(readiness: whether it can do its whole job now; 503 with Retry-After when not)."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from psycopg.rows import tuple_row
from pydantic import BaseModel, Field

from knowledge.db.keyword_index import keyword_path
from knowledge.db.pools import pooled_connection
from knowledge.db.readiness import PROBES, check_readiness
from knowledge.db.replicas import ReadRouter
from knowledge.db.schema_check import check_database
from knowledge.errors import KnowledgeError
from knowledge.health import Component, Health

router = APIRouter(tags=["health"])

BROKEN = ("failed", "stopped", "down", "lagging")
"""States of a component of `health` that make /healthz say "degraded" (down and lagging: a read
replica's)."""


class ComponentPublic(BaseModel):
    name: str
    state: str = Field(
        description="`ok`, or what is wrong: `failed`, `stuck`, `starting`, `recovering`, "
        "`stopped`, `not run`, `unknown`; a read replica's `down` or `lagging`."
    )
    required: bool = Field(description="Whether the service is ready only when this component is ok.")
    since: str | None = Field(description="When it entered this state (ISO 8601), null when not known.")
    detail: str


class ReplicaPublic(BaseModel):
    url: str = Field(description="The replica's URL (HQ_READ_DATABASE_URL), its password hidden.")
    state: str = Field(
        description="`ok` (reads go to it), `lagging` (more than HQ_READ_MAX_LAG behind the "
        "primary), `down` (unreachable) or `starting` (not checked yet)."
    )
    lag_seconds: float | None = Field(
        description="Seconds since the primary was at a WAL position the "
        "replica has not replayed; 0 when it has all; null when down."
    )
    replayed_lsn: str | None = Field(description="The WAL position the replica has replayed.")
    since: str
    detail: str


class ReadinessPublic(BaseModel):
    ready: bool
    degraded: bool = Field(
        description="Ready, but a read replica is down or lagging: reads go to the primary or another replica."
    )
    detail: str = Field(
        description="`ready`, `ready, degraded: ` and each replica that is down or lagging, or "
        "`not ready: ` and each required component that is not ok."
    )
    checked_at: str
    components: list[ComponentPublic] = Field(
        description="database, schema, disk, worker, and the process's other components."
    )
    replicas: list[ReplicaPublic] = Field(description="The read replicas (none without HQ_READ_DATABASE_URL).")


def _health(request: Request) -> Health:
    health: Health = request.app.state.health
    return health


def _component_json(c: Component) -> dict[str, Any]:
    state = "stuck" if c.stuck else c.state
    return {"name": c.name, "state": state, "since": c.since.isoformat(), "detail": c.detail}


@router.get(
    "/healthz",
    summary="Liveness: the process answers",
    description="200 while the process answers, whatever its state: `status` is `ok`, or "
    "`degraded` when the database is unreachable, the schema incomplete, or a "
    "component (the worker, the embedded server) failed, stopped or is stuck, or a "
    "read replica is down or lagging (`replicas` lists them with their lag). "
    "Whether the service can do its whole job now is GET /readyz.",
)
def healthz(request: Request) -> JSONResponse:
    components = [c for c in _health(request).components() if c.name not in PROBES]
    body: dict[str, Any] = {"status": "ok", "database": None, "schema": None, "keyword_search": None}
    try:
        with pooled_connection(request.app.state.pool) as conn:
            report = check_database(conn)
            server = next(item for item in report.items if item.name == "server")
            body["database"] = server.detail
            body["schema"] = {"complete": report.complete, "missing": report.missing}
            row = conn.cursor(row_factory=tuple_row).execute("SELECT to_regclass('knowledge_chunks')").fetchone()
            if row is not None and row[0] is not None:
                body["keyword_search"] = keyword_path(conn)
            healthy = report.complete
    except (KnowledgeError, psycopg.Error) as e:
        body["database"] = f"unavailable: {e.message if isinstance(e, KnowledgeError) else e}".strip()
        healthy = False
    if not healthy or any(c.stuck or c.state in BROKEN for c in components):
        body["status"] = "degraded"
    body["components"] = [_component_json(c) for c in components]
    body["replicas"] = _replicas(request)
    return JSONResponse(body)


def _replicas(request: Request) -> list[dict[str, Any]]:
    reads: ReadRouter = request.app.state.reads
    return [r.as_json() for r in reads.report()]


@router.get(
    "/readyz",
    response_model=ReadinessPublic,
    summary="Readiness: can it do its whole job now",
    description="200 when every required component is ok: the database answers within 3 s, "
    "the schema is complete, the database's disk takes a write, the ingestion "
    "worker's loop is running (when this process runs one), and the embedded "
    "server is up (when it has one). Otherwise 503, the same body, and "
    "Retry-After; `detail` names what is not ok. A read replica that is down or "
    "lagging leaves it ready (reads go to the primary) but `degraded`.",
)
def readyz(request: Request) -> JSONResponse:
    pool = request.app.state.pool
    readiness = check_readiness(lambda: pooled_connection(pool), _health(request))
    body = {**readiness.as_json(), "replicas": _replicas(request)}
    if readiness.ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(readiness.retry_after)})
