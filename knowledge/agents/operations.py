"""What agents do with the knowledge base besides searching and booting, whatever carries the
call (the MCP tools, the REST routes the Python client uses): read a document as markdown
(one section of it, within a token budget), see what is there (folders, tags, recent
documents), and write back markdown documents into folders named by their path.

Folders are named by path, as agents see them in search hits: `/Research/Competitors`
(case-insensitive; `/` is the root). Writing into a path that does not exist creates its
folders.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import class_row, tuple_row

from knowledge.answers import DocumentText, FolderCount, Overview, RecentDocument, TagCount
from knowledge.errors import InvalidInput, NotFound
from knowledge.ingest.extract import ExtractError, document_markdown
from knowledge.ingest.markdown_blocks import drop_title_heading, parse_sections
from knowledge.search.boot import MAX_TOKENS_LIMIT, TokenCounter, cut_at_boundary, default_token_counter
from knowledge.store.documents import Document, create_document, get_document, update_document
from knowledge.store.folders import create_folder, get_folder
from knowledge.store.items import UNSET
from knowledge.store.validation import normalize_tag

__all__ = [
    "DocumentText",
    "Overview",
    "knowledge_overview",
    "read_document",
    "resolve_folder",
    "save_markdown_document",
    "update_markdown_document",
]

RECENT = 10  # documents listed by the overview


R = TypeVar("R")


def _check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise InvalidInput(
            f"max_tokens: a whole number from 1 to {MAX_TOKENS_LIMIT}, got {max_tokens!r}", field="max_tokens"
        )


def _section_text(body: str, wanted: str) -> tuple[str, str]:
    """(heading path, markdown) of the section whose heading (or ' > '-joined heading path)
    is `wanted`, ignoring case, with its subsections. Raises InvalidInput naming the headings
    there are."""
    sections = [s for s in parse_sections(body) if s.heading is not None]
    key = " ".join(wanted.split()).casefold()
    for i, section in enumerate(sections):
        if key in (section.path[-1].casefold(), " > ".join(section.path).casefold()):
            end = len(body)
            for later in sections[i + 1 :]:
                if later.level <= section.level and later.heading is not None:
                    end = later.heading[0]
                    break
            assert section.heading is not None
            return " > ".join(section.path), body[section.heading[0] : end].strip()
    names = "; ".join(" > ".join(s.path) for s in sections) or "none: the document has no headings"
    raise NotFound(f"section: no heading {wanted!r} in this document; its headings: {names}", field="section")


def read_document(
    conn: psycopg.Connection[Any],
    document_id: UUID,
    *,
    max_tokens: int | None = None,
    section: str | None = None,
    count_tokens: TokenCounter | None = None,
) -> DocumentText:
    """The document as markdown, or one section of it (a heading, or a heading path such as
    `Refunds > Annual plans`, any case). Over `max_tokens` (the embedding model's word pieces
    unless `count_tokens` is given) it is cut after the last paragraph, list, table or code
    block that fits, never inside one. Raises NotFound, InvalidInput (bad max_tokens, an
    unknown section, a document that cannot be rendered)."""
    _check_max_tokens(max_tokens)
    doc = get_document(conn, document_id)
    try:
        body = document_markdown(doc.content_format, doc.content, doc.content_text).strip()
    except ExtractError as e:
        raise InvalidInput(f"id: document {document_id} cannot be rendered as markdown: {e}", field="id") from e
    headings = [" > ".join(s.path) for s in parse_sections(body) if s.heading is not None]
    path = None
    if section is not None and section.strip():
        path, body = _section_text(body, section)
    body = drop_title_heading(body, doc.title)  # printed once, as the first line
    title = "# " + " ".join(doc.title.split())
    markdown = f"{title}\n\n{body}" if body else title
    count = count_tokens or default_token_counter()
    total = tokens = count(markdown)
    truncated = False
    if max_tokens is not None and total > max_tokens:
        cut = cut_at_boundary(markdown, max_tokens, count)
        markdown, tokens = cut if cut is not None else (title, count(title))
        truncated = True
    return DocumentText(
        id=doc.id,
        title=doc.title,
        folder_path=doc.folder_path,
        tags=doc.tags,
        updated_at=doc.updated_at.astimezone(UTC),
        markdown=markdown,
        tokens=tokens,
        total_tokens=total,
        truncated=truncated,
        section=path,
        sections=headings,
    )


def _folder_path(path: str) -> str:
    """'/A/B' from 'A/B', '/A/B/', ' /A//B '; '/' for the root. Raises InvalidInput."""
    if not isinstance(path, str) or "\x00" in path or len(path) > 2000:
        raise InvalidInput(
            "folder: a folder path such as /Research/Competitors (at most 2000 characters)", field="folder"
        )
    parts = [" ".join(p.split()) for p in path.split("/")]
    return "/" + "/".join(p for p in parts if p)


def resolve_folder(conn: psycopg.Connection[Any], folder: str, *, create: bool = False) -> UUID | None:
    """The id of the document folder `folder` names (a path, any case, or a folder id);
    None for the root. With `create`, missing folders along the path are made. Raises
    NotFound (naming the path) for a folder that does not exist, InvalidInput for a bad path."""
    try:
        return _existing_folder_id(conn, uuid.UUID(folder.strip()))
    except (ValueError, AttributeError):
        pass
    path = _folder_path(folder)
    if path == "/":
        return None
    found = _folder_at(conn, path)
    if found is not None:
        return found
    if not create:
        raise NotFound(
            f"folder: no document folder {path!r}; list_knowledge shows the folders there are", field="folder"
        )
    parent: UUID | None = None
    walked = ""
    for name in path.strip("/").split("/"):
        walked += "/" + name
        parent = _folder_at(conn, walked) or create_folder(conn, "document", name=name, parent_id=parent).id
    return parent


def _folder_at(conn: psycopg.Connection[Any], path: str) -> UUID | None:
    """The document folder at `path` (any case: sibling names differ ignoring case, so at
    most one matches), or None."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT id FROM document_folders WHERE lower(document_folder_path(id)) = lower(%s)", [path]
        ).fetchone()
    return UUID(str(row[0])) if row else None


