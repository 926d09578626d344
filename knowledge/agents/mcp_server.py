"""The MCP server: the knowledge base as tools for agents, over stdio (`hq-knowledge mcp`) and
streamable HTTP (`/mcp` on the API). The tools call the same domain functions as the REST
routes, on a connection from the service's pool.

Every tool answers with text written for a language model (and the same facts as structured
content for programs). Bad arguments come back as tool errors that name the argument; a
search that finds nothing is an answer ("No results ..."), not an error. A session may be
bound to one agent (`--agent SLUG`, or the X-HQ-Agent header over HTTP): boot_context then
needs no slug, and what the agent saves is recorded as written by it. With `read_only` the
write tools are not offered.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from knowledge import __version__
from knowledge.agents.mcp_tools import (
    AGENT_HEADER,
    SEARCH_ANSWER_TOKENS,
    SEARCH_DEFAULT_LIMIT,
    SEARCH_MAX_LIMIT,
    WRITE_TOOLS,
    AdmissionSource,
    PoolSource,
    ReadsSource,
    Tools,
)
from knowledge.search import MAX_LIMIT

__all__ = ["AGENT_HEADER", "SEARCH_ANSWER_TOKENS", "build_mcp_server"]

INSTRUCTIONS = """\
HQ Knowledge: the team's documents (SOPs, research, policies, notes) and assets.
At start call boot_context for your standing context. Before answering from memory, call
search_knowledge; read a hit in full with get_document (ask for one section or a token
budget when it is long). list_knowledge shows the folders and tags there are. Write what you
learn back with save_document (or update_document for a document you already know)."""


class _Server(MCPServer):
    """MCPServer that hides the write tools, and refuses them by name, when read-only."""

    def __init__(self, *args: Any, read_only: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_only = read_only

    async def list_tools(self) -> Any:
        tools = await super().list_tools()
        return [t for t in tools if not (self.read_only and t.name in WRITE_TOOLS)]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        if self.read_only and name in WRITE_TOOLS:
            raise ToolError(
                f"{name} is not offered: this server runs read-only (--read-only), so agents "
                "can search and read but not write"
            )
        return await super().call_tool(name, arguments, context)


def build_mcp_server(
    pool: PoolSource,
    *,
    read_only: bool = False,
    agent: str | None = None,
    read_router: ReadsSource | None = None,
    admission: AdmissionSource | None = None,
) -> MCPServer:
    """The MCP server, its tools using connections from `pool()` (configured by
    `configure_for_search`); search_knowledge runs on `read_router()` (read replicas) when
    given, and holds a slot of `admission()` (the service's bound on searches in flight).
    `agent` binds every session to that agent's slug (the X-HQ-Agent header overrides it per
    HTTP request). Raises InvalidInput for a bad slug."""
    tools = Tools(pool, agent=agent, reads=read_router, admission=admission)
    server = _Server(
        "hq-knowledge", title="HQ Knowledge", version=__version__, instructions=INSTRUCTIONS, read_only=read_only
    )
    reads = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

    @server.tool(
        annotations=reads,
        description=f"""\
Search the knowledge base (documents and assets) by meaning and by keyword at once.
Use it before answering from memory, and to find a document's id. Returns up to `limit`
hits (default {SEARCH_DEFAULT_LIMIT}, at most {SEARCH_MAX_LIMIT}), best first, each as a block: title, folder
path, tags, id, fused score with the semantic and keyword ranks, and the best passage's
snippet with matched words in **bold**. "No results" is an answer, not an error: rephrase,
or use mode=keyword for exact names, codes and error messages. Snippets are excerpts: call
get_document(id) to read the whole document.""",
    )
    def search_knowledge(
        query: Annotated[str, Field(description="What to look for: a question or keywords, 1-1000 characters.")],
        limit: Annotated[
            int,
            Field(
                description=f"Hits to return, 1-{SEARCH_MAX_LIMIT} (default "
                f"{SEARCH_DEFAULT_LIMIT}; up to {MAX_LIMIT} is clamped to "
                f"{SEARCH_MAX_LIMIT})."
            ),
        ] = SEARCH_DEFAULT_LIMIT,
        mode: Annotated[
            Literal["hybrid", "semantic", "keyword"],
            Field(description="hybrid (default): meaning and keywords; semantic: meaning only; keyword: BM25 only."),
        ] = "hybrid",
        tags_any: Annotated[list[str] | None, Field(description="Only items with at least one of these tags.")] = None,
        folder: Annotated[
            str | None,
            Field(description="Only documents in this folder and below, by path such as /Operations/Support."),
        ] = None,
        kind: Annotated[
            Literal["document", "asset"] | None, Field(description="Only documents or only assets.")
        ] = None,
    ) -> CallToolResult:
        return tools.search(query, limit, mode, tags_any, folder, kind)

    @server.tool(
        annotations=reads,
        description="""\
