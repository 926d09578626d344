"""GET /healthz (liveness: the process answers, and what it knows of itself) and GET /readyz
(readiness: whether it can do its whole job now; 503 with Retry-After when not)."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from psycopg.rows import tuple_row
from pydantic import BaseModel, Field

from ...db import pooled_connection
from ...errors import KnowledgeError
from ...health import Component, Health
from ...readiness import PROBES, check_readiness
from ...keyword_index import keyword_path
from ...schema_check import check_database

router = APIRouter(tags=["health"])

BROKEN = ("failed", "stopped")
"""States of a component of `health` that make /healthz say "degraded"."""


class ComponentPublic(BaseModel):
    name: str
    state: str = Field(description="`ok`, or what is wrong: `failed`, `stuck`, `starting`, `recovering`, "
                                   "`stopped`, `not run`, `unknown`.")
    required: bool = Field(description="Whether the service is ready only when this component is ok.")
    since: str | None = Field(description="When it entered this state (ISO 8601), null when not known.")
    detail: str


class ReadinessPublic(BaseModel):
    ready: bool
    detail: str = Field(description="`ready`, or `not ready: ` and each required component that is not ok.")
    checked_at: str
    components: list[ComponentPublic] = Field(
        description="database, schema, disk, worker, and the process's other components.")


def _health(request: Request) -> Health:
    health: Health = request.app.state.health
    return health


def _component_json(c: Component) -> dict[str, Any]:
    state = "stuck" if c.stuck else c.state
    return {"name": c.name, "state": state, "since": c.since.isoformat(), "detail": c.detail}


@router.get("/healthz", summary="Liveness: the process answers",
            description="200 while the process answers, whatever its state: `status` is `ok`, or "
                        "`degraded` when the database is unreachable, the schema incomplete, or a "
                        "component (the worker, the embedded server) failed, stopped or is stuck. "
                        "Whether the service can do its whole job now is GET /readyz.")
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
    return JSONResponse(body)


@router.get("/readyz", response_model=ReadinessPublic, summary="Readiness: can it do its whole job now",
            description="200 when every required component is ok: the database answers within 3 s, "
                        "the schema is complete, the database's disk takes a write, the ingestion "
                        "worker's loop is running (when this process runs one), and the embedded "
                        "server is up (when it has one). Otherwise 503, the same body, and "
                        "Retry-After; `detail` names what is not ok.")
def readyz(request: Request) -> JSONResponse:
    pool = request.app.state.pool
    readiness = check_readiness(lambda: pooled_connection(pool), _health(request))
    if readiness.ready:
        return JSONResponse(readiness.as_json())
    return JSONResponse(readiness.as_json(), status_code=503,
                        headers={"Retry-After": str(readiness.retry_after)})
