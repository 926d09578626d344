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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Literal, NoReturn, Self, TypeVar
from urllib.parse import quote
from uuid import UUID

import httpx

from .errors import (
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    InvalidInput,
    KnowledgeError,
    NotFound,
    ServiceUnavailable,
    TooLarge,
    Unauthorized,
)
from .lsn import parse_lsn

__all__ = [
    "AsyncKnowledgeClient",
    "BootContext",
    "DocumentText",
    "KnowledgeClient",
    "Overview",
    "SavedDocument",
    "SearchResults",
]

DEFAULT_URL = "http://127.0.0.1:8765"
AGENT_HEADER = "X-HQ-Agent"
WRITE_LSN_HEADER = "HQ-Write-LSN"
Mode = Literal["hybrid", "semantic", "keyword"]
Kind = Literal["document", "asset"]
T = TypeVar("T")


@dataclass(frozen=True)
class Hit:
    """A search hit. `snippet` is HTML-escaped text with matched words in <mark>; `passages`
    are the best matching passages as (heading path, content)."""

    id: UUID
    kind: str
    title: str
    folder_path: str
    tags: list[str]
    score: float
    snippet: str
    passages: list[tuple[list[str], str]]
    source_path: str | None


@dataclass(frozen=True)
class SearchResults:
    hits: list[Hit]
    mode: str
    took_ms: float


@dataclass(frozen=True)
class DocumentText:
    """A document as markdown (`# <title>`, a blank line, the body or `section`); `truncated`
    when it was cut to max_tokens. `sections` lists the document's headings."""

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
class BootContext:
    """An agent's boot bundle as markdown (what was left out is listed under its `# Left out`
    heading). With `unchanged`, the bundle is still `version` and `markdown` is empty."""

    agent: str
    version: str
    markdown: str
    unchanged: bool


@dataclass(frozen=True)
class FolderCount:
    path: str
    documents: int


@dataclass(frozen=True)
class TagCount:
    tag: str
    documents: int
    assets: int


@dataclass(frozen=True)
class RecentDocument:
    id: UUID
    title: str
    folder_path: str
    tags: list[str]
    updated_at: datetime


@dataclass(frozen=True)
class Overview:
    folder: str
    tag: str | None
    documents: int
    folders: list[FolderCount] = field(default_factory=list)
    tags: list[TagCount] = field(default_factory=list)
    recent: list[RecentDocument] = field(default_factory=list)


@dataclass(frozen=True)
class SavedDocument:
    id: UUID
    title: str
    folder_path: str
    tags: list[str]


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request and how to read its answer: `parse` gets the response when its status is
    2xx or in `accept`; any other status is raised as an error."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    accept: frozenset[int] = frozenset()
    rename: Mapping[str, str] = field(default_factory=dict)  # server parameter -> the method's


