"""knowledge.client against the real app and database, checked against the database (the fake
embedder is the active model). The sync client talks HTTP to the app served by uvicorn in a
thread (Starlette's TestClient is an httpx2.Client, not the httpx.Client the client takes);
the async one goes through httpx.ASGITransport inside the app's lifespan, driven from the
test's thread by an anyio portal."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from embeddings.model import FakeEmbedder
from knowledge import client as client_module
from knowledge import errors
from knowledge.agents.mcp_server import AGENT_HEADER
from knowledge.agents.operations import read_document
from knowledge.api import create_app
from knowledge.api.routes import markdown as markdown_routes
from knowledge.client import AsyncKnowledgeClient, BootContext, KnowledgeClient, SavedDocument
from knowledge.ingest.worker import Worker
from knowledge.search.boot import MARKDOWN, boot_bundle, boot_version, bundle_markdown

from .apiclient import LOCAL, local_client
from .mcp_clients import http_service
from .sample_knowledge import KB

Conn = psycopg.Connection[dict[str, Any]]
UNREACHABLE = "http://127.0.0.1:9"


class Blocking:
    """An AsyncKnowledgeClient whose methods are called from this thread through `portal`."""

    def __init__(self, portal: BlockingPortal, client: AsyncKnowledgeClient) -> None:
        self._portal = portal
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._portal.call(functools.partial(method, *args, **kwargs))


@asynccontextmanager
async def served(url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx.AsyncClient on the app in this process, inside the app's lifespan."""
    app = create_app(url)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as http,
    ):
        yield http


@pytest.fixture
def kb(conn: Conn, db_url: str) -> KB:
    return KB(conn, db_url)


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest, kb: KB) -> Iterator[Callable[..., Any]]:
    """make(agent=None): a client of this parameter's kind on one in-process app."""
    with ExitStack() as stack:
        if request.param == "sync":
            base_url = stack.enter_context(http_service(kb.url))

            def make_client(agent: str | None = None) -> Any:
                return stack.enter_context(KnowledgeClient(base_url, agent=agent))
        else:
            portal = stack.enter_context(start_blocking_portal())
            ahttp = stack.enter_context(portal.wrap_async_context_manager(served(kb.url)))

            def make_client(agent: str | None = None) -> Any:
                client = AsyncKnowledgeClient(http=ahttp, agent=agent)
                return Blocking(portal, stack.enter_context(portal.wrap_async_context_manager(client)))

        yield make_client


def test_search(make: Callable[..., Any], kb: KB, conn: Conn, db_url: str) -> None:
    client = make()
    found = client.search("refunded annual plans", limit=2)
    assert found.mode == "hybrid" and len(found.hits) == 2 and found.took_ms > 0
    assert found.model == "fake-hash-384"  # the active model, that ranked the semantic leg
    hit = found.hits[0]
    assert hit.id == kb.ids["Refund policy"] and hit.title == "Refund policy" and hit.kind == "document"
    assert hit.folder_path == "/" and hit.tags == ["billing"] and hit.source_path is None
    chunk = conn.execute(
        "SELECT heading_path, content FROM knowledge_chunks WHERE document_id = %s", [hit.id]
    ).fetchone()
    assert chunk is not None and hit.passages == [(chunk["heading_path"], chunk["content"])]
    assert hit.passages[0][0] == ["Refunds"] and "<mark>refunded</mark>" in hit.snippet
    assert [h.id for h in client.search("sun watering", tags_any=["garden", "nothing"]).hits] == [kb.ids["Tomato care"]]
    assert [h.id for h in client.search("churn engineers", folder=kb.ops).hits] == [kb.ids["Quarterly review"]]
    assert client.search("refund", mode="keyword").mode == "keyword"
    conn.execute(
        "INSERT INTO assets (name, asset_type, content_text) VALUES "
        "('Refund calculator', 'spreadsheet', 'refund amount per plan')"
    )
    Worker(db_url, FakeEmbedder()).run(once=True)
    assets = client.search("refund", kind="asset").hits
    assert [(h.kind, h.title) for h in assets] == [("asset", "Refund calculator")]


