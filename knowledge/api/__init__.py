"""The HTTP API: `create_app(database_url)` builds the FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from .. import __version__
from ..errors import KnowledgeError
from .routes import assets, boot, documents, folders, health, tags, search

__all__ = ["create_app"]


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Per connection: vectors as numpy, and HNSW scans that keep going until a filtered
    query has its rows (pgvector >= 0.8; older servers search without iterative scans)."""
    register_vector(conn)
    for setting in ("SET hnsw.iterative_scan = relaxed_order", "SET hnsw.ef_search = 200"):
        try:
            conn.execute(setting)
        except psycopg.errors.UndefinedObject:
            pass


def create_app(database_url: str, *, pool_size: int = 10) -> FastAPI:
    """The application. Its connection pool is opened when the app starts and closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ConnectionPool(database_url, min_size=1, max_size=pool_size, open=False,
                              kwargs={"autocommit": True, "application_name": "hq-knowledge-api"},
                              configure=_configure)
        pool.open(wait=True, timeout=30)
        app.state.pool = pool
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(title="HQ Knowledge", version=__version__, lifespan=lifespan)

    @app.exception_handler(KnowledgeError)
    async def knowledge_error(request: Request, exc: KnowledgeError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    app.include_router(health.router)
    app.include_router(documents.router)
    app.include_router(assets.router)
    app.include_router(folders.router)
    app.include_router(tags.router)
    app.include_router(boot.router)
    app.include_router(search.router)
    return app
