"""Search snippets: the passage's text without markdown syntax, the query's words marked, as
GET /search and the MCP server's search_knowledge hand them out."""

from __future__ import annotations

import re
from typing import Any

import anyio
import psycopg
import pytest

from knowledge.api import create_app
from knowledge.search.snippets import FRAGMENT_CHARS, Highlighter, plain_text
from knowledge.store.importer import import_folder, sample_dir

from .apiclient import local_client
from .factories import add_document, index_with_fake
from .mcp_clients import mcp_client, structured, text

Conn = psycopg.Connection[dict[str, Any]]

# What markdown syntax would look like in a snippet: emphasis and code marks, links and
# images, table pipes and rules, fences, headings, quotes and bullets opening a line.
SYNTAX = re.compile(r"\*\*|__|~~|`|\]\(|!\[|\||^#|\s#+\s|^>|^[-*+]\s|---", re.MULTILINE)

PASSAGES = {  # name: (passage, query, snippet)
    "bold": (
        "Monthly **plans** can be cancelled at any time. 2. **Annual** **plans** are refunded pro rata.",
        "annual plans",
        (
            "Monthly <mark>plans</mark> can be cancelled at any time. 2. <mark>Annual</mark> "
            "<mark>plans</mark> are refunded pro rata."
        ),
    ),
    "italics": (
        "Refunds are *always* issued to the _original_ card, ***never*** as credit.",
        "refund card",
        "<mark>Refunds</mark> are always issued to the original <mark>card</mark>, never as credit.",
    ),
    "links": (
        (
            "See the [pricing and discount policy](../Policies/pricing-and-discount-policy.md) and "
            "![the ladder](img/ladder.png) or <https://example.com/discounts>."
        ),
        "discount policy",
        (
            "See the pricing and <mark>discount</mark> <mark>policy</mark> and the ladder or "
            "https://example.com/<mark>discounts</mark>."
        ),
    ),
    "table": (
        (
            "| Credit | Who approves |\n|---|:---:|\n| Goodwill credit above that | up to $2,000 |\n"
            "| **15%** discount | the CFO |"
        ),
        "credit approves",
        (
            "<mark>Credit</mark>; Who <mark>approves</mark>; Goodwill <mark>credit</mark> above that; "
            "up to $2,000; 15% discount; the CFO;"
        ),
    ),
    "code": (
        (
            "Run `hq-knowledge reembed` after a switch:\n\n```bash\nhq-knowledge reembed --all\n```\n\n"
            "~~Old step~~ no longer needed."
        ),
        "reembed step",
        (
            "Run hq-knowledge <mark>reembed</mark> after a switch: hq-knowledge <mark>reembed</mark> --all Old "
            "<mark>step</mark> no longer needed."
        ),
    ),
    "headings": (
        ("# Escalations\n\n## On call\n\n> Page the **on-call** engineer.\n\n- first: ack\n* then: fix\n+ [x] done"),
        "escalations engineer",
        "<mark>Escalations</mark> On call Page the on-call <mark>engineer</mark>. first: ack then: fix done",
    ),
    "text kept": (
        "snake_case_name stays, 2 * 3 = 6, ~5 s, and <b>html</b> is text.",
        "html name",
        "snake_case_name stays, 2 * 3 = 6, ~5 s, and &lt;b&gt;<mark>html</mark>&lt;/b&gt; is text.",
    ),
}


def balanced(snippet: str, opening: str, closing: str) -> bool:
    """Marks open and close in turn, never nested, never empty."""
    depth = 0
    for tag in re.findall(f"{re.escape(opening)}|{re.escape(closing)}", snippet):
        depth += 1 if tag == opening else -1
        if depth not in (0, 1):
            return False
    return depth == 0 and f"{opening}{closing}" not in snippet


