"""Boot bundles: the documents and assets an agent reads when it starts, as markdown.

An agent's bundle holds every unarchived document and asset tagged `boot:all`, then those
tagged `boot:<agent-slug>`; an item with both tags appears once, in the `boot:all` part.
Within each part the order is: pinned items first, then documents before assets, then folder
path in tree order (a folder right before its subfolders, names compared case-insensitively
by code point), then title (the same way), then id. Each item is rendered as markdown: the
line `# <title>`, a blank line, and its body (`document_markdown` / `asset_markdown`) without a
leading heading that repeats the title.

With a token budget, items are taken in bundle order while they fit whole. The first one that
does not is cut after the last paragraph or section that still fits together with a note
saying so (never inside a paragraph, list, table or code block), or left out when not even its
first paragraph fits; every later item is left out. Tokens are the word pieces of the
embedding model's tokenizer.

`boot_version` is the bundle's ETag value, computed in SQL from the candidate items' ids,
versions, titles, tags, pinned state and folder paths without rendering anything, so that an
unchanged bundle can be answered with 304 cheaply; `boot_bundle` computes the same value from
the same snapshot it renders.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from knowledge import __version__
from knowledge.errors import InvalidInput, NotFound
from knowledge.ingest.extract import ExtractError, asset_markdown, document_markdown
from knowledge.ingest.markdown_blocks import drop_title_heading, parse_sections
from knowledge.store.validation import check_slug

__all__ = [
    "JSON",
    "MARKDOWN",
    "MAX_TOKENS_LIMIT",
    "OVER_BUDGET",
    "TRUNCATION_NOTE",
    "BootBundle",
    "BootItem",
    "OmittedItem",
    "TokenCounter",
    "boot_bundle",
    "boot_version",
    "bundle_markdown",
    "cut_at_boundary",
    "default_token_counter",
]

TokenCounter = Callable[[str], int]

JSON = "application/json"
MARKDOWN = "text/markdown"
MAX_TOKENS_LIMIT = 1_000_000
OVER_BUDGET = "over budget"
TRUNCATION_NOTE = "*[Cut here to fit the token budget: the rest of this item is left out.]*"
# Part of every version: bump it when the rendering changes, so clients fetch bundles again.
_FORMAT = "boot-bundle/2"


@dataclass(frozen=True)
class BootItem:
    id: UUID
    kind: str
    """document or asset"""
    title: str
    folder_path: str
    tags: list[str]
    pinned: bool
    updated_at: datetime
    tokens: int
    """Tokens of `markdown`, the truncation note included."""
    markdown: str
    truncated: bool


@dataclass(frozen=True)
class OmittedItem:
    id: UUID
    kind: str
    title: str
    tokens: int
    """Tokens of the whole item's markdown (0 when it cannot be rendered)."""
    reason: str
    """OVER_BUDGET, or "cannot be rendered: ..." for content the renderer refuses."""


@dataclass(frozen=True)
class BootBundle:
    agent: str
    version: str
    """The ETag value (without quotes) of this bundle in `media_type`."""
    items: list[BootItem]
    omitted: list[OmittedItem]
    tokens: int
    """Sum of the items' tokens: the tokens of their markdown joined by blank lines."""
    max_tokens: int | None
    media_type: str

    def as_json(self) -> dict[str, Any]:
        """The application/json representation (what the API and `boot --json` print)."""
        return {
            "agent": self.agent,
            "version": self.version,
            "items": [
                {
                    "id": str(i.id),
                    "kind": i.kind,
                    "title": i.title,
                    "folder_path": i.folder_path,
                    "tags": list(i.tags),
                    "pinned": i.pinned,
                    "updated_at": i.updated_at.isoformat(),
                    "tokens": i.tokens,
                    "markdown": i.markdown,
                    "truncated": i.truncated,
                }
                for i in self.items
            ],
            "omitted": [
                {"id": str(o.id), "kind": o.kind, "title": o.title, "tokens": o.tokens, "reason": o.reason}
                for o in self.omitted
            ],
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
        }


_counter: TokenCounter | None = None
_counter_lock = threading.Lock()


def default_token_counter() -> TokenCounter:
    """The embedding model's word-piece counter: loaded on the first call, then shared by
    every caller in the process."""
    global _counter
    with _counter_lock:
        if _counter is None:
            from embeddings.model import packaged_model_dir
            from embeddings.tokens import load_tokenizer_counter

            _counter = load_tokenizer_counter(packaged_model_dir())
        return _counter


def _check(slug: str, max_tokens: int | None, media_type: str) -> None:
    check_slug(slug)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise InvalidInput(
            f"max_tokens is {max_tokens!r}; give a whole number from 1 to {MAX_TOKENS_LIMIT}", field="max_tokens"
        )
    if media_type not in (JSON, MARKDOWN):
        raise InvalidInput(f"media type {media_type!r} is not offered; accepted: {JSON}, {MARKDOWN}")


