"""End to end with the packaged all-MiniLM-L6-v2: an agent writes through MCP, the worker
indexes it, the agent finds it again in other words, and its boot context over MCP is the
REST boot bundle, byte for byte and version for version."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import psycopg
import pytest

from embeddings.model import SentenceTransformerEmbedder
from knowledge.ingest.worker import Worker
from knowledge.search.setup import forget_setup

from .factories import add_document
from .mcp_clients import http_service, mcp_client, structured, text
from .test_search import DOCS

Conn = psycopg.Connection[dict[str, Any]]

NOTE = (
    "Travel expenses: employees must hand in the receipts for a business trip within 30 days of coming "
    "back. Claims that arrive later are not reimbursed, whatever the amount."
)


@pytest.mark.slow
def test_agent_saves_finds_and_boots_through_mcp(conn: Conn, db_url: str) -> None:
    for title, body, tags in DOCS:
        add_document(conn, title, body, tags)
    add_document(conn, "Office plants", "Water the office ferns on Mondays; the cactus once a month.", ["office"])
    conn.execute("INSERT INTO agents (slug, name) VALUES ('closer', 'Closer')")
    add_document(conn, "House rules", "Be kind. Write things down.", ["boot:all"])
    forget_setup()
    worker = Worker(db_url, SentenceTransformerEmbedder())
    worker.run(once=True)

    with http_service(db_url) as base:

        async def save() -> Any:
            async with mcp_client("http", db_url, base_url=base, agent="closer") as c:
                return await c.call_tool(
                    "save_document",
                    {"title": "Expense claims", "markdown": NOTE, "folder": "/Finance", "tags": ["boot:closer"]},
                )

        saved = structured(anyio.run(save))
        before = worker.stats.indexed  # the worker's counts add up over its runs
        assert worker.run(once=True).indexed - before == 1

        async def use(known: str | None = None) -> tuple[Any, Any]:
            async with mcp_client("http", db_url, base_url=base, agent="closer") as c:
                found = await c.call_tool(
                    "search_knowledge", {"query": "how long do I have to turn in my receipts after a work trip?"}
                )
                boot = await c.call_tool("boot_context", {"known_version": known} if known else {})
                return found, boot

        found, boot = anyio.run(use)
        hits = structured(found)["hits"]
        assert hits[0]["id"] == saved["id"], text(found)
        assert hits[0]["semantic_rank"] == 1
        rest = httpx.get(f"{base}/boot/closer", headers={"Accept": "text/markdown"})
        assert rest.status_code == 200
        assert text(boot) == rest.text and "Expense claims" in rest.text and "House rules" in rest.text
        version = structured(boot)["version"]
        assert rest.headers["ETag"] == f'"{version}"'

        _, again = anyio.run(use, version)
        assert structured(again)["unchanged"] is True and text(again).startswith("unchanged")

        async def edit() -> Any:
            async with mcp_client("http", db_url, base_url=base, agent="closer") as c:
                return await c.call_tool(
                    "update_document", {"id": saved["id"], "markdown": NOTE + " Ask finance for exceptions."}
                )

        structured(anyio.run(edit))
        _, changed = anyio.run(use, version)
        assert structured(changed)["unchanged"] is False and "Ask finance for exceptions." in text(changed)
        assert (
            httpx.get(f"{base}/boot/closer", headers={"Accept": "text/markdown"}).headers["ETag"]
            == f'"{structured(changed)["version"]}"'
        )