def _existing_folder_id(conn: psycopg.Connection[Any], folder_id: UUID) -> UUID:
    if conn.execute("SELECT 1 FROM document_folders WHERE id = %s", [folder_id]).fetchone() is None:
        raise NotFound(f"folder: document folder {folder_id} not found", field="folder")
    return folder_id


def knowledge_overview(
    conn: psycopg.Connection[Any], *, folder: str | None = None, tag: str | None = None, recent: int = RECENT
) -> Overview:
    """Unarchived documents under `folder` (its subtree; everything when None) and tagged
    `tag` when given: their count, the folders holding them with counts, the tags on them
    (and on assets there) with counts, and the `recent` most recently updated. Raises
    NotFound for an unknown folder, InvalidInput for a bad path or tag."""
    root = resolve_folder(conn, folder) if folder else None
    if tag is not None:
        tag = normalize_tag(tag)
    params = {"root": root, "tag": tag, "recent": recent}
    scope = """
      WITH RECURSIVE tree AS (
        SELECT id FROM document_folders WHERE id = %(root)s
        UNION ALL SELECT f.id FROM document_folders f JOIN tree t ON f.parent_id = t.id),
      docs AS (
        SELECT d.id, d.title, d.folder_id, d.tags, d.updated_at FROM documents d
         WHERE d.archived_at IS NULL AND (%(tag)s::text IS NULL OR %(tag)s::text = ANY (d.tags))
           AND (%(root)s::uuid IS NULL OR d.folder_id IN (SELECT id FROM tree)))"""

    def rows(row: type[R], query: str) -> list[R]:
        with conn.cursor(row_factory=class_row(row)) as cur:
            return cur.execute(scope + query, params).fetchall()

    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(scope + " SELECT count(*) FROM docs", params).fetchone()
    total = int(row[0]) if row else 0
    # Each folder counts its documents and those of every folder below it.
    folders = rows(
        FolderCount,
        """,
          up AS (SELECT f.id AS folder_id, f.id AS ancestor, f.parent_id FROM document_folders f
                 UNION ALL SELECT up.folder_id, p.id, p.parent_id
                             FROM up JOIN document_folders p ON p.id = up.parent_id)
          SELECT document_folder_path(up.ancestor) AS path, count(*)::int AS documents
            FROM docs JOIN up ON up.folder_id = docs.folder_id
           WHERE %(root)s::uuid IS NULL OR up.ancestor IN (SELECT id FROM tree)
           GROUP BY up.ancestor ORDER BY 1""",
    )
    tags = rows(
        TagCount,
        """
          SELECT tag, sum(d)::int AS documents, sum(a)::int AS assets FROM (
            SELECT unnest(tags) AS tag, 1 AS d, 0 AS a FROM docs
            UNION ALL SELECT unnest(a.tags), 0, 1 FROM assets a
             WHERE a.archived_at IS NULL AND %(root)s::uuid IS NULL
               AND (%(tag)s::text IS NULL OR %(tag)s::text = ANY (a.tags))) x
          GROUP BY tag ORDER BY sum(d) + sum(a) DESC, tag""",
    )
    latest = rows(
        RecentDocument,
        """
          SELECT id, title, document_folder_path(folder_id) AS folder_path, tags, updated_at
            FROM docs ORDER BY updated_at DESC, id LIMIT %(recent)s""",
    )
    return Overview(
        folder=get_folder(conn, "document", root).path if root else "/",
        tag=tag,
        documents=total,
        folders=folders,
        tags=tags,
        recent=latest,
    )


