"""What a search asks for and what it answers: the query (checked field by field), its
hits and the result."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from knowledge.answers import HitBase
from knowledge.errors import InvalidInput
from knowledge.store.assets import ASSET_TYPES

__all__ = [
    "ASSET_TYPES",
    "EXACT_SCAN_BELOW",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "MAX_QUERY_CHARS",
    "MODES",
    "ModelSwitched",
    "Passage",
    "SearchHit",
    "SearchQuery",
    "SearchResult",
]

MODES = ("hybrid", "semantic", "keyword")
KINDS = ("document", "asset")
MAX_QUERY_CHARS = 1000
MAX_LIMIT = 100
MAX_OFFSET = 1000
MAX_PASSAGES = 1600  # per leg, when a short page asks again
EXACT_SCAN_BELOW = 2000  # filtered passages: below this many, an exact scan beats the index


class ModelSwitched(Exception):
    """The active model changed since the caller looked it up: look it up again and retry."""


@dataclass(frozen=True)
class SearchQuery:
    """What to search for; `validated()` checks every field and says what is accepted."""

    q: str
    limit: int = 10
    offset: int = 0
    mode: str = "hybrid"
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    folder: uuid.UUID | None = None
    kind: str | None = None
    asset_type: str | None = None
    pinned: bool | None = None
    archived: Literal["false", "true", "any"] = "false"
    updated_since: datetime | None = None
    explain: bool = False
    rrf_k: float = 60.0
    semantic_weight: float = 1.0
    keyword_weight: float = 1.0

    def validated(self) -> SearchQuery:
        q = self.q
        if "\x00" in q:
            raise InvalidInput("q: must not contain NUL characters", field="q")
        if not q.strip():
            raise InvalidInput("q: must contain at least one non-space character", field="q")
        if len(q) > MAX_QUERY_CHARS:
            raise InvalidInput(f"q: at most {MAX_QUERY_CHARS} characters, got {len(q)}", field="q")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidInput(f"limit: from 1 to {MAX_LIMIT}, got {self.limit}", field="limit")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise InvalidInput(f"offset: from 0 to {MAX_OFFSET}, got {self.offset}", field="offset")
        if self.mode not in MODES:
            raise InvalidInput(f"mode: one of {', '.join(MODES)}; got {self.mode!r}", field="mode")
        if self.kind is not None and self.kind not in KINDS:
            raise InvalidInput(f"kind: one of {', '.join(KINDS)}; got {self.kind!r}", field="kind")
        if self.asset_type is not None and self.asset_type not in ASSET_TYPES:
            raise InvalidInput(
                f"asset_type: one of {', '.join(ASSET_TYPES)}; got {self.asset_type!r}", field="asset_type"
            )
        if self.archived not in ("false", "true", "any"):
            raise InvalidInput(f"archived: one of false, true, any; got {self.archived!r}", field="archived")
        if not (self.rrf_k > 0 and self.semantic_weight >= 0 and self.keyword_weight >= 0):
            raise InvalidInput("rrf_k must be positive and the weights not negative", field="rrf_k")
        for name, tags in (("tags_any", self.tags_any), ("tags_all", self.tags_all)):
            for tag in tags:
                if not tag or len(tag) > 100 or "\x00" in tag:
                    raise InvalidInput(f"{name}: tags are 1 to 100 characters, got {tag[:40]!r}")
        return self


@dataclass
class Passage:
    chunk_id: int
    heading_path: list[str]
    content: str


@dataclass(frozen=True, kw_only=True)
class SearchHit(HitBase):
    """A hit as the service answers it: its best passages, and what lists and filters show."""

    passages: list[Passage]
    source_path: str | None
    asset_type: str | None
    pinned: bool
    updated_at: datetime
    explain: dict[str, Any] | None = None  # per leg: rank and score (in responses when asked for)


@dataclass
class SearchResult:
    hits: list[SearchHit]
    mode: str
    keyword_path: str
    model: str | None
    took_ms: float
    candidates: int
    notes: list[str] = field(default_factory=list)
    embed_ms: float = 0.0  # of took_ms: embedding the query (0 when cached or not needed)

    def as_dict(self, *, explain: bool = False) -> dict[str, Any]:
        """The response body: plain values, UUIDs and datetimes (orjson encodes them); a hit's
        `explain` only when asked for. Built by hand: dataclasses.asdict is 3x slower."""
        return {
            "hits": [
                {
                    "id": h.id,
                    "kind": h.kind,
                    "title": h.title,
                    "folder_path": h.folder_path,
                    "tags": h.tags,
                    "score": h.score,
                    "snippet": h.snippet,
                    "passages": [
                        {"chunk_id": p.chunk_id, "heading_path": p.heading_path, "content": p.content}
                        for p in h.passages
                    ],
                    "source_path": h.source_path,
                    "asset_type": h.asset_type,
                    "pinned": h.pinned,
                    "updated_at": h.updated_at,
                    **({"explain": h.explain} if explain else {}),
                }
                for h in self.hits
            ],
            "mode": self.mode,
            "keyword_path": self.keyword_path,
            "model": self.model,
            "took_ms": self.took_ms,
            "embed_ms": self.embed_ms,
            "candidates": self.candidates,
            "notes": self.notes,
        }
