"""/documents: the routes of knowledge.api.routes.items for documents, and their models."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from knowledge.api.deps import BY_AGENT_RULE, writer
from knowledge.api.fields import TEXT, TIPTAP, content_formats, name
from knowledge.api.routes.items import MIB, item_create, item_public, item_routes, item_update
from knowledge.store import documents
from knowledge.store.documents import MAX_TITLE_CHARS, ContentFormat, Document
from knowledge.store.validation import MAX_CONTENT_BYTES

_CONTENT = (
    "With content_format `tiptap`: the TipTap/ProseMirror JSON object, checked for "
    "structure (a 422 names the path of the first bad node). Null otherwise."
)
_CONTENT_TEXT = "With content_format `markdown` or `html`: the source text, stored and returned byte for byte."


class _DocumentFields(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=content_formats(partial=False))

    title: str = Field(
        description=f"1..{MAX_TITLE_CHARS} characters, not blank.", json_schema_extra=name(MAX_TITLE_CHARS)
    )
    content_format: ContentFormat = "markdown"
    content: dict[str, Any] | None = Field(None, description=_CONTENT, json_schema_extra=TIPTAP)
    content_text: str | None = Field(None, description=_CONTENT_TEXT, json_schema_extra=TEXT)


DocumentCreate = item_create(_DocumentFields, "DocumentCreate", folder="A document folder; null: at the root.")
DocumentUpdate = item_update(
    DocumentCreate,
    "DocumentUpdate",
    "Only the fields sent change. `folder_id: null` moves the document to the root.",
    config=ConfigDict(extra="forbid", json_schema_extra=content_formats(partial=True)),
    descriptions={
        "content_format": "A new format needs its content unless the stored one fits "
        "(markdown <-> html keeps the text).",
    },
    updated_by_agent_id=(UUID | None, Field(None, description=BY_AGENT_RULE)),
)
DocumentPublic = item_public(
    Document,
    "DocumentPublic",
    types={"content_format": ContentFormat},
    descriptions={
        "folder_path": "'/Operations/Sales'; '/' for a document in no folder.",
        "source_path": "Set by the importer; read-only here.",
        "passage_count": "Passages (chunks) the document is searched by.",
    },
)
router = item_routes(
    "document",
    documents,
    (DocumentCreate, DocumentUpdate, DocumentPublic),
    content=f"content at most {MAX_CONTENT_BYTES // MIB} MiB ({MAX_CONTENT_BYTES} bytes of UTF-8 content_text, "
    "or of the compact JSON text of content), else 413",
    fields=f"Title 1..{MAX_TITLE_CHARS} characters, not blank. ",
    deletes="Deletes it with its passages, embeddings and comments.",
    update_note="A new title or content re-queues the embedding; tags, folder, pinned and metadata do not. ",
    update_writer=writer,
)
