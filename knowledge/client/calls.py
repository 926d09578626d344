"""What the clients send and read: one `Call` per operation (method, path, parameters, how
to read the answer), the answers as frozen dataclasses, and how an error answer becomes the
package's error. No I/O here: the clients (knowledge.client) run the calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, NoReturn, TypeVar
from urllib.parse import quote
from uuid import UUID

import httpx

from knowledge.answers import DocumentText, FolderCount, HitBase, Overview, RecentDocument, TagCount
from knowledge.errors import (
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
from knowledge.lsn import parse_lsn

__all__ = [
    "AGENT_HEADER",
    "DEFAULT_URL",
    "WRITE_LSN_HEADER",
    "BootContext",
    "Call",
    "DocumentText",
    "FolderCount",
    "Hit",
    "Overview",
    "RecentDocument",
    "SavedDocument",
    "SearchResults",
    "TagCount",
]

DEFAULT_URL = "http://127.0.0.1:8765"
AGENT_HEADER = "X-HQ-Agent"
WRITE_LSN_HEADER = "HQ-Write-LSN"
Mode = Literal["hybrid", "semantic", "keyword"]
Kind = Literal["document", "asset"]
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Hit(HitBase):
    """A search hit. `snippet` is HTML-escaped text with matched words in <mark>; `passages`
    are the best matching passages as (heading path, content)."""

    passages: list[tuple[list[str], str]]
    source_path: str | None
    """The file a document was imported from, if any."""


@dataclass(frozen=True)
class SearchResults:
    """The hits, best first, the mode that ran, the embedding model that ranked the semantic
    leg (None in keyword mode: after a model switch, the one now active) and the time the
    service took, in ms."""

    hits: list[Hit]
    mode: str
    model: str | None
    took_ms: float


@dataclass(frozen=True)
class BootContext:
    """An agent's boot bundle as markdown (what was left out is listed under its `# Left out`
    heading). With `unchanged`, the bundle is still `version` and `markdown` is empty."""

    agent: str
    version: str
    markdown: str
    unchanged: bool


@dataclass(frozen=True)
class SavedDocument:
    id: UUID
    title: str
    folder_path: str
    tags: list[str]


@dataclass(frozen=True)
class Call(Generic[T]):
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


def error_details(response: httpx.Response, rename: Mapping[str, str]) -> tuple[str, str | None]:
    """The server's message and the field it concerns, by the method's names: {"detail": "..."}
    as it is, with its `field`; FastAPI's validation list as `name: msg; ...`, its field the
    one input it names (None for several). A leading server parameter name is replaced by the
    method's."""
    try:
        body = response.json()
        detail = body["detail"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} from {response.request.url}: {response.text[:200]}", None
    if isinstance(detail, list):
        parts, inputs = [], set()
        for item in detail:
            loc = [str(p) for p in item.get("loc", [])[1:]]  # without "query", "body", "path"
            inputs.update(loc[:1])
            name = ".".join(rename.get(p, p) for p in loc)
            parts.append(f"{name}: {item.get('msg', '')}" if name else str(item.get("msg", "")))
        field = inputs.pop() if len(inputs) == 1 else None
        return "; ".join(parts), rename.get(field, field) if field else None
    text = str(detail)
    head, sep, tail = text.partition(":")
    field = body.get("field")
    message = f"{rename[head]}{sep}{tail}" if sep and head in rename else text
    return message, rename.get(field, field) if isinstance(field, str) else None


def raise_for(response: httpx.Response, rename: Mapping[str, str]) -> NoReturn:
    """The service's error as the package's, with the field it concerns by the method's name."""
    message, field = error_details(response, rename)
    error = _ERRORS.get(response.status_code, KnowledgeError)(message, field=field)
    error.status = response.status_code
    raise error


def unreachable(base_url: httpx.URL, e: httpx.TransportError) -> ServiceUnavailable:
    base = str(base_url).rstrip("/")
    return ServiceUnavailable(
        f"cannot reach the knowledge service at {base} ({type(e).__name__}: {e}); start it with `hq-knowledge serve`"
    )


def finish(call: Call[T], response: httpx.Response) -> T:
    if not response.is_success and response.status_code not in call.accept:
        raise_for(response, call.rename)
    try:
        return call.parse(response)
    except (ValueError, KeyError, TypeError) as e:
        raise KnowledgeError(
            f"{call.method} {call.path}: unexpected answer from the service ({type(e).__name__}: {e})"
        ) from e


def request_args(call: Call[Any], agent: str | None, key: str | None, write_lsn: str | None) -> dict[str, Any]:
    """The arguments of httpx's `request` for `call`, with the caller's headers."""
    headers = {**call.headers, AGENT_HEADER: agent} if agent else dict(call.headers)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if write_lsn:
        headers[WRITE_LSN_HEADER] = write_lsn
    return {"method": call.method, "url": call.path, "params": call.params, "json": call.json, "headers": headers}


