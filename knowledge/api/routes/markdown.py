"""What agents do besides searching and booting, over REST (what `knowledge.client` calls):
read a document as markdown, see what the knowledge base holds, save and update markdown
documents in folders named by path. The same domain functions as the MCP tools."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from knowledge.agents.operations import (
    knowledge_overview,
    read_document,
    save_markdown_document,
    update_markdown_document,
)
from knowledge.api.body import CheckedBodyRoute
from knowledge.api.deps import Conn, ReadConn
from knowledge.api.etags import CREATED, READ_RESPONSES, WRITE_RESPONSES, IfMatch, etag
from knowledge.api.fields import NOT_BLANK, SLUG, TAG, name, rule, string_rule
from knowledge.api.routes.documents import DocumentPublic
from knowledge.api.routes.tags import TagCountPublic
from knowledge.errors import InvalidInput
from knowledge.search.boot import MAX_TOKENS_LIMIT
from knowledge.store.documents import MAX_TITLE_CHARS, lock_document
from knowledge.store.keys import caller_of
from knowledge.store.validation import SLUG_RULE, check_slug, folder_path_pattern
from knowledge.store.versions import version_of

router = APIRouter(tags=["agents"], route_class=CheckedBodyRoute)

AGENT_HEADER = "X-HQ-Agent"  # as the MCP server's (knowledge.mcp_server.AGENT_HEADER)

_FOLDER = "A folder path such as /Research/Competitors (any case); / is the root."


def agent_header(
    request: Request,
    slug: Annotated[
        str | None,
        Header(
            alias=AGENT_HEADER,
            description=(
                f"The writing agent's slug ({SLUG_RULE}): the document is recorded as written by it. "
                "Ignored for a key bound to an agent: that agent is the writer."
            ),
            json_schema_extra=SLUG,
        ),
    ] = None,
) -> str | None:
    """The writing agent: the API key's agent when the key is bound to one, else the
    X-HQ-Agent header's slug, checked; None without either."""
    caller = caller_of(request)
    if caller is not None and caller.agent:
        return caller.agent
    if slug is None:
        return None
    try:
        return check_slug(slug)
    except InvalidInput as e:
        raise InvalidInput(f"{AGENT_HEADER} header: {e.message}") from e


Agent = Annotated[str | None, Depends(agent_header)]


class RecentDocumentPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    title: str
    folder_path: str
    tags: list[str]
    updated_at: datetime


class DocumentTextPublic(RecentDocumentPublic):
    markdown: str = Field(description="`# <title>`, a blank line, then the body or the section.")
    tokens: int = Field(description="Tokens of `markdown` (the embedding model's word pieces).")
    total_tokens: int = Field(description="Tokens before any cut to max_tokens.")
    truncated: bool = Field(description="Cut after a whole block to fit max_tokens, with a note saying so.")
    section: str | None = Field(description="The heading path of the section returned; null: the whole document.")
    sections: list[str] = Field(description="The document's headings, as ' > '-joined paths.")


class FolderCountPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    path: str
    documents: int = Field(description="Unarchived documents in it and in the folders below it.")


class OverviewPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    folder: str = Field(description="The folder path looked under; / for everything.")
    tag: str | None
    documents: int = Field(description="Unarchived documents under `folder` (tagged `tag`).")
    folders: list[FolderCountPublic]
    tags: list[TagCountPublic]
    recent: list[RecentDocumentPublic] = Field(description="The most recently updated documents.")


class MarkdownDocumentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(json_schema_extra=name(MAX_TITLE_CHARS))
    markdown: str = Field(
        description="The document's text; at least one non-space character.", json_schema_extra=NOT_BLANK
    )
    folder: str | None = Field(
        None,
        description=_FOLDER + " Created if missing; null: the root.",
        json_schema_extra=string_rule(pattern=folder_path_pattern, maxLength=2000),
    )
    tags: list[str] = Field(default_factory=list, json_schema_extra=TAG)


class MarkdownDocumentUpdate(BaseModel):
    """What is given (not null) replaces what is stored; at least one field."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: schema.update(
            anyOf=[
                {"required": [field], "properties": {field: {"not": {"type": "null"}}}}
                for field in ("markdown", "title", "tags")
            ]
        ),
    )

    markdown: str | None = Field(
        None, description="The new text; the document becomes markdown.", json_schema_extra=NOT_BLANK
    )
    title: str | None = Field(None, json_schema_extra=name(MAX_TITLE_CHARS))
    tags: list[str] | None = Field(None, description="Replaces the whole list.", json_schema_extra=TAG)


@router.get(
    "/documents/{document_id}/markdown",
    response_model=DocumentTextPublic,
    responses=READ_RESPONSES,
    summary="Read a document as markdown",
    description="The whole document, or one `section` (a heading or a heading path such as "
    "`Refunds > Annual plans`, any case), cut after the last whole block that fits "
    f"`max_tokens` (1..{MAX_TOKENS_LIMIT}). The ETag is the document's version, "
    "as GET /documents/{id} gives it: send it in If-Match when you update it.",
)
def read_markdown(
    document_id: UUID,
    conn: ReadConn,
    response: Response,
    max_tokens: Annotated[
        int | None, Query(json_schema_extra=rule("integer", minimum=1, maximum=MAX_TOKENS_LIMIT))
    ] = None,
    section: str | None = None,
) -> DocumentTextPublic:
    doc = read_document(conn, document_id, max_tokens=max_tokens, section=section)
    etag(response, version_of(doc.updated_at))
    return DocumentTextPublic.model_validate(doc)


@router.get(
    "/overview",
    response_model=OverviewPublic,
    summary="What the knowledge base holds",
    description="Unarchived documents under `folder` (a path) and tagged `tag`: their count, the "
    "folders with counts, the tags with counts, the most recently updated.",
)
def overview(
    conn: ReadConn,
    folder: Annotated[str | None, Query(description=_FOLDER)] = None,
    tag: Annotated[str | None, Query(json_schema_extra=TAG)] = None,
) -> OverviewPublic:
    return OverviewPublic.model_validate(knowledge_overview(conn, folder=folder, tag=tag))


@router.post(
    "/documents/markdown",
    **CREATED,
    response_model=DocumentPublic,
    summary="Save a markdown document in a folder named by path",
)
def save_markdown(body: MarkdownDocumentCreate, conn: Conn, agent: Agent, response: Response) -> BaseModel:
    doc = save_markdown_document(
        conn, title=body.title, markdown=body.markdown, folder=body.folder, tags=body.tags, agent=agent
    )
    etag(response, doc.version)
    return DocumentPublic.model_validate(doc)


@router.patch(
    "/documents/{document_id}/markdown",
    response_model=DocumentPublic,
    responses=WRITE_RESPONSES,
    summary="Replace a document's markdown, title or tags",
    description="With If-Match, only if the document is still at that version (412 otherwise).",
)
def update_markdown(
    document_id: UUID,
    body: MarkdownDocumentUpdate,
    conn: Conn,
    agent: Agent,
    response: Response,
    if_match: IfMatch = None,
) -> BaseModel:
    with conn.transaction():  # the lock, when If-Match is given, lasts until the update commits
        if if_match is not None:
            lock_document(conn, document_id, if_match)
        doc = update_markdown_document(
            conn, document_id, markdown=body.markdown, title=body.title, tags=body.tags, agent=agent
        )
    etag(response, doc.version)
    return DocumentPublic.model_validate(doc)
