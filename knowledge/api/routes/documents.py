"""/documents: create, read, update, archive, delete and list documents; with the ETag and
If-Match handling that the asset, tag and markdown routes share."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from knowledge.api.body import MAX_BODY_BYTES, CheckedBodyRoute
from knowledge.api.deps import BY_AGENT_RULE, Conn, Filters, ReadConn, Writer
from knowledge.api.fields import IF_MATCH, JSON_OBJECT, TAG, TEXT, TIPTAP, combined, content_formats, name, no_null
from knowledge.store.documents import (
    MAX_TITLE_CHARS,
    ContentFormat,
    Document,
    archive_document,
    create_document,
    delete_document,
    get_document,
    list_documents,
    retry_document_embedding,
    unarchive_document,
    update_document,
)
from knowledge.store.validation import MAX_CONTENT_BYTES, TAG_RULE

router = APIRouter(prefix="/documents", tags=["documents"], route_class=CheckedBodyRoute)

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description=(
            "The ETag of the version you read (from a GET or from a write's response), as sent, quoted; "
            "or `*` for whatever version exists. When the item changed since, nothing is written and the "
            "answer is 412: GET it again and reapply your change. Without If-Match the last write wins."
        ),
        json_schema_extra=IF_MATCH,
    ),
]

ETAG_HEADER = {
    "ETag": {
        "description": (
            "The item's version, quoted: it changes with every edit (content, title, tags, folder, pinned, "
            "metadata, archiving), not with embedding progress. Send it back in If-Match."
        ),
        "schema": {"type": "string", "example": '"1767225600000000"'},
    }
}
_CHANGED = {
    "description": "If-Match does not hold the item's current version: nothing was written.",
    "content": {
        "application/json": {
            "example": {
                "detail": (
                    'document 5f0c2b9e-7d41-4c1e-9a57-3d2f9b7c1a10 changed since version "1767225600000000" '
                    '(now "1767225612345678"): GET it again and reapply your change'
                )
            }
        }
    },
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"headers": ETAG_HEADER}}
"""OpenAPI of a read that answers with an ETag."""
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"headers": ETAG_HEADER}, 412: _CHANGED}
"""OpenAPI of a write that takes If-Match and answers with the new ETag."""
DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {412: _CHANGED}


def etag(response: Response, version: str) -> None:
    """Give `response` the ETag of `version` (an item's `version`)."""
    response.headers["ETag"] = f'"{version}"'


_MIB = 1024 * 1024
LIMITS = (
    f"Limits: content at most {MAX_CONTENT_BYTES // _MIB} MiB ({MAX_CONTENT_BYTES} bytes of UTF-8 "
    f"content_text, or of the compact JSON text of content), else 413; request bodies over "
    f"{MAX_BODY_BYTES // _MIB} MiB are refused unread with 413. Title 1..{MAX_TITLE_CHARS} "
    f"characters, not blank. Text cannot hold NUL characters (422). Tags: {TAG_RULE}; at most 100 "
    "per document, duplicates dropped, case kept."
)
_CONTENT = (
    "With content_format `tiptap`: the TipTap/ProseMirror JSON object, checked for "
    "structure (a 422 names the path of the first bad node). Null otherwise."
)
_CONTENT_TEXT = "With content_format `markdown` or `html`: the source text, stored and returned byte for byte."


class DocumentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=content_formats(partial=False))

    title: str = Field(
        description=f"1..{MAX_TITLE_CHARS} characters, not blank.", json_schema_extra=name(MAX_TITLE_CHARS)
    )
    content_format: ContentFormat = "markdown"
    content: dict[str, Any] | None = Field(None, description=_CONTENT, json_schema_extra=TIPTAP)
    content_text: str | None = Field(None, description=_CONTENT_TEXT, json_schema_extra=TEXT)
    folder_id: UUID | None = Field(None, description="A document folder; null: at the root.")
    tags: list[str] = Field(default_factory=list, description=TAG_RULE, json_schema_extra=TAG)
    pinned: bool = False
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Any JSON object.", json_schema_extra=JSON_OBJECT
    )
    created_by_agent_id: UUID | None = Field(None, description=BY_AGENT_RULE)


