"""MCP clients for the tests: the SDK's own `Client` over stdio (`hq-knowledge mcp` as a
subprocess) and over streamable HTTP (the API served by uvicorn in a thread)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx2
import uvicorn
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from knowledge.api import AccessPolicy, create_app
from knowledge.health import Health


@contextmanager
def http_service(
    db_url: str, *, mcp_read_only: bool = False, require_keys: bool = False, health: Health | None = None, **config: Any
) -> Iterator[str]:
    """The API (with /mcp) on a free local port, in this process; yields its base URL.
    `require_keys`: every request needs an API key; `health`: the components readiness
    reports; `config` goes to uvicorn."""
    listening = socket.create_server(("127.0.0.1", 0))  # held from here on: no other server can take the port
    port = int(listening.getsockname()[1])
    access = AccessPolicy.for_bind("127.0.0.1", port, require_keys=require_keys)
    app = create_app(db_url, mcp_read_only=mcp_read_only, host="127.0.0.1", port=port, access=access, health=health)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()


def stdio_params(db_url: str, *args: str) -> StdioServerParameters:
    env = {**os.environ, "HQ_DATABASE_URL": db_url, "HQ_EMBEDDER": "fake"}
    return StdioServerParameters(command=sys.executable, args=["-m", "knowledge", "mcp", *args], env=env)


@asynccontextmanager
async def mcp_client(
    transport: str,
    db_url: str,
    *,
    base_url: str | None = None,
    agent: str | None = None,
    read_only: bool = False,
    key: str | None = None,
) -> AsyncIterator[Client]:
    """An entered SDK client: over stdio a new `hq-knowledge mcp` process (bound to `agent`);
    over HTTP the service at `base_url` (the agent sent as the X-HQ-Agent header, `key` as
    `Authorization: Bearer`)."""
    if transport == "stdio":
        args = [*(["--agent", agent] if agent else []), *(["--read-only"] if read_only else [])]
        async with Client(stdio_params(db_url, *args), read_timeout_seconds=120) as client:
            yield client
        return
    assert base_url is not None
    headers = {"X-HQ-Agent": agent} if agent else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http), read_timeout_seconds=120) as client,
    ):
        yield client


def text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return dict(result.structured_content)