def test_get_document(make: Callable[..., Any], kb: KB, conn: Conn) -> None:
    client = make()
    doc_id = kb.ids["Quarterly review"]
    doc = client.get_document(doc_id)
    stored = conn.execute("SELECT updated_at, tags FROM documents WHERE id = %s", [doc_id]).fetchone()
    assert stored is not None
    assert doc.id == doc_id and doc.title == "Quarterly review" and doc.folder_path == "/Operations"
    assert doc.tags == stored["tags"] == ["finance"] and doc.updated_at == stored["updated_at"]
    assert doc.markdown.startswith("# Quarterly review\n\n# Summary\n\nRevenue grew.") and not doc.truncated
    assert doc.sections == ["Summary", "Summary > Churn", "Summary > Hiring"] and doc.section is None
    assert doc.tokens == doc.total_tokens
    part = client.get_document(doc_id, section="HIRING")
    assert part.section == "Summary > Hiring"
    assert part.markdown == "# Quarterly review\n\n## Hiring\n\nTwo engineers joined."
    cut = client.get_document(doc_id, max_tokens=60)
    expected = read_document(conn, doc_id, max_tokens=60)
    assert cut.truncated and cut.tokens <= 60 < cut.total_tokens == doc.total_tokens
    assert (cut.markdown, cut.tokens) == (expected.markdown, expected.tokens)
    with pytest.raises(errors.NotFound) as e:
        client.get_document(doc_id, section="Pricing")
    assert e.value.message.startswith("section: no heading 'Pricing' in this document; its headings: Summary;")


def test_overview(make: Callable[..., Any], kb: KB, conn: Conn) -> None:
    client = make()
    conn.execute("UPDATE documents SET archived_at = now() WHERE id = %s", [kb.ids["Tomato care"]])
    everything = client.overview()
    row = conn.execute("SELECT count(*) AS n FROM documents WHERE archived_at IS NULL").fetchone()
    assert row is not None and everything.documents == row["n"] == 6
    assert everything.folder == "/" and everything.tag is None
    assert [(f.path, f.documents) for f in everything.folders] == [("/Operations", 1)]
    tags = {t.tag: (t.documents, t.assets) for t in everything.tags}
    assert tags["billing"] == (1, 0) and tags["sales"] == (1, 0) and "garden" not in tags
    ids = {r["id"] for r in conn.execute("SELECT id FROM documents WHERE archived_at IS NULL").fetchall()}
    assert {d.id for d in everything.recent} == ids
    ops = client.overview(folder="/operations")
    assert ops.folder == "/Operations" and ops.documents == 1
    assert [d.id for d in ops.recent] == [kb.ids["Quarterly review"]] and ops.recent[0].tags == ["finance"]
    billing = client.overview(tag="billing")
    assert billing.tag == "billing" and billing.documents == 1 and billing.recent[0].title == "Refund policy"
    with pytest.raises(errors.NotFound) as e:
        client.overview(folder="/Nowhere")
    assert e.value.message.startswith("folder: no document folder '/Nowhere'")


def test_save_document_records_the_agent(make: Callable[..., Any], conn: Conn, db_url: str) -> None:
    saved = make(agent="closer").save_document(
        "Competitor notes",
        "# Acme\n\nAcme cut its prices by a third.",
        folder="/Research/Competitors",
        tags=["research", "acme"],
    )
    row = conn.execute(
        "SELECT d.title, d.content_format::text AS fmt, d.content_text, d.tags, a.slug, d.folder_id,"
        " document_folder_path(d.folder_id) AS path FROM documents d"
        " LEFT JOIN agents a ON a.id = d.created_by_agent_id WHERE d.id = %s",
        [saved.id],
    ).fetchone()
    assert row is not None
    assert saved == SavedDocument(
        id=saved.id, title="Competitor notes", folder_path="/Research/Competitors", tags=["research", "acme"]
    )
    assert (row["title"], row["fmt"], row["tags"], row["slug"], row["path"]) == (
        "Competitor notes",
        "markdown",
        ["research", "acme"],
        "closer",
        "/Research/Competitors",
    )
    assert row["content_text"] == "# Acme\n\nAcme cut its prices by a third."
    anonymous = make().save_document("Loose note", "Remember the milk.")
    row = conn.execute("SELECT created_by_agent_id, folder_id FROM documents WHERE id = %s", [anonymous.id]).fetchone()
    assert row == {"created_by_agent_id": None, "folder_id": None} and anonymous.folder_path == "/"
    Worker(db_url, FakeEmbedder()).run(once=True)
    competitors = conn.execute("SELECT folder_id FROM documents WHERE id = %s", [saved.id]).fetchone()
    assert competitors is not None
    hits = make().search("Acme prices", folder=competitors["folder_id"]).hits
    assert [h.id for h in hits] == [saved.id]