class DocumentUpdate(BaseModel):
    """Only the fields sent change. `folder_id: null` moves the document to the root."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=combined(
            no_null("title", "content_format", "tags", "pinned", "metadata"), content_formats(partial=True)
        ),
    )

    title: str | None = Field(
        None, description=f"1..{MAX_TITLE_CHARS} characters, not blank.", json_schema_extra=name(MAX_TITLE_CHARS)
    )
    content_format: ContentFormat | None = Field(
        None,
        description="A new format needs its content unless the stored one fits (markdown <-> html keeps the text).",
    )
    content: dict[str, Any] | None = Field(None, description=_CONTENT, json_schema_extra=TIPTAP)
    content_text: str | None = Field(None, description=_CONTENT_TEXT, json_schema_extra=TEXT)
    folder_id: UUID | None = None
    tags: list[str] | None = Field(None, description=f"Replaces the tags. {TAG_RULE}", json_schema_extra=TAG)
    pinned: bool | None = None
    metadata: dict[str, Any] | None = Field(
        None, description="Replaces the metadata: any JSON object.", json_schema_extra=JSON_OBJECT
    )
    updated_by_agent_id: UUID | None = Field(None, description=BY_AGENT_RULE)

    @field_validator("title", "content_format", "tags", "pinned", "metadata", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null (leave the field out to keep it)")
        return value


class DocumentPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    title: str
    folder_id: UUID | None
    folder_path: str = Field(description="'/Operations/Sales'; '/' for a document in no folder.")
    content_format: ContentFormat
    content: dict[str, Any] | None
    content_text: str | None
    tags: list[str]
    pinned: bool
    metadata: dict[str, Any]
    source_path: str | None = Field(description="Set by the importer; read-only here.")
    archived_at: datetime | None
    created_by_agent_id: UUID | None
    updated_by_agent_id: UUID | None
    created_at: datetime
    updated_at: datetime
    embedding_status: str = Field(description="pending, processing, indexed or failed.")
    embedding_error: str | None
    embedding_attempts: int
    embedding_model: str | None
    embedded_at: datetime | None
    passage_count: int = Field(description="Passages (chunks) the document is searched by.")


class DocumentsPublic(BaseModel):
    data: list[DocumentPublic]
    count: int = Field(description="All documents matching the filters, not only this page.")


def _public(response: Response, doc: Document) -> DocumentPublic:
    etag(response, doc.version)
    return DocumentPublic.model_validate(doc)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DocumentPublic,
    responses={201: {"headers": ETAG_HEADER}},
    summary="Create a document",
    description=LIMITS,
)
def create(body: DocumentCreate, conn: Conn, response: Response, writer: Writer) -> DocumentPublic:
    values = body.model_dump()
    values["created_by_agent_id"] = writer.stamp("created_by_agent_id", body.created_by_agent_id)
    return _public(response, create_document(conn, **values))


@router.get(
    "",
    response_model=DocumentsPublic,
    summary="List documents",
    description="Pinned first, then the most recently updated. `count` is the total matching.",
)
def list_(conn: ReadConn, filters: Filters) -> DocumentsPublic:
    page = list_documents(conn, filters)
    return DocumentsPublic(data=[DocumentPublic.model_validate(d) for d in page.items], count=page.count)


@router.get(
    "/{document_id}",
    response_model=DocumentPublic,
    responses=READ_RESPONSES,
    summary="Get a document",
    description="With an ETag: send it back in If-Match when you change the document.",
)
def get(document_id: UUID, conn: ReadConn, response: Response) -> DocumentPublic:
    return _public(response, get_document(conn, document_id))


@router.patch(
    "/{document_id}",
    response_model=DocumentPublic,
    responses=WRITE_RESPONSES,
    summary="Update a document",
    description="Partial update; also how a document is pinned or unpinned. A new title "
    "or content re-queues the embedding; tags, folder, pinned and metadata do "
    "not. With If-Match, only if the document is still at that version (412 "
    "otherwise). " + LIMITS,
)
def update(
    document_id: UUID, body: DocumentUpdate, conn: Conn, response: Response, writer: Writer, if_match: IfMatch = None
) -> DocumentPublic:
    changes = body.model_dump(exclude_unset=True)
    if writer.agent_id is not None:
        changes["updated_by_agent_id"] = writer.stamp("updated_by_agent_id", body.updated_by_agent_id)
    return _public(response, update_document(conn, document_id, **changes, if_match=if_match))


@router.delete(
    "/{document_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=DELETE_RESPONSES,
    summary="Delete a document",
    description="Deletes it with its passages, embeddings and comments. With If-Match, "
    "only if the document is still at that version (412 otherwise).",
)
def delete(document_id: UUID, conn: Conn, if_match: IfMatch = None) -> Response:
    delete_document(conn, document_id, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{document_id}/archive",
    response_model=DocumentPublic,
    responses=WRITE_RESPONSES,
    summary="Archive a document",
    description="Lists leave archived documents out unless `archived=true` or `any`. With "
    "If-Match, only if the document is still at that version (412 otherwise).",
)
def archive(document_id: UUID, conn: Conn, response: Response, if_match: IfMatch = None) -> DocumentPublic:
    return _public(response, archive_document(conn, document_id, if_match=if_match))


@router.post(
    "/{document_id}/unarchive",
    response_model=DocumentPublic,
    responses=WRITE_RESPONSES,
    summary="Unarchive a document",
    description="With If-Match, only if the document is still at that version (412 otherwise).",
)
def unarchive(document_id: UUID, conn: Conn, response: Response, if_match: IfMatch = None) -> DocumentPublic:
    return _public(response, unarchive_document(conn, document_id, if_match=if_match))


@router.post(
    "/{document_id}/retry",
    response_model=DocumentPublic,
    summary="Retry a failed embedding",
    description="Puts a `failed` document back to `pending` with its attempts reset; 409 otherwise.",
)
def retry(document_id: UUID, conn: Conn, response: Response) -> DocumentPublic:
    return _public(response, retry_document_embedding(conn, document_id))
