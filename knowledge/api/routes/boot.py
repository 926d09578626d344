"""GET /boot/{agent_slug}: an agent's boot bundle, as JSON or markdown, with an ETag; GET /boot
the same for the agent that the API key is bound to."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from knowledge.api.deps import ReadConn
from knowledge.api.fields import SLUG
from knowledge.errors import Forbidden
from knowledge.search.boot import JSON, MARKDOWN, MAX_TOKENS_LIMIT, boot_bundle, boot_version, bundle_markdown
from knowledge.store.keys import caller_of
from knowledge.store.validation import SLUG_RULE

router = APIRouter(tags=["boot"])

OptionalHeader = Annotated[str | None, Header()]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
_OFFERED = (JSON, MARKDOWN)
"""In order of preference when the Accept header rates them alike."""


class BootEntryPublic(BaseModel):
    """What the bundle says of each item it names, whether it holds the item or left it out."""

    id: UUID
    kind: str
    title: str


class BootItemPublic(BootEntryPublic):
    kind: str = Field(description="document or asset")
    folder_path: str = Field(description="'/' for the root, else '/Operations/Sales'.")
    tags: list[str]
    pinned: bool
    updated_at: datetime
    tokens: int = Field(description="Tokens of `markdown` (the model's word pieces).")
    markdown: str = Field(description="`# <title>`, a blank line, then the body as markdown.")
    truncated: bool = Field(
        description="Cut at a paragraph or section boundary to fit max_tokens; the markdown ends with a note saying so."
    )


class BootOmittedPublic(BootEntryPublic):
    tokens: int = Field(description="Tokens of the whole item.")
    reason: str = Field(description="`over budget`, or `cannot be rendered: ...`.")


class BootBundlePublic(BaseModel):
    agent: str
    version: str = Field(description="The ETag of this response, without quotes.")
    items: list[BootItemPublic]
    omitted: list[BootOmittedPublic]
    tokens: int = Field(description="Sum of the items' tokens.")
    max_tokens: int | None


def negotiate(accept: str | None) -> str:
    """The offered media type the Accept header rates highest: by q, then by how specific the
    matching range is (`text/markdown` over `text/*` over `*/*`), then JSON first. Without an
    Accept header, or when it accepts neither, JSON (RFC 9110 lets a server disregard Accept
    rather than answer 406)."""
    if not accept:
        return JSON
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            ranges.append((media.lower(), q))

    def rating(offered: str) -> tuple[float, int]:
        kind = offered.split("/")[0]
        matches = [
            (q, specificity)
            for media, q in ranges
            for specificity, pattern in ((2, offered), (1, f"{kind}/*"), (0, "*/*"))
            if media == pattern
        ]
        if not matches:
            return 0.0, -1
        specificity = max(s for _, s in matches)  # the most specific range decides the q
        return max(q for q, s in matches if s == specificity), specificity

    best = max(_OFFERED, key=lambda m: (*rating(m), -_OFFERED.index(m)))
    return best if rating(best)[0] > 0 else JSON


_BUNDLE = (
    "Every unarchived document and asset tagged `boot:all`, then those tagged `boot:<agent_slug>` "
    "(an item with both appears once, in the first part). Within each part: pinned first, then "
    "documents before assets, then folder path (tree order), title (case-insensitive), id. Each item "
    "is markdown: `# <title>` and its body (TipTap and HTML converted).\n\n"
    "`Accept: application/json` (the default) answers the JSON below; `Accept: text/markdown` the "
    "items' markdown joined, after a header naming the agent and version and before a list of what "
    "was left out.\n\n"
    "With `max_tokens`, items are taken in order while they fit whole; the first that does not is cut "
    "after its last paragraph or section that fits (with a note), or left out if none does; every "
    "later item is listed in `omitted`.\n\n"
    "Caching: a strong ETag, different for the JSON and the markdown representation and for each "
    "max_tokens (the media type is part of what is hashed), and `Cache-Control: no-cache`. Send it "
    "back in If-None-Match: 304 without a body while no candidate item was edited, retagged, pinned "
    "or unpinned, moved, archived or deleted and no item gained a boot tag."
)


def _bundle_route(
    path: str, summary: str, description: str, refusal: tuple[int, str]
) -> Callable[[Endpoint], Endpoint]:
    """A decorator adding its endpoint as a GET route that answers a boot bundle, as JSON (the
    response model) or markdown, or 304; `refusal`: the status and reason of a request it
    cannot answer."""
    refused, why = refusal
    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {MARKDOWN: {"schema": {"type": "string"}}}},
        304: {"description": "Not modified: If-None-Match holds the current ETag."},
        refused: {"description": why},
    }
    return router.get(
        path, response_model=BootBundlePublic, summary=summary, responses=responses, description=description
    )


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match's weak comparison: `*`, or one of the listed tags with `W/` ignored."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@_bundle_route("/boot/{agent_slug}", "An agent's boot bundle", _BUNDLE, (404, "No agent with this slug."))
def get_boot_bundle(
    agent_slug: Annotated[str, Path(description=f"The agent's slug: {SLUG_RULE}.", json_schema_extra=SLUG)],
    conn: ReadConn,
    max_tokens: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_TOKENS_LIMIT,
            description=f"Token budget, 1..{MAX_TOKENS_LIMIT}, in word pieces of the embedding model's "
            "tokenizer; none: everything.",
        ),
    ] = None,
    accept: OptionalHeader = None,
    if_none_match: OptionalHeader = None,
) -> Response:
    """The bundle in the negotiated representation, or 304 when If-None-Match holds its current
    ETag. ETags differ per representation: the media type is part of what `boot_version`
    hashes, so a JSON ETag never validates the markdown and vice versa."""
    media_type = negotiate(accept)
    headers = {"Cache-Control": "no-cache", "Vary": "Accept"}
    etag = f'"{boot_version(conn, agent_slug, max_tokens, media_type)}"'
    if _matches(if_none_match, etag):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    bundle = boot_bundle(conn, agent_slug, max_tokens=max_tokens, media_type=media_type)
    # The bundle's own version: the data may have changed since the check above.
    headers["ETag"] = f'"{bundle.version}"'
    if media_type == MARKDOWN:
        return Response(bundle_markdown(bundle), media_type=f"{MARKDOWN}; charset=utf-8", headers=headers)
    return JSONResponse(bundle.as_json(), headers=headers)


@_bundle_route(
    "/boot",
    "The calling agent's boot bundle",
    "As `/boot/{agent_slug}`, for the agent that the request's API key is bound to; "
    "the `X-HQ-Agent` response header names it.",
    (403, "The key is bound to no agent: use /boot/{agent_slug}."),
)
def get_own_boot_bundle(
    request: Request,
    conn: ReadConn,
    max_tokens: Annotated[
        int | None, Query(ge=1, le=MAX_TOKENS_LIMIT, description=f"Token budget, 1..{MAX_TOKENS_LIMIT}.")
    ] = None,
    accept: OptionalHeader = None,
    if_none_match: OptionalHeader = None,
) -> Response:
    caller = caller_of(request)
    if caller is None or not caller.agent:
        raise Forbidden(
            "this request's key is bound to no agent, so /boot has no agent to answer for: ask for /boot/{agent_slug}, "
            "or use a key created with `hq-knowledge keys create --agent SLUG`"
        )
    response = get_boot_bundle(caller.agent, conn, max_tokens, accept, if_none_match)
    response.headers["X-HQ-Agent"] = caller.agent
    return response
