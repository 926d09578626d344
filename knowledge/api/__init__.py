"""The HTTP API: `create_app(database_url)` builds the FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..db import open_search_pool
from ..errors import KnowledgeError
from .routes import (
    agent,
    agents,
    assets,
    boot,
    documents,
    folders,
    health,
    reembed,
    search,
    status,
    tags,
    ui,
)

__all__ = ["create_app"]


def create_app(database_url: str, *, pool_size: int = 10, mcp_read_only: bool = False,
               host: str = "127.0.0.1") -> FastAPI:
    """The application. Its connection pool is opened when the app starts and closed at
    shutdown. The MCP server answers at /mcp (streamable HTTP), on the same pool; `host` is
    the address the app listens on (on a loopback address, /mcp accepts only local Host
    and Origin headers)."""
    from ..mcp_server import build_mcp_server

    mcp = build_mcp_server(lambda: app.state.pool, read_only=mcp_read_only)
    mcp_app = mcp.streamable_http_app(streamable_http_path="/mcp", host=host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = open_search_pool(database_url, max_size=pool_size, application_name="hq-knowledge-api")
        app.state.pool = pool
        app.state.database_url = database_url
        app.state.reembeds = {}  # job id -> (runner thread, stop event)
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            for thread, stop in app.state.reembeds.values():
                stop.set()  # each finishes (and commits) its current batch
            for thread, _stop in app.state.reembeds.values():
                thread.join(timeout=60)
            pool.close()

    app = FastAPI(title="HQ Knowledge", version=__version__, lifespan=lifespan)

    @app.exception_handler(KnowledgeError)
    async def knowledge_error(request: Request, exc: KnowledgeError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    app.include_router(health.router)
    app.include_router(documents.router)
    app.include_router(agent.router)  # /documents/{id}/markdown: one segment more than /documents/{id}
    app.include_router(assets.router)
    app.include_router(folders.router)
    app.include_router(tags.router)
    app.include_router(boot.router)
    app.include_router(search.router)
    app.include_router(reembed.router)
    app.include_router(status.router)
    app.include_router(agents.router)
    app.include_router(ui.router)  # GET /: the operator's search page
    app.mount("/static", ui.static_files(), name="static")  # only paths under /static/
    app.router.routes.extend(mcp_app.routes)  # POST/GET/DELETE /mcp
    return app