def test_update_document(make: Callable[..., Any], kb: KB, conn: Conn) -> None:
    doc_id = kb.ids["Refund policy"]
    updated = make(agent="closer").update_document(doc_id, markdown="# Refunds\n\nNo refunds after 14 days.")
    row = conn.execute(
        "SELECT d.title, d.content_text, d.tags, d.content_version, a.slug FROM documents d"
        " LEFT JOIN agents a ON a.id = d.updated_by_agent_id WHERE d.id = %s",
        [doc_id],
    ).fetchone()
    assert row is not None
    assert updated == SavedDocument(id=doc_id, title="Refund policy", folder_path="/", tags=["billing"])
    assert (row["content_text"], row["title"], row["slug"], row["content_version"]) == (
        "# Refunds\n\nNo refunds after 14 days.",
        "Refund policy",
        "closer",
        2,
    )
    retitled = make().update_document(doc_id, title="Refunds", tags=["billing", "policy"])
    row = conn.execute("SELECT title, tags, content_text FROM documents WHERE id = %s", [doc_id]).fetchone()
    assert row == {
        "title": "Refunds",
        "tags": ["billing", "policy"],
        "content_text": "# Refunds\n\nNo refunds after 14 days.",
    }
    assert retitled.title == "Refunds" and retitled.tags == ["billing", "policy"]
    with pytest.raises(errors.InvalidInput) as e:
        make().update_document(doc_id)
    assert e.value.message == "give at least one of markdown, title, tags"


def test_boot_unchanged_until_a_document_changes(make: Callable[..., Any], kb: KB, conn: Conn) -> None:
    client = make(agent="closer")
    first = client.boot()
    assert first.agent == "closer" and not first.unchanged
    assert first.version == boot_version(conn, "closer", None, MARKDOWN)
    assert first.markdown == bundle_markdown(boot_bundle(conn, "closer", media_type=MARKDOWN))
    assert first.markdown.startswith("# Boot bundle: closer\n")
    assert "Be kind. Write things down." in first.markdown and "Always ask for the budget first." in first.markdown
    assert client.boot(known_version=first.version) == BootContext(
        agent="closer", version=first.version, markdown="", unchanged=True
    )
    assert make().boot("closer", known_version=f'"{first.version}"').unchanged  # quoted as the ETag is
    client.update_document(kb.ids["Sales playbook"], markdown="Ask about the timeline first.")
    second = client.boot(known_version=first.version)
    assert not second.unchanged and second.version != first.version
    assert second.version == boot_version(conn, "closer", None, MARKDOWN)
    assert "Ask about the timeline first." in second.markdown and "budget" not in second.markdown
    short = client.boot(max_tokens=5)
    assert short.version == boot_version(conn, "closer", 5, MARKDOWN) and "# Left out" in short.markdown
    with pytest.raises(errors.InvalidInput) as e:
        make().boot()
    assert e.value.message.startswith("agent_slug: ")
    with pytest.raises(errors.NotFound) as nf:
        make().boot("nobody")
    assert nf.value.message == "agent 'nobody' not found"


def test_server_errors_keep_their_message(make: Callable[..., Any], kb: KB, conn: Conn) -> None:
    client = make()
    missing = uuid.uuid4()
    with pytest.raises(errors.NotFound) as nf:
        client.get_document(missing)
    assert nf.value.message == f"document {missing} not found" and nf.value.status == 404
    assert nf.value.field == "id"  # the input it concerns, as the service answers it
    with pytest.raises(errors.NotFound):
        client.update_document(missing, title="x")
    with pytest.raises(errors.InvalidInput) as e:
        client.search("refund", limit=0)
    assert e.value.message == "limit: from 1 to 100, got 0" and e.value.status == 422 and e.value.field == "limit"
    with pytest.raises(errors.InvalidInput) as e:
        client.search("   ")
    assert e.value.message == "query: must contain at least one non-space character" and e.value.field == "query"
    with pytest.raises(errors.InvalidInput) as e:
        client.search("refund", mode="fuzzy")
    assert e.value.message.startswith("mode: Input should be 'hybrid', 'semantic' or 'keyword'")
    assert e.value.field == "mode"  # from FastAPI's own validation answer
    with pytest.raises(errors.InvalidInput) as e:
        client.get_document(kb.ids["Refund policy"], max_tokens=0)
    assert e.value.message.startswith("max_tokens: ")
    with pytest.raises(errors.InvalidInput) as e:
        client.get_document("not-a-uuid")
    assert e.value.message == "id: a document's id (a UUID), got 'not-a-uuid'"
    before = conn.execute("SELECT count(*) AS n FROM documents").fetchone()
    with pytest.raises(errors.NotFound) as nf:
        make(agent="ghost").save_document("Ghost note", "Boo.")
    assert nf.value.message == "agent 'ghost' not found"
    with pytest.raises(errors.InvalidInput) as e:
        make(agent="Not A Slug").save_document("Bad note", "Text.")
    assert e.value.message.startswith("X-HQ-Agent header: agent slug 'Not A Slug' is not valid")
    assert conn.execute("SELECT count(*) AS n FROM documents").fetchone() == before