# ---- SQL ---------------------------------------------------------------------------------------

# The candidates: unarchived items with either boot tag. `body` (what the renderer reads) is
# selected only when the bundle is built; the version never reads it.
_CANDIDATES = """
  SELECT 'document' AS kind, t.id, t.title, document_folder_path(t.folder_id) AS folder_path,
         t.tags, t.pinned, t.archived_at, t.content_version, t.updated_at,
         CASE WHEN %(all_tag)s = ANY (t.tags) THEN 0 ELSE 1 END AS part, {document_body} AS body
    FROM documents t
   WHERE t.tags && %(tags)s::text[] AND t.archived_at IS NULL
  UNION ALL
  SELECT 'asset', t.id, t.name, asset_folder_path(t.folder_id), t.tags, t.pinned, t.archived_at,
         t.content_version, t.updated_at,
         CASE WHEN %(all_tag)s = ANY (t.tags) THEN 0 ELSE 1 END, {asset_body}
    FROM assets t
   WHERE t.tags && %(tags)s::text[] AND t.archived_at IS NULL
"""
_DOCUMENT_BODY = (
    "jsonb_build_object('content_format', t.content_format, 'content', t.content, 'content_text', t.content_text)"
)
_ASSET_BODY = (
    "jsonb_build_object('name', t.name, 'description', t.description, 'asset_type', "
    "t.asset_type, 'url', t.url, 'mime_type', t.mime_type, 'content_text', t.content_text, "
    "'metadata', t.metadata)"
)
# jsonb text output is canonical, and the epoch is a numeric, so the digest does not depend on
# the session's TimeZone or DateStyle.
_VERSION = """
  SELECT EXISTS (SELECT 1 FROM agents WHERE slug = %(slug)s) AS agent_exists,
         encode(sha256(convert_to(coalesce(string_agg(
           jsonb_build_array(c.kind, c.id, c.content_version, extract(epoch FROM c.updated_at),
                             c.title, c.tags, c.pinned, c.archived_at IS NOT NULL, c.folder_path)::text,
           E'\\n' ORDER BY c.kind, c.id), ''), 'UTF8')), 'hex') AS digest
    FROM c
"""
_ORDER = """c.part, c.pinned DESC, c.kind = 'asset',
  string_to_array(lower(c.folder_path), '/') COLLATE "C", lower(c.title) COLLATE "C", c.id"""


def _query(with_body: bool) -> sql.Composed:
    bodies = (_DOCUMENT_BODY, _ASSET_BODY) if with_body else ("NULL::jsonb", "NULL::jsonb")
    candidates = sql.SQL(_CANDIDATES).format(document_body=sql.SQL(bodies[0]), asset_body=sql.SQL(bodies[1]))
    if not with_body:
        return sql.SQL("WITH c AS ({}) {}").format(candidates, sql.SQL(_VERSION))
    # One statement, so the version and the rendered items come from one snapshot.
    return sql.SQL(
        "WITH c AS MATERIALIZED ({}), v AS ({}) SELECT v.agent_exists, v.digest, c.* "
        "FROM v LEFT JOIN c ON true ORDER BY {}"
    ).format(candidates, sql.SQL(_VERSION), sql.SQL(_ORDER))


def _params(slug: str) -> dict[str, Any]:
    return {"slug": slug, "all_tag": "boot:all", "tags": ["boot:all", f"boot:{slug}"]}


def _version(slug: str, max_tokens: int | None, media_type: str, digest: str) -> str:
    key = "\0".join((_FORMAT, __version__, slug, str(max_tokens or ""), media_type, digest))
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def boot_version(
    conn: psycopg.Connection[Any], slug: str, max_tokens: int | None = None, media_type: str = JSON
) -> str:
    """The version (ETag value, without quotes) that `boot_bundle` with these arguments would
    return now, computed without reading or rendering any content. It changes with any edit,
    tag or pin change, folder move or rename, archive or deletion of a candidate item, with an
    item gaining a boot tag, and with max_tokens. The media type is hashed too, so the JSON
    and the markdown representation never share an ETag (a strong ETag promises identical
    bytes). Raises InvalidInput for a malformed slug, max_tokens or media type, NotFound for an
    unknown agent."""
    _check(slug, max_tokens, media_type)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_query(False), _params(slug)).fetchone()
    assert row is not None
    if not row["agent_exists"]:
        raise NotFound(f"agent {slug!r} not found", field="slug")
    return _version(slug, max_tokens, media_type, row["digest"])


# ---- the bundle --------------------------------------------------------------------------------