_ERRORS: dict[int, type[KnowledgeError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: InvalidInput,
    503: DatabaseUnavailable,
}


def _message(response: httpx.Response, rename: Mapping[str, str]) -> str:
    """The server's message: {"detail": "..."} as it is, FastAPI's validation list as
    `name: msg; ...`; a leading server parameter name is replaced by the method's."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} from {response.request.url}: {response.text[:200]}"
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", [])[1:]]  # without "query", "body", "path"
            name = ".".join(rename.get(p, p) for p in loc)
            parts.append(f"{name}: {item.get('msg', '')}" if name else str(item.get("msg", "")))
        return "; ".join(parts)
    text = str(detail)
    head, sep, tail = text.partition(":")
    return f"{rename[head]}{sep}{tail}" if sep and head in rename else text


def _raise_for(response: httpx.Response, rename: Mapping[str, str]) -> NoReturn:
    error = _ERRORS.get(response.status_code, KnowledgeError)(_message(response, rename))
    error.status = response.status_code
    raise error


def _unreachable(base_url: httpx.URL, e: httpx.TransportError) -> ServiceUnavailable:
    base = str(base_url).rstrip("/")
    return ServiceUnavailable(
        f"cannot reach the knowledge service at {base} ({type(e).__name__}: {e}); start it with `hq-knowledge serve`"
    )


def _finish(call: _Call[T], response: httpx.Response) -> T:
    if not response.is_success and response.status_code not in call.accept:
        _raise_for(response, call.rename)
    try:
        return call.parse(response)
    except (ValueError, KeyError, TypeError) as e:
        raise KnowledgeError(
            f"{call.method} {call.path}: unexpected answer from the service ({type(e).__name__}: {e})"
        ) from e


def _headers(call: _Call[Any], agent: str | None, key: str | None, write_lsn: str | None) -> dict[str, str]:
    headers = {**call.headers, AGENT_HEADER: agent} if agent else dict(call.headers)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if write_lsn:
        headers[WRITE_LSN_HEADER] = write_lsn
    return headers


def _latest_lsn(known: str | None, response: httpx.Response) -> str | None:
    """The later of `known` and the response's HQ-Write-LSN."""
    given: str | None = response.headers.get(WRITE_LSN_HEADER)
    position = parse_lsn(given)
    if position is None or (known is not None and (parse_lsn(known) or 0) >= position):
        return known
    return given


def _id(value: UUID) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInput(f"id: a document's id (a UUID), got {str(value)[:60]!r}") from None


def _optional(**values: object) -> tuple[tuple[str, str], ...]:
    return tuple((name, str(value)) for name, value in values.items() if value is not None)


# One builder and one parser per operation.


def _search_call(
    query: str, limit: int, mode: str, tags_any: Sequence[str], folder: UUID | None, kind: str | None
) -> _Call[SearchResults]:
    params = (
        ("q", query),
        ("limit", str(limit)),
        ("mode", mode),
        *(("tags_any", t) for t in tags_any),
        *_optional(folder=folder, kind=kind),
    )
    return _Call("GET", "/search", _parse_search, params=params, rename={"q": "query"})


def _parse_search(response: httpx.Response) -> SearchResults:
    body = response.json()
    hits = [
        Hit(
            id=UUID(h["id"]),
            kind=h["kind"],
            title=h["title"],
            folder_path=h["folder_path"],
            tags=list(h["tags"]),
            score=float(h["score"]),
            snippet=h["snippet"],
            passages=[(list(p["heading_path"]), p["content"]) for p in h["passages"]],
            source_path=h["source_path"],
        )
        for h in body["hits"]
    ]
    return SearchResults(hits=hits, mode=body["mode"], took_ms=float(body["took_ms"]))


def _document_call(document_id: UUID, max_tokens: int | None, section: str | None) -> _Call[DocumentText]:
    return _Call(
        "GET",
        f"/documents/{_id(document_id)}/markdown",
        _parse_document,
        params=_optional(max_tokens=max_tokens, section=section),
        rename={"document_id": "id"},
    )


def _parse_document(response: httpx.Response) -> DocumentText:
    d = response.json()
    return DocumentText(
        id=UUID(d["id"]),
        title=d["title"],
        folder_path=d["folder_path"],
        tags=list(d["tags"]),
        updated_at=datetime.fromisoformat(d["updated_at"]),
        markdown=d["markdown"],
        tokens=d["tokens"],
        total_tokens=d["total_tokens"],
        truncated=d["truncated"],
        section=d["section"],
        sections=list(d["sections"]),
    )


def _boot_call(
    agent_slug: str | None, max_tokens: int | None, known_version: str | None, key: str | None = None
) -> _Call[BootContext]:
    if not agent_slug and not key:
        raise InvalidInput(
            "agent_slug: give the agent's slug, or make the client with agent=<slug> or with the key of an agent"
        )
    headers = {"Accept": "text/markdown"}
    known = known_version.strip().strip('"') if known_version else None
    if known:
        headers["If-None-Match"] = f'"{known}"'

    def parse(response: httpx.Response) -> BootContext:
        return _parse_boot(response, agent_slug or response.headers.get(AGENT_HEADER, ""), known)

    path = f"/boot/{quote(agent_slug, safe='')}" if agent_slug else "/boot"  # /boot: the key's agent
    return _Call("GET", path, parse, params=_optional(max_tokens=max_tokens), headers=headers, accept=frozenset({304}))


def _parse_boot(response: httpx.Response, agent_slug: str, known_version: str | None) -> BootContext:
    if response.status_code == 304:
        return BootContext(agent=agent_slug, version=known_version or "", markdown="", unchanged=True)
    version = response.headers["ETag"].removeprefix("W/").strip('"')
    return BootContext(agent=agent_slug, version=version, markdown=response.text, unchanged=False)


def _overview_call(folder: str | None, tag: str | None) -> _Call[Overview]:
    return _Call("GET", "/overview", _parse_overview, params=_optional(folder=folder, tag=tag))


def _parse_overview(response: httpx.Response) -> Overview:
    o = response.json()
    return Overview(
        folder=o["folder"],
        tag=o["tag"],
        documents=o["documents"],
        folders=[FolderCount(path=f["path"], documents=f["documents"]) for f in o["folders"]],
        tags=[TagCount(tag=t["tag"], documents=t["documents"], assets=t["assets"]) for t in o["tags"]],
        recent=[
            RecentDocument(
                id=UUID(d["id"]),
                title=d["title"],
                folder_path=d["folder_path"],
                tags=list(d["tags"]),
                updated_at=datetime.fromisoformat(d["updated_at"]),
            )
            for d in o["recent"]
        ],
    )


def _save_call(title: str, markdown: str, folder: str | None, tags: Sequence[str]) -> _Call[SavedDocument]:
    body = {"title": title, "markdown": markdown, "folder": folder, "tags": list(tags)}
    return _Call("POST", "/documents/markdown", _parse_saved, json=body)


def _update_call(
    document_id: UUID, markdown: str | None, title: str | None, tags: Sequence[str] | None
) -> _Call[SavedDocument]:
    body = {"markdown": markdown, "title": title, "tags": None if tags is None else list(tags)}
    return _Call(
        "PATCH",
        f"/documents/{_id(document_id)}/markdown",
        _parse_saved,
        json={k: v for k, v in body.items() if v is not None},
        rename={"document_id": "id"},
    )


def _parse_saved(response: httpx.Response) -> SavedDocument:
    d = response.json()
    return SavedDocument(id=UUID(d["id"]), title=d["title"], folder_path=d["folder_path"], tags=list(d["tags"]))


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

    def _run(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                headers=_headers(call, self.agent, self.key, self.write_lsn),
            )
        except httpx.TransportError as e:
            raise _unreachable(self._http.base_url, e) from e
        self.write_lsn = _latest_lsn(self.write_lsn, response)
        return _finish(call, response)

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
        return self._run(_search_call(query, limit, mode, tags_any, folder, kind))

    def get_document(self, id: UUID, *, max_tokens: int | None = None, section: str | None = None) -> DocumentText:
        """The document as markdown, or one section (a heading or heading path, any case), cut
        after the last whole block that fits `max_tokens`. Raises NotFound, InvalidInput."""
        return self._run(_document_call(id, max_tokens, section))

    def boot(
        self, agent_slug: str | None = None, *, max_tokens: int | None = None, known_version: str | None = None
    ) -> BootContext:
        """The boot bundle of `agent_slug` (default: the client's agent) as markdown. With the
        `version` of an earlier answer as `known_version`, `unchanged` while it still holds."""
        return self._run(_boot_call(agent_slug or self.agent, max_tokens, known_version, self.key))

    def overview(self, *, folder: str | None = None, tag: str | None = None) -> Overview:
        """Document count, folders, tags and recent documents under the folder path `folder`."""
        return self._run(_overview_call(folder, tag))

    def save_document(
        self, title: str, markdown: str, *, folder: str | None = None, tags: Sequence[str] = ()
    ) -> SavedDocument:
        """A new markdown document in the folder path `folder` (made if missing; default the root)."""
        return self._run(_save_call(title, markdown, folder, tags))

    def update_document(
        self, id: UUID, *, markdown: str | None = None, title: str | None = None, tags: Sequence[str] | None = None
    ) -> SavedDocument:
        """Replace what is given (tags: the whole list); at least one. Raises NotFound, InvalidInput."""
        return self._run(_update_call(id, markdown, title, tags))


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

    async def _run(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                headers=_headers(call, self.agent, self.key, self.write_lsn),
            )
        except httpx.TransportError as e:
            raise _unreachable(self._http.base_url, e) from e
        self.write_lsn = _latest_lsn(self.write_lsn, response)
        return _finish(call, response)

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
        return await self._run(_search_call(query, limit, mode, tags_any, folder, kind))

    async def get_document(
        self, id: UUID, *, max_tokens: int | None = None, section: str | None = None
    ) -> DocumentText:
        return await self._run(_document_call(id, max_tokens, section))

    async def boot(
        self, agent_slug: str | None = None, *, max_tokens: int | None = None, known_version: str | None = None
    ) -> BootContext:
        return await self._run(_boot_call(agent_slug or self.agent, max_tokens, known_version, self.key))

    async def overview(self, *, folder: str | None = None, tag: str | None = None) -> Overview:
        return await self._run(_overview_call(folder, tag))

    async def save_document(
        self, title: str, markdown: str, *, folder: str | None = None, tags: Sequence[str] = ()
    ) -> SavedDocument:
        return await self._run(_save_call(title, markdown, folder, tags))

    async def update_document(
        self, id: UUID, *, markdown: str | None = None, title: str | None = None, tags: Sequence[str] | None = None
    ) -> SavedDocument:
        return await self._run(_update_call(id, markdown, title, tags))
