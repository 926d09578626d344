"""Browser-test fixtures: the sample knowledge base served by the API on a free local port
(`site`), and Debian's Chromium driven by Playwright's Python driver (`browser`, `page`).

Playwright's own browser download is not used: the tests launch /usr/bin/chromium (Debian's
`chromium` package; .ci/run installs it). Without it the tests are skipped, or fail when the
environment variable CI is set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from knowledge.store.assets import create_asset
from knowledge.store.importer import import_folder, import_sample_agents, sample_dir

from ..conftest import Server, _own_bm25_index
from ..factories import index_with_fake
from ..mcp_clients import http_service

CHROMIUM = Path(os.environ.get("HQ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # A closed network refuses Chromium's own background connections: keep it from making them.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}

# The sample document whose embedding is made to fail (for the retry test).
FAILED_TITLE = "Market sizing for operational analytics in logistics and distribution"
FAILED_ERROR = "extract failed: test"

# Assets added next to the sample's documents, so that kind=asset has something to keep.
ASSETS: list[dict[str, Any]] = [
    {
        "name": "Competitor pricing tracker",
        "asset_type": "spreadsheet",
        "tags": ["research", "pricing"],
        "description": "Spreadsheet of competitor pricing: plans, seats, discounts and annual prepay terms.",
        "content_text": "Competitor, plan, list price per seat, annual discount, notes on pricing changes.",
    },
    {
        "name": "Discount approval form",
        "asset_type": "link",
        "url": "https://example.com/forms/discount",
        "tags": ["sales", "pricing", "discount"],
        "description": "The form a sales rep fills in to ask for a discount above the pricing policy's limit.",
    },
]


@dataclass
class Site:
    """The served sample knowledge base: `base` is the API's URL, `db_url` its database."""

    base: str
    db_url: str
    doc_ids: dict[str, str] = field(default_factory=dict)  # title -> id of the sample's documents
    asset_ids: dict[str, str] = field(default_factory=dict)
    failed_id: str = ""

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)

    def get(self, path: str, **params: Any) -> Any:
        with self.api() as http:
            response = http.get(path, params=params)
        assert response.status_code == 200, f"GET {path} {params}: {response.status_code} {response.text}"
        return response.json()

    def search(self, q: str, **params: Any) -> list[dict[str, Any]]:
        hits: list[dict[str, Any]] = self.get("/search", q=q, **params)["hits"]
        return hits

    def db(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.db_url, autocommit=True, row_factory=dict_row)

    def page_url(self, **params: str) -> str:
        return str(httpx.URL(self.base + "/", params=params)) if params else self.base + "/"


@pytest.fixture(scope="session")
def site(pg_server: Server, template_db: str) -> Iterator[Site]:
    """A database of its own with the sample knowledge base (documents, agents) and two assets,
    indexed with the fake embedder (the active model); one document's embedding marked failed;
    the API serving it in this process."""
    name = pg_server.create_db(template=template_db)
    url = pg_server.url(name)
    try:
        _own_bm25_index(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            import_sample_agents(conn)
            result = import_folder(conn, sample_dir())
            assert not result.errors, result.errors
            asset_ids = {a["name"]: str(create_asset(conn, **a).id) for a in ASSETS}
            index_with_fake(conn, url)
            failed = conn.execute(
                "UPDATE documents SET embedding_status = 'failed', embedding_error = %s WHERE title = %s RETURNING id",
                [FAILED_ERROR, FAILED_TITLE],
            ).fetchall()
            assert len(failed) == 1, f"the sample has no single document titled {FAILED_TITLE!r}"
            doc_ids = {r["title"]: str(r["id"]) for r in conn.execute("SELECT id, title FROM documents")}
            unindexed = conn.execute(
                "SELECT title FROM documents WHERE embedding_status NOT IN ('indexed', 'failed')"
                " UNION ALL SELECT name FROM assets WHERE embedding_status <> 'indexed'"
            ).fetchall()
            assert not unindexed, f"not indexed: {unindexed}"
        with http_service(url) as base:
            yield Site(base=base, db_url=url, doc_ids=doc_ids, asset_ids=asset_ids, failed_id=str(failed[0]["id"]))
    finally:
        pg_server.drop_db(name)


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def _chromium_available() -> None:
    """Skip (fail under CI) before any database is built when the browser cannot run."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright's sync API. Module scope, not session:
    while Playwright's sync API is started, its asyncio loop counts as running in the main
    thread, and later tests' `asyncio.run`/`anyio.run` would fail ("Already running asyncio")."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1280x800 page (own context: no shared storage or history). The page's uncaught
    errors and console errors are printed at the end (pytest shows them when a test fails)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(10_000)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    pg.on(
        "console",
        lambda msg: (
            problems.append(f"console.{msg.type}: {msg.text} ({msg.location.get('url')})")
            if msg.type in ("error", "warning")
            else None
        ),
    )
    pg.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status}: {r.request.method} {r.url}") if r.status >= 400 else None,
    )
    try:
        yield pg
    finally:
        for line in problems:
            print(line)
        context.close()