def _render(row: Mapping[str, Any]) -> str:
    title = "# " + " ".join(str(row["title"]).split())
    body = row["body"]
    if row["kind"] == "document":
        text = document_markdown(body["content_format"], body["content"], body["content_text"])
    else:
        text = asset_markdown(body)
    text = drop_title_heading(text.strip(), str(row["title"]))
    return f"{title}\n\n{text}" if text else title


def cut_at_boundary(markdown: str, budget: int, count: TokenCounter) -> tuple[str, int] | None:
    """The longest prefix of `markdown` that ends after a block (a paragraph, list, table, code
    block: never inside one), followed by TRUNCATION_NOTE, whose tokens fit in `budget`; with
    its token count. None when no block after the title fits."""
    ends = [end for section in parse_sections(markdown) for _, end in section.blocks]
    best: tuple[str, int] | None = None
    lo, hi = 0, len(ends) - 1
    while lo <= hi:  # more text never has fewer tokens
        mid = (lo + hi) // 2
        text = f"{markdown[: ends[mid]]}\n\n{TRUNCATION_NOTE}"
        tokens = count(text)
        if tokens <= budget:
            best, lo = (text, tokens), mid + 1
        else:
            hi = mid - 1
    return best


def boot_bundle(
    conn: psycopg.Connection[Any],
    slug: str,
    *,
    max_tokens: int | None = None,
    media_type: str = JSON,
    count_tokens: TokenCounter | None = None,
) -> BootBundle:
    """The agent's boot bundle (see the module docstring for what is in it and in what order).

    `media_type` (JSON or MARKDOWN) is the representation the caller will send; it only
    changes `version`, which equals `boot_version(conn, slug, max_tokens, media_type)` for
    the same data. `count_tokens` defaults to the embedding model's tokenizer; the version
    assumes that one. Raises InvalidInput for a malformed slug, max_tokens or media type,
    NotFound for an unknown agent."""
    _check(slug, max_tokens, media_type)
    count = count_tokens or default_token_counter()
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_query(True), _params(slug)).fetchall()
    if not rows[0]["agent_exists"]:
        raise NotFound(f"agent {slug!r} not found", field="slug")
    version = _version(slug, max_tokens, media_type, rows[0]["digest"])
    items: list[BootItem] = []
    omitted: list[OmittedItem] = []
    used, exhausted = 0, False
    for row in rows:
        if row["id"] is None:  # no candidates: the LEFT JOIN's one empty row
            continue
        try:
            markdown = _render(row)
        except ExtractError as e:
            omitted.append(OmittedItem(row["id"], row["kind"], row["title"], 0, f"cannot be rendered: {e}"))
            continue
        tokens = count(markdown)
        if not exhausted and (max_tokens is None or used + tokens <= max_tokens):
            items.append(_item(row, markdown, tokens, truncated=False))
            used += tokens
            continue
        cut = None if exhausted or max_tokens is None else cut_at_boundary(markdown, max_tokens - used, count)
        exhausted = True
        if cut is None:
            omitted.append(OmittedItem(row["id"], row["kind"], row["title"], tokens, OVER_BUDGET))
        else:
            items.append(_item(row, cut[0], cut[1], truncated=True))
            used += cut[1]
    return BootBundle(
        agent=slug,
        version=version,
        items=items,
        omitted=omitted,
        tokens=used,
        max_tokens=max_tokens,
        media_type=media_type,
    )


def _item(row: Mapping[str, Any], markdown: str, tokens: int, *, truncated: bool) -> BootItem:
    return BootItem(
        id=row["id"],
        kind=row["kind"],
        title=row["title"],
        folder_path=row["folder_path"],
        tags=list(row["tags"]),
        pinned=row["pinned"],
        updated_at=row["updated_at"].astimezone(UTC),
        tokens=tokens,
        markdown=markdown,
        truncated=truncated,
    )


def bundle_markdown(bundle: BootBundle) -> str:
    """The text/markdown representation: a header naming the agent, the version and the token
    count, the items' markdown separated by blank lines, then a list of what was left out."""
    budget = f" of a budget of {bundle.max_tokens}" if bundle.max_tokens is not None else ""
    count = f"{len(bundle.items)} item{'s' if len(bundle.items) != 1 else ''}"
    parts = [f"# Boot bundle: {bundle.agent}", f"Version {bundle.version}: {count}, {bundle.tokens} tokens{budget}."]
    parts.extend(item.markdown for item in bundle.items)
    if bundle.omitted:
        parts.append("# Left out")
        parts.append(
            "\n".join(
                f"- {' '.join(o.title.split())} ({o.kind} {o.id}, {o.tokens} tokens): {o.reason}"
                for o in bundle.omitted
            )
        )
    return "\n\n".join(parts) + "\n"