def agent_id(conn: psycopg.Connection[Any], slug: str | None) -> UUID | None:
    """The id of the agent with this slug (None for None). Raises NotFound."""
    if slug is None:
        return None
    row = conn.execute("SELECT id FROM agents WHERE slug = %s", [slug]).fetchone()
    if row is None:
        raise NotFound(f"agent {slug!r} not found", field="agent")
    return UUID(str(row[0]))


def save_markdown_document(
    conn: psycopg.Connection[Any],
    *,
    title: str,
    markdown: str,
    folder: str | None = None,
    tags: Sequence[str] = (),
    agent: str | None = None,
) -> Document:
    """A new markdown document in the folder at path `folder` (created if missing; the root
    when None), queued for embedding, recorded as written by `agent` when given. Raises
    InvalidInput / TooLarge for bad values, NotFound for an unknown agent."""
    if not isinstance(markdown, str) or not markdown.strip():
        raise InvalidInput("markdown: the document's text, at least one non-space character", field="markdown")
    with conn.transaction():
        author = agent_id(conn, agent)
        folder_id = resolve_folder(conn, folder, create=True) if folder else None
        return create_document(
            conn,
            title=title,
            content_format="markdown",
            content_text=markdown,
            folder_id=folder_id,
            tags=tags,
            created_by_agent_id=author,
        )


def update_markdown_document(
    conn: psycopg.Connection[Any],
    document_id: UUID,
    *,
    markdown: str | None = None,
    title: str | None = None,
    tags: Sequence[str] | None = None,
    agent: str | None = None,
) -> Document:
    """Replace what is given: the text (the document becomes markdown), the title, the tags
    (the whole list). Raises InvalidInput when nothing is given or a value is bad, NotFound."""
    if markdown is None and title is None and tags is None:
        raise InvalidInput("give at least one of markdown, title, tags")
    if markdown is not None and (not isinstance(markdown, str) or not markdown.strip()):
        raise InvalidInput("markdown: the document's text, at least one non-space character", field="markdown")
    with conn.transaction():
        author = agent_id(conn, agent)
        return update_document(
            conn,
            document_id,
            title=UNSET if title is None else title,
            content_format=UNSET if markdown is None else "markdown",
            content_text=UNSET if markdown is None else markdown,
            tags=UNSET if tags is None else tags,
            updated_by_agent_id=UNSET if author is None else author,
        )
