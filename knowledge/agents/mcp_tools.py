"""The MCP server's tools, as methods on the service's pool: arguments checked (a tool error
names the argument), the domain functions called, answers written for a language model with
the same facts as structured content."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from psycopg_pool import ConnectionPool

from knowledge.agents.operations import (
    knowledge_overview,
    read_document,
    resolve_folder,
    save_markdown_document,
    update_markdown_document,
)
from knowledge.db.pools import pooled_connection
from knowledge.db.replicas import ReadRouter
from knowledge.errors import KnowledgeError
from knowledge.search import MAX_LIMIT, SearchQuery, SearchResult
from knowledge.search.admission import Admission
from knowledge.search.boot import MARKDOWN, boot_bundle, boot_version, bundle_markdown, default_token_counter
from knowledge.search.setup import search_active
from knowledge.store.keys import Caller, allows, caller_of
from knowledge.store.validation import check_slug

__all__ = ["SEARCH_ANSWER_TOKENS", "Tools"]

AGENT_HEADER = "X-HQ-Agent"
SEARCH_DEFAULT_LIMIT = 5
SEARCH_MAX_LIMIT = 20  # larger limits (up to the REST maximum) are clamped to this
SEARCH_ANSWER_TOKENS = 1600  # a search_knowledge answer at limit 10 stays under this (a test checks)
SNIPPET_CHARS = 240  # of a hit's snippet in a search_knowledge answer
WRITE_TOOLS = ("save_document", "update_document")

PoolSource = Callable[[], ConnectionPool[Any]]
ReadsSource = Callable[[], ReadRouter]
AdmissionSource = Callable[[], Admission]

ARGUMENTS = {"q": "query", "slug": "agent_slug"}
"""The service's names for inputs (KnowledgeError.field) that a tool's argument calls otherwise."""


def tool_error(e: KnowledgeError) -> ToolError:
    """The tool error for `e`, opening with the tool's name of the argument it concerns: a
    message that starts with the service's name for it has that name replaced, any other
    message is prefixed with it. Without a field, the message as it is."""
    if e.field is None:
        return ToolError(e.message)
    name = ARGUMENTS.get(e.field, e.field)
    head, sep, rest = e.message.partition(" ")
    if head.rstrip(":") == e.field:
        return ToolError(f"{name}{head[len(e.field) :]}{sep}{rest}")
    return ToolError(f"{name}: {e.message}")


def uuid_argument(name: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise ToolError(
            f"{name}: not an id; give the id (a UUID such as 0b5c1e2a-...) shown by "
            f"search_knowledge or list_knowledge, got {str(value)[:60]!r}"
        ) from None


def plain_snippet(snippet: str) -> str:
    """A search snippet (HTML-escaped, <mark> around matches) as text with **matches**."""
    return html.unescape(snippet.replace("<mark>", "**").replace("</mark>", "**"))


def shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, '…' marking the cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    if cut.count("**") % 2:  # do not leave a bold run open
        cut = cut[: cut.rfind("**")].rstrip()
    return cut + "…"


def caller_of_session(ctx: Context[Any, Any] | None) -> Caller | None:
    """The caller the API's Gate found for this HTTP request; None over stdio (the local
    user, who owns the data directory anyway)."""
    try:
        request = ctx.request_context.request if ctx is not None else None
    except ValueError:  # no request context: called outside a session
        return None
    return caller_of(request) if request is not None else None


def need_write(tool: str, ctx: Context[Any, Any] | None) -> None:
    caller = caller_of_session(ctx)
    if caller is not None and not allows(caller.scope, "write"):
        raise ToolError(f"{tool} needs a key with the write scope; {caller.describe()} may search and read only")


def tool_result(text: str, structured: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


class Tools:
    """The tool implementations, on connections from the pool that `pool` returns."""

    def __init__(
        self,
        pool: PoolSource,
        *,
        agent: str | None,
        reads: ReadsSource | None = None,
        admission: AdmissionSource | None = None,
    ) -> None:
        self._pool = pool
        self._reads = reads
        self._admission = admission
        self._agent = check_slug(agent) if agent else None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; the package's errors raised meanwhile become tool errors
        naming the argument they concern (`tool_error`)."""
        try:
            with pooled_connection(self._pool()) as conn:
                yield conn
        except KnowledgeError as e:
            raise tool_error(e) from e

    def agent(self, ctx: Context[Any, Any] | None) -> str | None:
        """The agent this session is bound to: the agent of the request's API key, else the
        X-HQ-Agent header, else the server's. A key's agent cannot be overridden."""
        caller = caller_of_session(ctx)
        if caller is not None and caller.agent:
            return caller.agent
        try:
            headers = ctx.headers if ctx is not None else None
        except ValueError:  # no request context: called outside a session
            headers = None
        slug = (headers or {}).get(AGENT_HEADER.lower())
        if slug:
            try:
                return check_slug(slug.strip())
            except KnowledgeError as e:
                raise ToolError(f"{AGENT_HEADER} header: {e.message}") from e
        return self._agent

    def search(
        self, query: str, limit: int, mode: str, tags_any: list[str] | None, folder: str | None, kind: str | None
    ) -> CallToolResult:
        if not 1 <= limit <= MAX_LIMIT:
            raise ToolError(
                f"limit: from 1 to {SEARCH_MAX_LIMIT} (up to {MAX_LIMIT} is accepted and clamped "
                f"to {SEARCH_MAX_LIMIT}), got {limit}"
            )
        shown = min(limit, SEARCH_MAX_LIMIT)

        def run(conn: psycopg.Connection[Any]) -> SearchResult:
            folder_id = resolve_folder(conn, folder) if folder else None
            q = SearchQuery(
                q=query, limit=shown, mode=mode, tags_any=tuple(tags_any or ()), folder=folder_id, kind=kind
            ).validated()
            return search_active(conn, q)

        admission = self._admission() if self._admission is not None else None
        try:
            with admission.slot() if admission is not None else nullcontext():
                if self._reads is None:
                    with self.connection() as conn:
                        result = run(conn)
                else:  # on a read replica when one is up to date, else (or when it fails) on the primary
                    result = self._reads().run(run)
        except KnowledgeError as e:  # Overloaded among them: the message says when to retry
            raise tool_error(e) from e
        where = f" in {folder}" if folder else ""
        if not result.hits:
            text = (
                f'No results for "{query}"{where} ({result.mode} search). Try other words, '
                "mode=keyword for exact terms or names, or fewer filters."
            )
            return tool_result(text, {"query": query, "mode": result.mode, "hits": []})
        clamped = f"; limit clamped to {SEARCH_MAX_LIMIT}" if limit > SEARCH_MAX_LIMIT else ""
        lines = [
            (
                f'{len(result.hits)} results for "{query}"{where} ({result.mode} search{clamped}). '
                "Read one in full with get_document(id)."
            )
        ]
        hits = []
        for n, hit in enumerate(result.hits, start=1):
            legs = hit.explain or {}
            ranks = ", ".join(
                f"{leg} #{legs[leg]['rank']}"
                for leg in ("semantic", "keyword")
                if legs.get(leg, {}).get("rank") is not None
            )
            tags = f" | tags: {', '.join(hit.tags)}" if hit.tags else ""
            kind_note = f" ({hit.asset_type} asset)" if hit.kind == "asset" else ""
            section = " > ".join(hit.passages[0].heading_path) if hit.passages else ""
            lines.append("")
            lines.append(
                f"[{n}] {hit.title}{kind_note} | {hit.folder_path}"
                + (f" | section: {section}" if section else "")
                + tags
            )
            lines.append(f"id: {hit.id} | score {hit.score:.4f} ({ranks or 'no leg rank'})")
            lines.append(shorten(re.sub(r"\s+", " ", plain_snippet(hit.snippet)).strip(), SNIPPET_CHARS))
            hits.append(
                {
                    "id": str(hit.id),
                    "kind": hit.kind,
                    "title": hit.title,
                    "folder_path": hit.folder_path,
                    "tags": hit.tags,
                    "score": hit.score,
                    "semantic_rank": legs.get("semantic", {}).get("rank"),
                    "keyword_rank": legs.get("keyword", {}).get("rank"),
                }
            )
        return tool_result("\n".join(lines), {"query": query, "mode": result.mode, "hits": hits})

    def document(self, id: str, max_tokens: int | None, section: str | None) -> CallToolResult:
        doc_id = uuid_argument("id", id)
        with self.connection() as conn:
            doc = read_document(conn, doc_id, max_tokens=max_tokens, section=section)
        head = [
            f"Document {doc.id} | {doc.folder_path}"
            + (f" | tags: {', '.join(doc.tags)}" if doc.tags else "")
            + f" | updated {doc.updated_at:%Y-%m-%d %H:%M} UTC"
        ]
        if doc.section:
            head.append(f"Section: {doc.section}")
        if doc.truncated:
            head.append(
                f"Cut at a paragraph boundary to fit max_tokens={max_tokens}: {doc.tokens} of "
                f"{doc.total_tokens} tokens shown. Ask for one section, or a larger max_tokens."
            )
        if len(doc.sections) > 1 and (doc.truncated or not doc.section):
            head.append("Sections: " + "; ".join(doc.sections))
        text = "\n".join(head) + "\n\n" + doc.markdown
        return tool_result(
            text,
            {
                "id": str(doc.id),
                "title": doc.title,
                "folder_path": doc.folder_path,
                "tags": doc.tags,
                "section": doc.section,
                "truncated": doc.truncated,
                "tokens": doc.tokens,
                "total_tokens": doc.total_tokens,
                "sections": doc.sections,
            },
        )

    def boot(
        self, agent_slug: str | None, max_tokens: int | None, known_version: str | None, ctx: Context[Any, Any] | None
    ) -> CallToolResult:
        slug = agent_slug or self.agent(ctx)
        if not slug:
            raise ToolError("agent_slug: give your agent's slug (this session is not bound to an agent)")
        with self.connection() as conn:
            if known_version:
                current = boot_version(conn, slug, max_tokens, MARKDOWN)
                if known_version.strip().strip('"') == current:
                    return tool_result(
                        f"unchanged: the boot bundle of {slug} is still version {current}.",
                        {"agent": slug, "version": current, "unchanged": True},
                    )
            bundle = boot_bundle(
                conn, slug, max_tokens=max_tokens, media_type=MARKDOWN, count_tokens=default_token_counter()
            )
        omitted = [
            {"id": str(o.id), "kind": o.kind, "title": o.title, "tokens": o.tokens, "reason": o.reason}
            for o in bundle.omitted
        ]
        return tool_result(
            bundle_markdown(bundle),
            {"agent": slug, "version": bundle.version, "unchanged": False, "tokens": bundle.tokens, "omitted": omitted},
        )

    def overview(self, folder: str | None, tag: str | None) -> CallToolResult:
        with self.connection() as conn:
            ov = knowledge_overview(conn, folder=folder, tag=tag)
        scope = ov.folder + (f", tagged {tag}" if tag else "")
        lines = [f"{ov.documents} documents under {scope}."]
        if ov.folders:
            lines += ["", "Folders (documents, subfolders included):"]
            lines += [f"- {f.path} ({f.documents})" for f in ov.folders]
        if ov.tags:
            lines += ["", "Tags (documents, assets):"]
            lines += [f"- {t.tag} ({t.documents}, {t.assets})" for t in ov.tags[:50]]
            if len(ov.tags) > 50:
                lines.append(f"- ... and {len(ov.tags) - 50} more")
        if ov.recent:
            lines += ["", "Recently updated:"]
            lines += [f"- {d.title} | {d.folder_path} | {d.updated_at:%Y-%m-%d} | id: {d.id}" for d in ov.recent]
        structured = {
            "folder": ov.folder,
            "tag": tag,
            "documents": ov.documents,
            "folders": [{"path": f.path, "documents": f.documents} for f in ov.folders],
            "tags": [{"tag": t.tag, "documents": t.documents, "assets": t.assets} for t in ov.tags],
            "recent": [{"id": str(d.id), "title": d.title, "folder_path": d.folder_path} for d in ov.recent],
        }
        return tool_result("\n".join(lines), structured)

    def save(
        self, title: str, markdown: str, folder: str | None, tags: list[str] | None, ctx: Context[Any, Any] | None
    ) -> CallToolResult:
        need_write("save_document", ctx)
        with self.connection() as conn:
            doc = save_markdown_document(
                conn, title=title, markdown=markdown, folder=folder, tags=tags or (), agent=self.agent(ctx)
            )
        return tool_result(
            f"Saved {doc.title!r} as document {doc.id} in {doc.folder_path}; it is searchable "
            "once indexed (a few seconds).",
            {"id": str(doc.id), "title": doc.title, "folder_path": doc.folder_path, "tags": doc.tags},
        )

    def update(
        self, id: str, markdown: str | None, title: str | None, tags: list[str] | None, ctx: Context[Any, Any] | None
    ) -> CallToolResult:
        need_write("update_document", ctx)
        doc_id = uuid_argument("id", id)
        with self.connection() as conn:
            doc = update_markdown_document(
                conn, doc_id, markdown=markdown, title=title, tags=tags, agent=self.agent(ctx)
            )
        return tool_result(
            f"Updated document {doc.id} ({doc.title!r}, version {doc.content_version}).",
            {"id": str(doc.id), "title": doc.title, "tags": doc.tags, "content_version": doc.content_version},
        )