# The transport errors of a connection the server closed before it answered: most often an idle
# keep-alive connection it timed out just as the client sent on it.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def send_again(call: Call[Any], error: httpx.TransportError) -> bool:
    """Whether `call` is sent once more after `error`: a read (GET: searches among them) whose
    connection was dropped before any answer. A write is not: the service may have done it."""
    return call.method == "GET" and isinstance(error, DROPPED)


def latest_lsn(known: str | None, response: httpx.Response) -> str | None:
    """The later of `known` and the response's HQ-Write-LSN."""
    given: str | None = response.headers.get(WRITE_LSN_HEADER)
    position = parse_lsn(given)
    if position is None or (known is not None and (parse_lsn(known) or 0) >= position):
        return known
    return given


def checked_id(value: UUID) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInput(f"id: a document's id (a UUID), got {str(value)[:60]!r}") from None


def optional_params(**values: object) -> tuple[tuple[str, str], ...]:
    return tuple((name, str(value)) for name, value in values.items() if value is not None)


# One builder and one parser per operation.


def search_call(
    query: str, limit: int, mode: str, tags_any: Sequence[str], folder: UUID | None, kind: str | None
) -> Call[SearchResults]:
    params = (
        ("q", query),
        ("limit", str(limit)),
        ("mode", mode),
        *(("tags_any", t) for t in tags_any),
        *optional_params(folder=folder, kind=kind),
    )
    return Call("GET", "/search", parse_search, params=params, rename={"q": "query"})


def parse_search(response: httpx.Response) -> SearchResults:
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
    return SearchResults(hits=hits, mode=body["mode"], model=body.get("model"), took_ms=float(body["took_ms"]))


def document_call(document_id: UUID, max_tokens: int | None, section: str | None) -> Call[DocumentText]:
    return Call(
        "GET",
        f"/documents/{checked_id(document_id)}/markdown",
        parse_document,
        params=optional_params(max_tokens=max_tokens, section=section),
        rename={"document_id": "id"},
    )


def parse_document(response: httpx.Response) -> DocumentText:
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


def boot_call(
    agent_slug: str | None, max_tokens: int | None, known_version: str | None, key: str | None = None
) -> Call[BootContext]:
    if not agent_slug and not key:
        raise InvalidInput(
            "agent_slug: give the agent's slug, or make the client with agent=<slug> or with the key of an agent"
        )
    headers = {"Accept": "text/markdown"}
    known = known_version.strip().strip('"') if known_version else None
    if known:
        headers["If-None-Match"] = f'"{known}"'

    def parse(response: httpx.Response) -> BootContext:
        return parse_boot(response, agent_slug or response.headers.get(AGENT_HEADER, ""), known)

    path = f"/boot/{quote(agent_slug, safe='')}" if agent_slug else "/boot"  # /boot: the key's agent
    return Call(
        "GET", path, parse, params=optional_params(max_tokens=max_tokens), headers=headers, accept=frozenset({304})
    )


def parse_boot(response: httpx.Response, agent_slug: str, known_version: str | None) -> BootContext:
    if response.status_code == 304:
        return BootContext(agent=agent_slug, version=known_version or "", markdown="", unchanged=True)
    version = response.headers["ETag"].removeprefix("W/").strip('"')
    return BootContext(agent=agent_slug, version=version, markdown=response.text, unchanged=False)


def overview_call(folder: str | None, tag: str | None) -> Call[Overview]:
    return Call("GET", "/overview", parse_overview, params=optional_params(folder=folder, tag=tag))


def parse_overview(response: httpx.Response) -> Overview:
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


def save_call(title: str, markdown: str, folder: str | None, tags: Sequence[str]) -> Call[SavedDocument]:
    body = {"title": title, "markdown": markdown, "folder": folder, "tags": list(tags)}
    return Call("POST", "/documents/markdown", parse_saved, json=body)


def update_call(
    document_id: UUID, markdown: str | None, title: str | None, tags: Sequence[str] | None
) -> Call[SavedDocument]:
    body = {"markdown": markdown, "title": title, "tags": None if tags is None else list(tags)}
    return Call(
        "PATCH",
        f"/documents/{checked_id(document_id)}/markdown",
        parse_saved,
        json={k: v for k, v in body.items() if v is not None},
        rename={"document_id": "id"},
    )


def parse_saved(response: httpx.Response) -> SavedDocument:
    d = response.json()
    return SavedDocument(id=UUID(d["id"]), title=d["title"], folder_path=d["folder_path"], tags=list(d["tags"]))
