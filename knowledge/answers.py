"""What the agent operations answer (`knowledge.agents.operations`, over MCP and the REST
agent routes), and what every search hit says, defined once for the server that computes them
and the client that reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

__all__ = ["DocumentText", "FolderCount", "HitBase", "Overview", "RecentDocument", "TagCount"]


@dataclass(frozen=True)
class DocumentText:
    """A document rendered for reading: `markdown` is `# <title>`, a blank line, then the body
    (or the asked-for section); `truncated` when it was cut to `max_tokens`, after a whole
    block, with a note saying so. `sections` lists the document's headings."""

    id: UUID
    title: str
    folder_path: str
    tags: list[str]
    updated_at: datetime
    markdown: str
    tokens: int
    total_tokens: int
    truncated: bool
    section: str | None
    sections: list[str]


@dataclass(frozen=True)
class FolderCount:
    """A folder path and its documents."""

    path: str
    documents: int  # unarchived, in this folder and the folders below it


@dataclass(frozen=True)
class TagCount:
    """A tag and how many unarchived documents and assets carry it."""

    tag: str
    documents: int
    assets: int


@dataclass(frozen=True)
class RecentDocument:
    """A recently changed document, as the overview lists it."""

    id: UUID
    title: str
    folder_path: str
    tags: list[str]
    updated_at: datetime


@dataclass(frozen=True)
class Overview:
    """What is in the knowledge base (under `folder`, tagged `tag`, when given)."""

    folder: str
    tag: str | None
    documents: int
    folders: list[FolderCount] = field(default_factory=list)
    tags: list[TagCount] = field(default_factory=list)
    recent: list[RecentDocument] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class HitBase:
    """What every search hit says, on the server (knowledge.search.SearchHit) and in the client
    (knowledge.client.Hit): the item, where it is filed, its tags, its fused score (higher is
    better, comparable within one answer only) and its snippet."""

    id: UUID
    kind: str
    """"document" or "asset"."""
    title: str
    folder_path: str
    tags: list[str]
    score: float
    snippet: str
