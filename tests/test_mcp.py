"""The MCP server, driven by the SDK's own client over stdio and over streamable HTTP, checked
against the database (the fake embedder is the active model)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import psycopg
import pytest

from knowledge.agents.mcp_server import SEARCH_ANSWER_TOKENS
from knowledge.search.boot import MARKDOWN, boot_bundle, bundle_markdown, default_token_counter
from knowledge.store.documents import update_document
from knowledge.store.importer import import_folder, import_sample_agents, sample_dir

from .factories import index_with_fake
from .mcp_clients import http_service, mcp_client, structured, text
from .sample_knowledge import KB

Conn = psycopg.Connection[dict[str, Any]]
TRANSPORTS = ["stdio", "http"]


@pytest.fixture
def kb(conn: Conn, db_url: str) -> KB:
    return KB(conn, db_url)


@pytest.fixture
def http_base(kb: KB) -> Iterator[str]:
    with http_service(kb.url) as base:
        yield base


@pytest.fixture(params=TRANSPORTS)
def session(request: pytest.FixtureRequest, kb: KB) -> Callable[..., Any]:
    """Run `async fn(client)` with a client over this parameter's transport, bound to `closer`."""
    transport = request.param

    def run(fn: Callable[[Any], Awaitable[Any]], **kwargs: Any) -> Any:
        async def main() -> Any:
            async with mcp_client(transport, kb.url, base_url=base, **{"agent": "closer", **kwargs}) as client:
                return await fn(client)

        return anyio.run(main)

    base = request.getfixturevalue("http_base") if transport == "http" else None
    return run


def test_tools_are_listed_with_schemas_and_descriptions(session: Callable[..., Any]) -> None:
    tools = {t.name: t for t in session(lambda c: c.list_tools()).tools}
    assert set(tools) == {
        "search_knowledge",
        "get_document",
        "boot_context",
        "list_knowledge",
        "save_document",
        "update_document",
    }
    for tool in tools.values():
        assert tool.description and len(tool.description) > 150, tool.name
        assert tool.input_schema["type"] == "object"
    search = tools["search_knowledge"].input_schema
    assert search["required"] == ["query"]
    assert search["properties"]["limit"]["default"] == 5
    assert set(search["properties"]) == {"query", "limit", "mode", "tags_any", "folder", "kind"}
    assert "ctx" not in tools["boot_context"].input_schema["properties"]
    assert tools["get_document"].input_schema["required"] == ["id"]
    assert tools["search_knowledge"].annotations.read_only_hint is True
    assert tools["save_document"].annotations.read_only_hint is False


def test_search_knowledge(session: Callable[..., Any], kb: KB) -> None:
    async def calls(c: Any) -> tuple[Any, Any, Any, Any]:
        return (
            await c.call_tool("search_knowledge", {"query": "how much discount can a sales rep give"}),
            await c.call_tool("search_knowledge", {"query": "xylophone zebra", "mode": "keyword"}),
            await c.call_tool("search_knowledge", {"query": "watering", "tags_any": ["garden"], "limit": 50}),
            await c.call_tool("search_knowledge", {"query": "churn", "folder": "/operations"}),
        )

    found, nothing, tagged, in_folder = session(calls)
    hits = structured(found)["hits"]
    assert hits[0]["id"] == str(kb.ids["Discount approvals"]) and hits[0]["title"] == "Discount approvals"
    assert len(hits) <= 5 and hits[0]["semantic_rank"] is not None and hits[0]["keyword_rank"] == 1
    body = text(found)
    assert body.startswith(f"{len(hits)} results for") and f"id: {kb.ids['Discount approvals']}" in body
    assert "**sales** **rep** may **give** up to 10%" in body, body  # matched words in bold
    assert not nothing.is_error and text(nothing).startswith('No results for "xylophone zebra"')
    assert [h["title"] for h in structured(tagged)["hits"]] == ["Tomato care"]
    assert "limit clamped to 20" in text(tagged)
    assert [h["title"] for h in structured(in_folder)["hits"]] == ["Quarterly review"]