def test_unreachable_service() -> None:
    with KnowledgeClient(UNREACHABLE, timeout=5) as client, pytest.raises(errors.ServiceUnavailable) as e:
        client.overview()
    expected = f"cannot reach the knowledge service at {UNREACHABLE} ("
    assert e.value.message.startswith(expected) and e.value.message.endswith("start it with `hq-knowledge serve`")
    assert e.value.status == 503

    async def main() -> None:
        async with AsyncKnowledgeClient(UNREACHABLE, timeout=5) as client:
            await client.search("anything")

    with pytest.raises(errors.ServiceUnavailable) as ae:
        anyio.run(main)
    assert ae.value.message.startswith(expected)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"detail": "bad"}, errors.InvalidInput),
        (409, {"detail": "taken"}, errors.Conflict),
        (413, {"detail": "too big"}, errors.TooLarge),
        (503, {"detail": "the database is unavailable: down"}, errors.DatabaseUnavailable),
        (418, {"detail": "teapot"}, errors.KnowledgeError),
    ],
)
def test_status_picks_the_error(status: int, body: dict[str, str], error: type[errors.KnowledgeError]) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    with KnowledgeClient("http://kb", transport=transport) as client, pytest.raises(errors.KnowledgeError) as e:
        client.overview()
    assert type(e.value) is error and e.value.message == body["detail"] and e.value.status == status


def test_an_answer_that_is_not_json_is_quoted() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="<h1>Bad gateway</h1>"))
    with KnowledgeClient("http://kb", transport=transport) as client, pytest.raises(errors.KnowledgeError) as e:
        client.overview(tag="x")
    assert e.value.message == "HTTP 502 from http://kb/overview?tag=x: <h1>Bad gateway</h1>"


def test_the_agent_header_is_the_mcp_servers() -> None:
    assert client_module.AGENT_HEADER == markdown_routes.AGENT_HEADER == AGENT_HEADER


def test_markdown_routes_leave_the_document_routes_alone(kb: KB) -> None:
    doc_id = kb.ids["Refund policy"]
    with local_client(create_app(kb.url)) as http:
        plain = http.get(f"/documents/{doc_id}")
        assert plain.status_code == 200 and plain.json()["content_text"].startswith("# Refunds")
        text = http.get(f"/documents/{doc_id}/markdown")
        assert text.status_code == 200 and text.json()["markdown"].startswith("# Refund policy\n\n# Refunds")
        made = http.post("/documents/markdown", json={"title": "Route note", "markdown": "Hello."})
        assert made.status_code == 201 and made.json()["content_format"] == "markdown"
        wrong = http.get("/documents/markdown")  # the literal path, not a document id
        assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"


def test_a_callers_http_client_is_used_and_left_open(kb: KB, conn: Conn) -> None:
    with http_service(kb.url) as base, httpx.Client(base_url=base) as http:
        with KnowledgeClient("http://unused.invalid", http=http, agent="closer") as client:
            saved = client.save_document("Via my client", "Sent through the caller's httpx.Client.")
        assert not http.is_closed
        row = conn.execute(
            "SELECT a.slug FROM documents d JOIN agents a ON a.id = d.created_by_agent_id WHERE d.id = %s", [saved.id]
        ).fetchone()
        assert row == {"slug": "closer"}
        assert http.get(f"/documents/{saved.id}").status_code == 200
