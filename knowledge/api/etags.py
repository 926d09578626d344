"""The ETag and If-Match handling that the document, asset, tag and markdown routes share."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Response

from knowledge.api.fields import IF_MATCH

__all__ = [
    "CREATED",
    "DELETE_RESPONSES",
    "ETAG_HEADER",
    "READ_RESPONSES",
    "WRITE_RESPONSES",
    "IfMatch",
    "conditional",
    "etag",
]

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description=(
            "The ETag of the version you read (from a GET or from a write's response), as sent, quoted; "
            "or `*` for whatever version exists. When the item changed since, nothing is written and the "
            "answer is 412: GET it again and reapply your change. Without If-Match the last write wins."
        ),
        json_schema_extra=IF_MATCH,
    ),
]

ETAG_HEADER = {
    "ETag": {
        "description": (
            "The item's version, quoted: it changes with every edit (content, title, tags, folder, pinned, "
            "metadata, archiving), not with embedding progress. Send it back in If-Match."
        ),
        "schema": {"type": "string", "example": '"1767225600000000"'},
    }
}
_CHANGED = {
    "description": "If-Match does not hold the item's current version: nothing was written.",
    "content": {
        "application/json": {
            "example": {
                "detail": (
                    'document 5f0c2b9e-7d41-4c1e-9a57-3d2f9b7c1a10 changed since version "1767225600000000" '
                    '(now "1767225612345678"): GET it again and reapply your change'
                )
            }
        }
    },
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"headers": ETAG_HEADER}}
"""OpenAPI of a read that answers with an ETag."""
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"headers": ETAG_HEADER}, 412: _CHANGED}
"""OpenAPI of a write that takes If-Match and answers with the new ETag."""
DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {412: _CHANGED}
CREATED: dict[str, Any] = {"status_code": 201, "responses": {201: {"headers": ETAG_HEADER}}}
"""The status and OpenAPI of a create that answers with the new item's ETag (route keywords)."""


def conditional(kind: str) -> str:
    """How a write to a `kind` (document, asset) takes If-Match."""
    return f"With If-Match, only if the {kind} is still at that version (412 otherwise)."


def etag(response: Response, version: str) -> None:
    """Give `response` the ETag of `version` (an item's `version`)."""
    response.headers["ETag"] = f'"{version}"'