def test_get_document(session: Callable[..., Any], kb: KB, conn: Conn) -> None:
    doc_id = str(kb.ids["Quarterly review"])

    async def calls(c: Any) -> tuple[Any, Any, Any]:
        return (
            await c.call_tool("get_document", {"id": doc_id}),
            await c.call_tool("get_document", {"id": doc_id, "section": "hiring"}),
            await c.call_tool("get_document", {"id": doc_id, "max_tokens": 120}),
        )

    whole, section, cut = session(calls)
    stored = conn.execute("SELECT content_text FROM documents WHERE id = %s", [doc_id]).fetchone()
    assert stored is not None
    assert text(whole).endswith("# Quarterly review\n\n" + stored["content_text"])
    assert "Sections: Summary; Summary > Churn; Summary > Hiring" in text(whole)
    assert structured(section)["section"] == "Summary > Hiring"
    assert text(section).endswith("# Quarterly review\n\n## Hiring\n\nTwo engineers joined.")
    info = structured(cut)
    assert info["truncated"] and info["tokens"] <= 120 < info["total_tokens"]
    markdown = text(cut).split("\n\n", 1)[1]
    assert default_token_counter()(markdown) == info["tokens"]
    assert "Cut at a paragraph boundary to fit max_tokens=120" in text(cut)
    kept = markdown.split("\n\n")[:-1]  # every block shown is a whole block of the document
    assert all(block in "# Quarterly review\n\n" + stored["content_text"] for block in kept)


def test_boot_context(session: Callable[..., Any], kb: KB, conn: Conn) -> None:
    expected = boot_bundle(conn, "closer", media_type=MARKDOWN)

    async def first(c: Any) -> Any:
        return await c.call_tool("boot_context", {})

    answer = session(first)
    assert text(answer) == bundle_markdown(expected)
    assert structured(answer)["version"] == expected.version and not structured(answer)["unchanged"]

    async def again(c: Any) -> Any:
        return await c.call_tool("boot_context", {"known_version": expected.version})

    assert structured(session(again))["unchanged"] is True
    update_document(conn, kb.ids["Sales playbook"], content_text="Always ask for the budget and the timeline.")
    changed = session(again)
    assert not structured(changed)["unchanged"] and "the timeline" in text(changed)

    async def budget(c: Any) -> Any:
        return await c.call_tool("boot_context", {"agent_slug": "closer", "max_tokens": 12})

    cut = structured(session(budget))
    assert cut["omitted"] and cut["tokens"] <= 12


def test_list_knowledge(session: Callable[..., Any], kb: KB, conn: Conn) -> None:
    async def calls(c: Any) -> tuple[Any, Any]:
        return (
            await c.call_tool("list_knowledge", {}),
            await c.call_tool("list_knowledge", {"folder": "/Operations", "tag": "finance"}),
        )

    everything, narrowed = session(calls)
    counts = conn.execute("SELECT count(*) AS n FROM documents WHERE archived_at IS NULL").fetchone()
    assert counts is not None
    info = structured(everything)
    assert info["documents"] == counts["n"] == 7
    assert {"path": "/Operations", "documents": 1} in info["folders"]
    assert {"tag": "boot:closer", "documents": 1, "assets": 0} in info["tags"]
    assert len(info["recent"]) == 7 and f"id: {kb.ids['House rules']}" in text(everything)
    info = structured(narrowed)
    assert info["documents"] == 1 and [d["title"] for d in info["recent"]] == ["Quarterly review"]


