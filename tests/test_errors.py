"""Errors carry the input they concern (`KnowledgeError.field`), and the MCP tools name the
argument from it, never from the message's wording."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from knowledge.agents.mcp_tools import tool_error
from knowledge.errors import InvalidInput, KnowledgeError, NotFound
from knowledge.ingest.extract import ExtractError, document_markdown
from knowledge.search import SearchQuery
from knowledge.search.boot import boot_bundle
from knowledge.store.validation import check_name, check_slug


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (SearchQuery(q="   "), "q"),
        (SearchQuery(q="refunds", limit=0), "limit"),
        (SearchQuery(q="refunds", mode="fuzzy"), "mode"),
        (SearchQuery(q="refunds", kind="video"), "kind"),
        (SearchQuery(q="refunds", archived="maybe"), "archived"),  # type: ignore[arg-type]
    ],
)
def test_a_refused_search_names_its_field(query: SearchQuery, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        query.validated()
    assert refused.value.field == field
    assert refused.value.message.startswith(f"{field}:")


def test_checks_name_the_field_they_were_given() -> None:
    with pytest.raises(InvalidInput) as refused:
        check_name("title", "   ", max_chars=10)
    assert refused.value.field == "title"
    with pytest.raises(InvalidInput) as refused:
        check_slug("Not A Slug!")
    assert refused.value.field == "slug"


def test_an_extraction_error_is_invalid_input() -> None:
    with pytest.raises(ExtractError) as refused:
        document_markdown("rtf", None, "text")
    assert isinstance(refused.value, InvalidInput) and refused.value.status == 422


def test_an_unknown_agent_concerns_the_slug(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(NotFound) as missing:
        boot_bundle(conn, "nobody-here", count_tokens=len)
    assert missing.value.field == "slug"


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        # the service's name for the input becomes the tool's
        (InvalidInput("q: must contain at least one non-space character", field="q"), "query: must contain"),
        (InvalidInput("agent slug 'X' is not valid", field="slug"), "agent_slug: agent slug 'X' is not valid"),
        # the same name: the message as it is
        (InvalidInput("limit: from 1 to 100, got 0", field="limit"), "limit: from 1 to 100, got 0"),
        (InvalidInput("max_tokens is 0; give a whole number", field="max_tokens"), "max_tokens is 0; give"),
        # a message that does not open with the field gets it in front
        (NotFound("document 1234 not found", field="id"), "id: document 1234 not found"),
        # wording that looks like a field decides nothing
        (NotFound("document 1234 not found"), "document 1234 not found"),
        (KnowledgeError("max_tokens is what the message says"), "max_tokens is what the message says"),
    ],
)
def test_a_tool_error_names_the_argument_from_the_field(error: KnowledgeError, shown: str) -> None:
    assert str(tool_error(error)).startswith(shown)
