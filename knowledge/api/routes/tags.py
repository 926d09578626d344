"""/tags, and the tags of one document or asset: /documents/{id}/tags, /assets/{id}/tags."""

# No `from __future__ import annotations`: the route functions below are defined in a
# factory, and FastAPI must see their parameter types (local aliases) as objects.

from collections.abc import Callable
from enum import Enum
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from knowledge.api.body import CheckedBodyRoute
from knowledge.api.deps import Conn, ReadConn
from knowledge.api.etags import WRITE_RESPONSES, IfMatch, etag
from knowledge.api.fields import TAG
from knowledge.store.assets import lock_asset
from knowledge.store.documents import lock_document
from knowledge.store.items import Kind
from knowledge.store.tags import ItemTags, add_tag, list_tags, remove_tag, set_tags
from knowledge.store.validation import MAX_TAGS, TAG_RULE

router = APIRouter(route_class=CheckedBodyRoute)

RULES = (
    f"Tag rule: {TAG_RULE}. Tags are compared and stored after NFC normalisation, case kept "
    f"(`Pricing` and `pricing` are two tags); an item holds each tag once and at most {MAX_TAGS}. "
    "A tag with whitespace or over 100 characters is a 422."
)


class TagsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(
        description=f"The item's new tags; duplicates dropped, order kept. {TAG_RULE}", json_schema_extra=TAG
    )


class ItemTagsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    kind: str = Field(description="document or asset")
    tags: list[str]


class TagCountPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    tag: str
    documents: int = Field(description="Unarchived documents with the tag.")
    assets: int = Field(description="Unarchived assets with the tag.")


class TagsPublic(BaseModel):
    data: list[TagCountPublic]
    count: int


@router.get(
    "/tags",
    response_model=TagsPublic,
    tags=["tags"],
    summary="All tags with counts",
    description="Every tag on an unarchived document or asset, in tag order, with the number "
    "of documents and of assets carrying it. " + RULES,
)
def all_tags(
    conn: ReadConn,
    prefix: Annotated[
        str | None, Query(description="Only tags starting with this, case-sensitive (e.g. `boot:`).")
    ] = None,
) -> TagsPublic:
    found = list_tags(conn, prefix=prefix)
    return TagsPublic(
        data=[TagCountPublic(tag=t.tag, documents=t.documents, assets=t.assets) for t in found], count=len(found)
    )


def _written(
    conn: Conn, kind: Kind, item_id: UUID, if_match: str | None, response: Response, write: Callable[[], ItemTags]
) -> ItemTagsPublic:
    """Run `write` in one transaction: after checking If-Match under the item's lock when it is
    given, and before reading the item's new version for the response's ETag."""
    lock = lock_document if kind == "document" else lock_asset
    with conn.transaction():
        if if_match is not None:
            lock(conn, item_id, if_match)
        tags = write()
        etag(response, lock(conn, item_id))
    return ItemTagsPublic.model_validate(tags)


def _routes(kind: Kind, prefix: str) -> None:
    id_name = f"{kind}_id"
    ItemId = Annotated[UUID, Path(alias=id_name, description=f"The {kind}'s id.")]
    Tag = Annotated[
        str, Path(description="The tag; URL-encode it (`boot%3Aall` or `boot:all`).", json_schema_extra=TAG)
    ]
    base = f"{prefix}/{{{id_name}}}/tags"
    group: list[str | Enum] = [prefix.strip("/")]
    conditional = (
        f" With If-Match, only if the {kind} is still at that version (412 otherwise); the "
        f"ETag answered is the {kind}'s new version. "
    )

    def tagging(write: Callable[..., ItemTags]) -> Callable[..., ItemTagsPublic]:
        def changed(
            item_id: ItemId, tag: Tag, conn: Conn, response: Response, if_match: IfMatch = None
        ) -> ItemTagsPublic:
            return _written(conn, kind, item_id, if_match, response, lambda: write(conn, kind, item_id, tag))

        return changed

    for method, action, summary, about, write in (
        ("POST", "add", "Add a tag to", "Adding a tag it has changes nothing.", add_tag),
        ("DELETE", "remove", "Remove a tag from", "Removing a tag it does not have changes nothing.", remove_tag),
    ):
        router.add_api_route(
            base + "/{tag:path}",
            tagging(write),
            methods=[method],
            response_model=ItemTagsPublic,
            responses=WRITE_RESPONSES,
            tags=group,
            name=f"{action}_{kind}_tag",
            summary=f"{summary} a {kind}",
            description=about + conditional + RULES,
        )

    @router.put(
        base,
        response_model=ItemTagsPublic,
        responses=WRITE_RESPONSES,
        tags=group,
        name=f"set_{kind}_tags",
        summary=f"Replace a {kind}'s tags",
        description=conditional[1:] + RULES,
    )
    def replace(
        item_id: ItemId, body: TagsUpdate, conn: Conn, response: Response, if_match: IfMatch = None
    ) -> ItemTagsPublic:
        return _written(conn, kind, item_id, if_match, response, lambda: set_tags(conn, kind, item_id, body.tags))


_routes("document", "/documents")
_routes("asset", "/assets")