@pytest.mark.parametrize("name", list(PASSAGES))
def test_snippet_has_no_markdown_and_balanced_marks(name: str) -> None:
    passage, query, expected = PASSAGES[name]
    snippet = Highlighter(query).snippet(passage)
    assert snippet == expected
    assert not SYNTAX.search(snippet.replace("<mark>", "").replace("</mark>", "")), snippet
    assert balanced(snippet, "<mark>", "</mark>")


def test_words_match_as_the_keyword_index_stems_them() -> None:
    words = Highlighter("the studies of running cells")
    assert words.stems == {"studi", "run", "cell"}  # stop words dropped, Snowball stems
    snippet = words.snippet("A study ran; the runner keeps running. Cellular cells and CELLS, cell-based.")
    assert re.findall(r"<mark>(.*?)</mark>", snippet) == ["study", "running", "cells", "CELLS", "cell"]
    assert Highlighter("the of and").snippet("the end of it") == "the end of it"  # nothing to mark


def test_a_long_passage_is_cut_to_the_stretch_with_the_most_query_words() -> None:
    filler = " ".join(f"w{i}" for i in range(200))
    passage = f"refund once. {filler} The refund for annual plans is pro rata. {filler} annual again"
    snippet = Highlighter("refund annual plans").snippet(passage)
    plain = snippet.replace("<mark>", "").replace("</mark>", "")
    assert "The refund for annual plans is pro rata." in plain and len(plain) <= FRAGMENT_CHARS
    assert not plain.startswith("refund once") and not plain[0].isspace() and not plain.endswith(" ")
    assert re.match(r"^w\d+ ", plain) and re.search(r" w\d+$", plain)  # cut between whole words
    # nothing matches: the start of the text, cut between words
    assert Highlighter("zebra").snippet(passage) == plain_text(passage)[:FRAGMENT_CHARS].rsplit(" ", 1)[0]


def test_plain_text_of_placeholders_and_other_scripts() -> None:
    assert plain_text("a\x02b\x03c") == "abc"  # the placeholders of marks cannot come from the text
    snippet = Highlighter("İstanbul café").snippet("Offices: İstanbul and the café in Zürich.")
    assert snippet == "Offices: <mark>İstanbul</mark> and the <mark>café</mark> in Zürich."


def test_rest_and_mcp_snippets_of_the_sample_knowledge_base(conn: Conn, db_url: str) -> None:
    """The sample documents are markdown with bold, tables and links: neither the page's
    snippets nor an agent's hold any of it, and the marks are balanced."""
    import_folder(conn, sample_dir())
    add_document(
        conn, "Plans", "Monthly **plans** can be cancelled. 2. **Annual** **plans** are refunded pro rata.", []
    )
    index_with_fake(conn, db_url)
    queries = ["annual plans refund", "discount approval", "pricing and discount policy", "security questionnaire"]
    with local_client(create_app(db_url)) as client:
        for q in queries:
            for mode in ("hybrid", "keyword"):
                hits = client.get("/search", params={"q": q, "mode": mode, "limit": 20}).json()["hits"]
                assert hits and any("<mark>" in h["snippet"] for h in hits), (q, mode)
                for hit in hits:
                    assert not SYNTAX.search(hit["snippet"].replace("<mark>", "").replace("</mark>", "")), hit
                    assert balanced(hit["snippet"], "<mark>", "</mark>"), hit["snippet"]

    async def main() -> list[Any]:
        async with mcp_client("stdio", db_url) as c:
            return [await c.call_tool("search_knowledge", {"query": q, "limit": 10}) for q in queries]

    answers = anyio.run(main)
    for q, answer in zip(queries, answers, strict=True):
        body = text(answer)
        assert structured(answer)["hits"] and "**" in body, q
        snippets = [line for line in body.splitlines()[1:] if line and not line.startswith(("[", "id: "))]
        assert len(snippets) == len(structured(answer)["hits"]), body
        for line in snippets:
            assert not SYNTAX.search(line.replace("**", "")) and "***" not in line, line
            assert line.count("**") % 2 == 0, line
    assert "**Annual** **plans**" in text(answers[0])
