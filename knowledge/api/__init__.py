"""The HTTP API: `create_app(database_url)` builds the FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from mcp.server.transport_security import TransportSecuritySettings

from embeddings.onnx import report_searches_in_flight
from knowledge import __version__
from knowledge.api.openapi import MethodTable, document_errors
from knowledge.api.reads import ReadRouting
from knowledge.api.routes import (
    agents,
    assets,
    boot,
    documents,
    folders,
    keys,
    markdown,
    reembed,
    search,
    status,
    tags,
    ui,
)
from knowledge.api.routes import health as health_routes
from knowledge.api.security import AccessPolicy, Gate, authorize, is_public
from knowledge.api.shedding import Shedding
from knowledge.db.pools import open_search_pool
from knowledge.db.replicas import ReadRouter
from knowledge.errors import KnowledgeError
from knowledge.health import Health
from knowledge.search.admission import Admission, admission_for

__all__ = ["AccessPolicy", "create_app"]


def create_app(
    database_url: str,
    *,
    pool_size: int = 10,
    mcp_read_only: bool = False,
    host: str = "127.0.0.1",
    port: int = 8765,
    access: AccessPolicy | None = None,
    health: Health | None = None,
    read_urls: Sequence[str] = (),
    read_max_lag: float = 5.0,
    admission: Admission | None = None,
    prepared_statements: bool = True,
) -> FastAPI:
    """The application. Its connection pool is opened when the app starts and closed at
    shutdown. The MCP server answers at /mcp (streamable HTTP), on the same pool. `access`
    says who may call it (knowledge.api.security); by default, that of a service listening
    on `host:port`: on a loopback address, requests with that address or `localhost` as
    Host, without a key. `health` holds the state of the process's other components (the
    ingestion worker, the embedded server's watchdog) that readiness reports.

    `read_urls`: streaming replicas of `database_url` (HQ_READ_DATABASE_URL), each with a pool
    of its own, that searches, boot bundles and the GET routes of documents, assets, folders
    and tags read from while they lag at most `read_max_lag` seconds (knowledge.db.replicas,
    knowledge.api.reads); writes and everything else stay on the primary.

    `admission`: the bound on searches in flight, REST and MCP together (knowledge.search.admission);
    by default two per core with two waiting places per slot. `prepared_statements` False:
    nothing is prepared on its connections (HQ_PREPARED_STATEMENTS=0, for a pooler in
    transaction mode)."""
    from knowledge.agents.mcp_server import build_mcp_server

    policy = access or AccessPolicy.for_bind(host, port)
    admission = admission or admission_for()
    mcp = build_mcp_server(
        lambda: app.state.pool,
        read_only=mcp_read_only,
        read_router=lambda: app.state.reads,
        admission=lambda: app.state.admission,
    )
    # The Gate checks Host and Origin for /mcp as for every route (the SDK's own check would
    # accept any localhost origin and know nothing of HQ_ALLOWED_HOSTS).
    mcp_app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        host=host,
        transport_security=(TransportSecuritySettings(enable_dns_rebinding_protection=False)),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.openapi()  # built now (with its Unicode patterns), not at the first request
        pool = open_search_pool(
            database_url, max_size=pool_size, application_name="hq-knowledge-api", prepared=prepared_statements
        )
        app.state.pool = pool
        app.state.database_url = database_url
        app.state.health = health if health is not None else Health()
        app.state.admission = admission
        report_searches_in_flight(lambda: admission.in_flight)  # the query embedder's threads follow it
        app.state.reembeds = {}  # job id -> (runner thread, stop event)
        # A replica that is down when the service starts is read from once it is up.
        replicas = [
            (
                url,
                open_search_pool(
                    url,
                    max_size=pool_size,
                    application_name="hq-knowledge-api-read",
                    replica=True,
                    prepared=prepared_statements,
                ),
            )
            for url in read_urls
        ]
        reads = ReadRouter(database_url, pool, replicas, max_lag=read_max_lag, health=app.state.health)
        app.state.reads = reads
        reads.start()
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            for _thread, stop in app.state.reembeds.values():
                stop.set()  # each finishes (and commits) its current batch
            for thread, _stop in app.state.reembeds.values():
                thread.join(timeout=60)
            reads.close()
            for _url, replica_pool in replicas:
                replica_pool.close()
            pool.close()

    app = FastAPI(title="HQ Knowledge", version=__version__, lifespan=lifespan, dependencies=[Depends(authorize)])
    if read_urls:
        app.add_middleware(ReadRouting, reads=lambda: app.state.reads)
    app.add_middleware(MethodTable, paths=lambda: app.openapi()["paths"])
    app.add_middleware(Shedding, admission=lambda: app.state.admission)
    app.add_middleware(Gate, policy=policy, pool=lambda: app.state.pool)  # outermost

    @app.exception_handler(KnowledgeError)
    async def knowledge_error(request: Request, exc: KnowledgeError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        content = {"detail": exc.message} if exc.field is None else {"detail": exc.message, "field": exc.field}
        return JSONResponse(status_code=exc.status, content=content, headers=headers)

    app.include_router(health_routes.router)
    app.include_router(documents.router)
    app.include_router(markdown.router)  # /documents/{id}/markdown: one segment more than /documents/{id}
    app.include_router(assets.router)
    app.include_router(folders.router)
    app.include_router(tags.router)
    app.include_router(boot.router)
    app.include_router(search.router)
    app.include_router(reembed.router)
    app.include_router(status.router)
    app.include_router(agents.router)
    app.include_router(keys.router)
    app.include_router(ui.router)  # GET /: the operator's search page
    app.mount("/static", ui.static_files(), name="static")  # only paths under /static/
    app.router.routes.extend(mcp_app.routes)  # POST/GET/DELETE /mcp

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate(), public=is_public)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