def test_save_and_update_document(session: Callable[..., Any], conn: Conn) -> None:
    async def save(c: Any) -> Any:
        return await c.call_tool(
            "save_document",
            {
                "title": "Competitor pricing",
                "markdown": "Acme charges $9.",
                "folder": "/Research/Competitors",
                "tags": ["pricing"],
            },
        )

    saved = structured(session(save))
    row = conn.execute(
        "SELECT d.title, d.content_text, d.tags, d.embedding_status::text AS status,"
        " document_folder_path(d.folder_id) AS path, a.slug FROM documents d"
        " JOIN agents a ON a.id = d.created_by_agent_id WHERE d.id = %s",
        [saved["id"]],
    ).fetchone()
    assert row == {
        "title": "Competitor pricing",
        "content_text": "Acme charges $9.",
        "tags": ["pricing"],
        "status": "pending",
        "path": "/Research/Competitors",
        "slug": "closer",
    }

    async def update(c: Any) -> Any:
        return await c.call_tool(
            "update_document", {"id": saved["id"], "markdown": "Acme charges $12.", "tags": ["pricing", "acme"]}
        )

    structured(session(update))
    row = conn.execute("SELECT content_text, tags, title FROM documents WHERE id = %s", [saved["id"]]).fetchone()
    assert row == {"content_text": "Acme charges $12.", "tags": ["pricing", "acme"], "title": "Competitor pricing"}


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("search_knowledge", {}, "query"),
    ("search_knowledge", {"query": "   "}, "query"),
    ("search_knowledge", {"query": "refunds", "limit": 0}, "limit"),
    ("search_knowledge", {"query": "refunds", "limit": 1000}, "limit"),
    ("search_knowledge", {"query": "refunds", "kind": "video"}, "kind"),
    ("search_knowledge", {"query": "refunds", "mode": "fuzzy"}, "mode"),
    ("search_knowledge", {"query": "refunds", "folder": "/No/Such/Folder"}, "folder"),
    ("get_document", {"id": "not-a-uuid"}, "id"),
    ("get_document", {"id": str(uuid.uuid4())}, "id"),
    ("get_document", {}, "id"),
    ("get_document", {"id": "{doc}", "section": "Nowhere"}, "section"),
    ("get_document", {"id": "{doc}", "max_tokens": 0}, "max_tokens"),
    ("boot_context", {"agent_slug": "nobody"}, "agent_slug"),
    ("boot_context", {"agent_slug": "Not A Slug!"}, "agent_slug"),
    ("update_document", {"id": str(uuid.uuid4()), "title": "x"}, "id"),
    ("update_document", {"id": "{doc}"}, "markdown, title, tags"),
    ("save_document", {"title": "Empty", "markdown": " "}, "markdown"),
]


def test_bad_arguments_are_tool_errors_and_the_server_keeps_serving(session: Callable[..., Any], kb: KB) -> None:
    doc = str(kb.ids["Quarterly review"])

    async def calls(c: Any) -> list[Any]:
        answers = []
        for tool, args, _ in BAD:
            args = {k: (doc if v == "{doc}" else v) for k, v in args.items()}
            answers.append(await c.call_tool(tool, args))
        answers.append(await c.call_tool("search_knowledge", {"query": "refund"}))
        return answers

    answers = session(calls)
    for (tool, args, name), answer in zip(BAD, answers, strict=False):
        assert answer.is_error, (tool, args, text(answer))
        assert name in text(answer), (tool, args, text(answer))
        assert "Traceback" not in text(answer)
    assert structured(answers[-1])["hits"][0]["title"] == "Refund policy"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_only_server_offers_no_write_tools(transport: str, kb: KB) -> None:
    async def main(base: str | None) -> tuple[Any, Any, Any]:
        async with mcp_client(transport, kb.url, base_url=base, read_only=True) as c:
            return (
                await c.list_tools(),
                await c.call_tool("save_document", {"title": "t", "markdown": "m"}),
                await c.call_tool("search_knowledge", {"query": "refund"}),
            )

    if transport == "http":
        with http_service(kb.url, mcp_read_only=True) as base:
            tools, refused, still = anyio.run(main, base)
    else:
        tools, refused, still = anyio.run(main, None)
    assert {t.name for t in tools.tools} == {"search_knowledge", "get_document", "boot_context", "list_knowledge"}
    assert refused.is_error and "save_document is not offered: this server runs read-only" in text(refused)
    assert structured(still)["hits"]
    with psycopg.connect(kb.url) as c:
        assert c.execute("SELECT count(*) FROM documents WHERE title = 't'").fetchone() == (0,)


def test_search_answer_size_on_the_sample_knowledge_base(conn: Conn, db_url: str) -> None:
    """A search_knowledge answer at limit 10 stays under SEARCH_ANSWER_TOKENS (model tokens)."""
    import_sample_agents(conn)
    import_folder(conn, sample_dir())
    index_with_fake(conn, db_url)
    count = default_token_counter()
    queries = [
        "what do we do when a customer wants their data deleted",
        "refund policy for annual plans",
        "how is the on-call rotation organised",
        "pricing discounts",
    ]

    async def main() -> list[Any]:
        async with mcp_client("stdio", db_url) as c:
            return [await c.call_tool("search_knowledge", {"query": q, "limit": 10}) for q in queries]

    sizes = []
    for q, answer in zip(queries, anyio.run(main), strict=True):
        assert len(structured(answer)["hits"]) == 10
        sizes.append(count(text(answer)))
        print(f"search_knowledge limit=10 {q!r}: {sizes[-1]} tokens, {len(text(answer))} characters")
    assert max(sizes) < SEARCH_ANSWER_TOKENS