Read one document as markdown, by the id that search_knowledge or list_knowledge gave.
Long documents: pass `section` (a heading, or a path such as "Refunds > Annual plans") to
read just that part, and/or `max_tokens` to cap the answer; it is then cut after the last
whole paragraph that fits, and the answer says so and lists the document's sections.""",
    )
    def get_document(
        id: Annotated[str, Field(description="The document's id (a UUID).")],
        max_tokens: Annotated[int | None, Field(description="Token budget for the answer, 1-1000000.")] = None,
        section: Annotated[str | None, Field(description="A heading of the document (any case).")] = None,
    ) -> CallToolResult:
        return tools.document(id, max_tokens, section)

    @server.tool(
        annotations=reads,
        description="""\
Your boot context: every document tagged boot:all, then those tagged boot:<your slug>,
pinned first, as one markdown text, exactly as GET /boot/{slug} serves it. Call it when you
start. The answer carries its version: pass it back as known_version later and you get
"unchanged" until an included document changes. With max_tokens the bundle is cut between
paragraphs and what was left out is listed at its end.""",
    )
    def boot_context(
        ctx: Context[Any, Any],
        agent_slug: Annotated[
            str | None, Field(description="Your agent slug; not needed when this session is bound to an agent.")
        ] = None,
        max_tokens: Annotated[int | None, Field(description="Token budget, 1-1000000.")] = None,
        known_version: Annotated[str | None, Field(description="The version from your last boot_context.")] = None,
    ) -> CallToolResult:
        return tools.boot(agent_slug, max_tokens, known_version, ctx)

    @server.tool(
        annotations=reads,
        description="""\
See what the knowledge base holds: the number of documents, the folders (with how many
documents each holds), the tags (with counts) and the most recently updated documents.
Narrow it with `folder` (a path such as /Research) and/or `tag`. Use it to find where to
look or where to save, not to answer questions (search_knowledge does that).""",
    )
    def list_knowledge(
        folder: Annotated[str | None, Field(description="A folder path such as /Research; / is everything.")] = None,
        tag: Annotated[str | None, Field(description="Only documents with this tag.")] = None,
    ) -> CallToolResult:
        return tools.overview(folder, tag)

    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

    @server.tool(
        annotations=writes,
        description="""\
Save something you learned as a new markdown document, so that you and other agents can find
it later. `folder` is a path such as /Research/Competitors (created if missing; default: the
top level). Returns the new document's id. Use update_document to change a document instead
of saving a second copy.""",
    )
    def save_document(
        ctx: Context[Any, Any],
        title: Annotated[str, Field(description="A title that says what the document is about.")],
        markdown: Annotated[str, Field(description="The document's text, as markdown.")],
        folder: Annotated[str | None, Field(description="Folder path, e.g. /Research/Competitors.")] = None,
        tags: Annotated[list[str] | None, Field(description="Tags, e.g. ['pricing', 'boot:closer'].")] = None,
    ) -> CallToolResult:
        return tools.save(title, markdown, folder, tags, ctx)

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
        description="""\
Change a document: replace its text (markdown), its title and/or its tags (the whole list).
What you leave out stays as it is. Read it first with get_document so that you keep what
should stay.""",
    )
    def update_document(
        ctx: Context[Any, Any],
        id: Annotated[str, Field(description="The document's id (a UUID).")],
        markdown: Annotated[str | None, Field(description="The new text, replacing the old.")] = None,
        title: Annotated[str | None, Field(description="The new title.")] = None,
        tags: Annotated[list[str] | None, Field(description="The new tags, replacing the old.")] = None,
    ) -> CallToolResult:
        return tools.update(id, markdown, title, tags, ctx)

    return server
