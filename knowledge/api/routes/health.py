"""GET /healthz: is the service usable, and how is its database set up."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...schema_check import check_database, keyword_path
from ..deps import Conn

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(conn: Conn) -> JSONResponse:
    report = check_database(conn)
    server = next(item for item in report.items if item.name == "server")
    body: dict[str, Any] = {
        "status": "ok" if report.complete else "degraded",
        "database": server.detail,
        "schema": {"complete": report.complete, "missing": report.missing},
        "keyword_search": keyword_path(conn) if "knowledge_chunks" in _tables(conn) else None,
    }
    return JSONResponse(body, status_code=200 if report.complete else 503)


def _tables(conn: Conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
