"""The operator's page and the two routes it alone needs: GET /, /static, /status, /agents."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from knowledge.api import create_app
from knowledge.db.keyword_index import keyword_path
from knowledge.search.admission import default_limit, default_queue
from knowledge.store.assets import create_asset
from knowledge.store.documents import archive_document, create_document

from .apiclient import local_client

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with local_client(create_app(db_url)) as c:
        yield c


def test_status_counts_stored_items_and_queue(conn: Conn, client: TestClient) -> None:
    empty = client.get("/status").json()
    searches = empty.pop("searches")
    assert empty == {
        "documents": 0,
        "assets": 0,
        "passages": 0,
        "queue": 0,
        "failed": 0,
        "active_model": "all-MiniLM-L6-v2",
        "keyword_path": keyword_path(conn),
    }
    assert searches == {
        "limit": default_limit(),
        "queue": default_queue(default_limit()),
        "in_flight": 0,
        "admitted": 0,
        "queued": 0,
        "refused": 0,
        "timed_out": 0,
        "query_batches": searches["query_batches"],
    }

    first = create_document(conn, title="Refunds", content_text="Refund within 30 days.")
    create_document(conn, title="Pricing", content_text="Plans and prices.")
    create_asset(conn, name="Logo", description="The company logo.")
    status = client.get("/status").json()
    assert (status["documents"], status["assets"], status["queue"], status["failed"]) == (2, 1, 3, 0)

    conn.execute("UPDATE documents SET embedding_status = 'failed', embedding_error = 'boom' WHERE id = %s", [first.id])
    archive_document(conn, first.id)
    status = client.get("/status").json()
    assert (status["documents"], status["queue"], status["failed"]) == (1, 2, 1)


def test_status_names_no_model_when_none_is_active(conn: Conn, client: TestClient) -> None:
    conn.execute("UPDATE embedding_models SET is_active = false")
    assert client.get("/status").json()["active_model"] is None


def test_agents_are_listed_by_slug(conn: Conn, client: TestClient) -> None:
    assert client.get("/agents").json() == []
    for slug, name in [("scout", "Scout"), ("closer", "Closer"), ("builder", "Builder")]:
        conn.execute("INSERT INTO agents (slug, name) VALUES (%s, %s)", [slug, name])
    assert client.get("/agents").json() == [
        {"slug": "builder", "name": "Builder"},
        {"slug": "closer", "name": "Closer"},
        {"slug": "scout", "name": "Scout"},
    ]


def test_page_and_its_files_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for needle in (
        'id="q"',
        'id="results"',
        'src="/static/app.js"',
        'src="/static/markdown.js"',
        'href="/static/app.css"',
    ):
        assert needle in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN

    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "hqLastRender" in script.text
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/nothing.js").status_code == 404
    assert client.get("/static/../api/__init__.py").status_code == 404


def test_page_leaves_the_api_docs_and_mcp_routes_alone(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    assert client.get("/healthz").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/status" in paths and "/agents" in paths
    assert client.get("/search", params={"q": "x" * 1001}).status_code == 422
    assert "/mcp" in [getattr(r, "path", None) for r in client.app.routes]  # type: ignore[attr-defined]
