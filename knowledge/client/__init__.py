"""A typed client of the knowledge service's REST API, for agents and scripts that do not speak
MCP: the MCP tools' operations (search, read, boot, overview, save, update) as methods that
return frozen dataclasses. `KnowledgeClient` is synchronous, `AsyncKnowledgeClient` async;
they build requests and read answers with the same functions, only the I/O differs.

After a write, a service with read replicas answers with the primary's WAL position
(`HQ-Write-LSN`); a client sends back the latest it received with every request, so that its
reads see its own writes (a replica serves them only once it has replayed that position).

Errors are the package's own: the server's status picks the class (404 NotFound, 409
Conflict, 400/422 InvalidInput, 413 TooLarge, 503 DatabaseUnavailable, anything else
KnowledgeError) and its message is the server's. A service that cannot be reached raises
ServiceUnavailable. Use a client as a context manager, or call `close()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self, TypeVar
from uuid import UUID

import httpx

from knowledge.client.calls import (
    AGENT_HEADER,
    DEFAULT_URL,
    WRITE_LSN_HEADER,
    BootContext,
    Call,
    DocumentText,
    FolderCount,
    Hit,
    Kind,
    Mode,
    Overview,
    RecentDocument,
    SavedDocument,
    SearchResults,
    TagCount,
    boot_call,
    document_call,
    finish,
    latest_lsn,
    overview_call,
    request_args,
    save_call,
    search_call,
    send_again,
    unreachable,
    update_call,
)

T = TypeVar("T")

__all__ = [
    "AGENT_HEADER",
    "DEFAULT_URL",
    "WRITE_LSN_HEADER",
    "AsyncKnowledgeClient",
    "BootContext",
    "DocumentText",
    "FolderCount",
    "Hit",
    "KnowledgeClient",
    "Overview",
    "RecentDocument",
    "SavedDocument",
    "SearchResults",
    "TagCount",
]


class KnowledgeClient:
    """The synchronous client. `agent` is sent as the X-HQ-Agent header on every request (what
    the client saves is recorded as written by that agent) and is boot()'s default slug; `key`
    (an API key, `hq-knowledge keys create`) is sent as `Authorization: Bearer <key>`, and a
    key bound to an agent makes that agent the writer and boot()'s default.
    `http`: send through this httpx.Client instead (its base URL and timeout apply, and the
    caller closes it); `transport` is handed to the httpx.Client made otherwise."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        agent: str | None = None,
        key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.agent = agent
        self.key = key
        self.write_lsn: str | None = None  # the last HQ-Write-LSN received, sent with every request
        self._owned = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections, unless the httpx.Client was the caller's."""
        if self._owned:
            self._http.close()

    def _run(self, call: Call[T]) -> T:
        args = request_args(call, self.agent, self.key, self.write_lsn)
        try:
            try:
                response = self._http.request(**args)
            except httpx.TransportError as e:
                if not send_again(call, e):
                    raise
                response = self._http.request(**args)  # on another connection: the dropped one is gone
        except httpx.TransportError as e:
            raise unreachable(self._http.base_url, e) from e
        self.write_lsn = latest_lsn(self.write_lsn, response)
        return finish(call, response)

    def search(
        self,
        query: str,
        *,
        limit: int = 10,
        mode: Mode = "hybrid",
        tags_any: Sequence[str] = (),
        folder: UUID | None = None,
        kind: Kind | None = None,
    ) -> SearchResults:
        """Hybrid (or semantic, keyword) search; best hits first. `folder` is a folder's id (its
        subfolders count), not a path: overview() lists paths, search hits carry them."""
        return self._run(search_call(query, limit, mode, tags_any, folder, kind))

    def get_document(self, id: UUID, *, max_tokens: int | None = None, section: str | None = None) -> DocumentText:
        """The document as markdown, or one section (a heading or heading path, any case), cut
        after the last whole block that fits `max_tokens`. Raises NotFound, InvalidInput."""
        return self._run(document_call(id, max_tokens, section))

    def boot(
        self, agent_slug: str | None = None, *, max_tokens: int | None = None, known_version: str | None = None
    ) -> BootContext:
        """The boot bundle of `agent_slug` (default: the client's agent) as markdown. With the
        `version` of an earlier answer as `known_version`, `unchanged` while it still holds."""
        return self._run(boot_call(agent_slug or self.agent, max_tokens, known_version, self.key))

    def overview(self, *, folder: str | None = None, tag: str | None = None) -> Overview:
        """Document count, folders, tags and recent documents under the folder path `folder`."""
        return self._run(overview_call(folder, tag))

    def save_document(
        self, title: str, markdown: str, *, folder: str | None = None, tags: Sequence[str] = ()
    ) -> SavedDocument:
        """A new markdown document in the folder path `folder` (made if missing; default the root)."""
        return self._run(save_call(title, markdown, folder, tags))

    def update_document(
        self, id: UUID, *, markdown: str | None = None, title: str | None = None, tags: Sequence[str] | None = None
    ) -> SavedDocument:
        """Replace what is given (tags: the whole list); at least one. Raises NotFound, InvalidInput."""
        return self._run(update_call(id, markdown, title, tags))


class AsyncKnowledgeClient:
    """KnowledgeClient's async twin: the same methods, awaited. `http`: an httpx.AsyncClient
    to send through (the caller closes it)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        agent: str | None = None,
        key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.agent = agent
        self.key = key
        self.write_lsn: str | None = None  # as KnowledgeClient.write_lsn
        self._owned = http is None
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections, unless the httpx.AsyncClient was the caller's."""
        if self._owned:
            await self._http.aclose()

    async def _run(self, call: Call[T]) -> T:
        args = request_args(call, self.agent, self.key, self.write_lsn)
        try:
            try:
                response = await self._http.request(**args)
            except httpx.TransportError as e:
                if not send_again(call, e):
                    raise
                response = await self._http.request(**args)
        except httpx.TransportError as e:
            raise unreachable(self._http.base_url, e) from e
        self.write_lsn = latest_lsn(self.write_lsn, response)
        return finish(call, response)

    async def search(
        self,
        query: str,
        *,
        limit: int = 10,
        mode: Mode = "hybrid",
        tags_any: Sequence[str] = (),
        folder: UUID | None = None,
        kind: Kind | None = None,
    ) -> SearchResults:
        """See KnowledgeClient.search: `folder` is a folder's id, not a path."""
        return await self._run(search_call(query, limit, mode, tags_any, folder, kind))

    async def get_document(
        self, id: UUID, *, max_tokens: int | None = None, section: str | None = None
    ) -> DocumentText:
        return await self._run(document_call(id, max_tokens, section))

    async def boot(
        self, agent_slug: str | None = None, *, max_tokens: int | None = None, known_version: str | None = None
    ) -> BootContext:
        return await self._run(boot_call(agent_slug or self.agent, max_tokens, known_version, self.key))

    async def overview(self, *, folder: str | None = None, tag: str | None = None) -> Overview:
        return await self._run(overview_call(folder, tag))

    async def save_document(
        self, title: str, markdown: str, *, folder: str | None = None, tags: Sequence[str] = ()
    ) -> SavedDocument:
        return await self._run(save_call(title, markdown, folder, tags))

    async def update_document(
        self, id: UUID, *, markdown: str | None = None, title: str | None = None, tags: Sequence[str] | None = None
    ) -> SavedDocument:
        return await self._run(update_call(id, markdown, title, tags))
