"""The routes documents and assets share: create, list, get, update, delete, archive, unarchive
and retry a failed embedding, each on the router of its kind (/documents, /assets)."""

# No `from __future__ import annotations`: the route functions below are defined in a
# factory, and FastAPI must see their parameter types (local aliases) as objects.

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Annotated, Any, Protocol, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field, create_model

from knowledge.api.body import MAX_BODY_BYTES, CheckedBodyRoute
from knowledge.api.deps import BY_AGENT_RULE, AgentStamp, Conn, Filters, ReadConn, Writer
from knowledge.api.etags import CREATED, DELETE_RESPONSES, READ_RESPONSES, WRITE_RESPONSES, IfMatch, conditional, etag
from knowledge.api.fields import JSON_OBJECT, TAG
from knowledge.api.schemas import page, partial, public
from knowledge.store.items import ItemFilters
from knowledge.store.validation import MAX_TAGS, TAG_RULE

__all__ = [
    "MIB",
    "ListQuery",
    "item_create",
    "item_public",
    "item_query",
    "item_routes",
    "item_update",
    "no_writer",
]

MIB = 1024 * 1024
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


class Item(Protocol):
    """A document or an asset as its domain module returns it."""

    @property
    def version(self) -> str: ...


ListQuery = tuple[ItemFilters, dict[str, Any]]
"""The list filters shared by documents and assets, and the keywords of a kind's own."""


async def item_query(filters: Filters) -> ListQuery:
    """A dependency: the shared list filters, and no others."""
    return filters, {}


async def no_writer() -> AgentStamp:
    """Updates of a kind that records no updating agent."""
    return AgentStamp(None, None)


def item_create(own: type[BaseModel], name: str, *, folder: str) -> type[BaseModel]:
    """The create model `name` of a kind of item: the fields of its `own` model, then those of
    every item (its folder, described by `folder`; tags, pinned, metadata and the writer)."""
    return create_model(
        name,
        __base__=own,
        folder_id=(UUID | None, Field(None, description=folder)),
        tags=(list[str], Field(default_factory=list, description=TAG_RULE, json_schema_extra=TAG)),
        pinned=(bool, False),
        metadata=(
            dict[str, Any],
            Field(default_factory=dict, description="Any JSON object.", json_schema_extra=JSON_OBJECT),
        ),
        created_by_agent_id=(UUID | None, Field(None, description=BY_AGENT_RULE)),
    )


def item_update(
    create: type[BaseModel],
    name: str,
    doc: str,
    *,
    config: ConfigDict,
    descriptions: dict[str, str | None] | None = None,
    **added: Any,
) -> type[BaseModel]:
    """The update model `name` of a kind of item (knowledge.api.schemas.partial of its `create`
    model): tags and metadata replace what is stored, and the creating writer is not a field."""
    replacing = {
        "folder_id": None,
        "tags": f"Replaces the tags. {TAG_RULE}",
        "metadata": "Replaces the metadata: any JSON object.",
    }
    return partial(
        create,
        name,
        doc,
        config=config,
        descriptions=replacing | (descriptions or {}),
        leave_out=("created_by_agent_id",),
        **added,
    )


# The order in which an item's fields are answered, documents and assets alike (each has some of
# them): what it is, where it is filed, its content, its labels, who made it, then its embedding.
ANSWER_ORDER = (
    "id",
    "title",
    "name",
    "description",
    "asset_type",
    "folder_id",
    "folder_path",
    "content_format",
    "content",
    "url",
    "storage_path",
    "mime_type",
    "size_bytes",
    "content_text",
    "tags",
    "pinned",
    "metadata",
    "source_path",
    "archived_at",
    "created_by_agent_id",
    "updated_by_agent_id",
    "created_at",
    "updated_at",
    "embedding_status",
    "embedding_error",
    "embedding_attempts",
    "embedding_model",
    "embedded_at",
    "passage_count",
)


def item_public(row: type, name: str, *, types: dict[str, Any], descriptions: dict[str, str]) -> type[BaseModel]:
    """The response model `name` of a kind's domain `row` (knowledge.api.schemas.public): its
    fields in ANSWER_ORDER, without content_version (internal: the ETag is the version)."""
    fields = (f.name for f in dataclasses.fields(row) if f.name != "content_version")
    embedding = {"embedding_status": "pending, processing, indexed or failed."}
    return public(row, name, sorted(fields, key=ANSWER_ORDER.index), types=types, descriptions=embedding | descriptions)


def _taking(body: type[BaseModel]) -> Callable[[Endpoint], Endpoint]:
    """Give an endpoint's `body` parameter the model `body` for FastAPI to read the request into."""

    def typed(endpoint: Endpoint) -> Endpoint:
        endpoint.__annotations__["body"] = body
        return endpoint

    return typed


def item_routes(
    kind: str,
    domain: ModuleType,
    models: tuple[type[BaseModel], type[BaseModel], type[BaseModel]],
    *,
    content: str,
    fields: str,
    deletes: str,
    update_note: str = "",
    list_query: Callable[..., Any] = item_query,
    update_writer: Callable[..., Any] = no_writer,
) -> APIRouter:
    """The router of the collection of the `kind` of item (document, asset) that the module
    `domain` (knowledge.store.documents, knowledge.store.assets) keeps, with its functions named by the kind
    (`create_document`, `list_documents`, `retry_document_embedding`, ...). `models`: the create,
    update and response models.

    What the OpenAPI descriptions say of the kind: the limits of its `content`, first among those
    of a create or an update, and of its other `fields` (with a closing space), before those of
    text and tags; what a delete `deletes`; what an update does besides changing the fields
    (`update_note`, with a closing space).

    `list_query`: a dependency giving the kind's ListQuery (its own parameters come before the
    shared filters in the OpenAPI document, their errors after them); `update_writer`: one
    giving who an update is recorded as written by."""
    router = APIRouter(prefix=f"/{kind}s", tags=[f"{kind}s"], route_class=CheckedBodyRoute)
    article = "an" if kind.startswith(("a", "e", "i", "o", "u")) else "a"
    create_model, update_model, public = models
    page_model = page(
        public, f"{kind.capitalize()}sPublic", count=f"All {kind}s matching the filters, not only this page."
    )

    create_item, list_items, get_item, update_item, delete_item, retry_item = (
        getattr(domain, name.format(kind))
        for name in ("create_{}", "list_{}s", "get_{}", "update_{}", "delete_{}", "retry_{}_embedding")
    )

    ItemId = Annotated[UUID, Path(alias=f"{kind}_id")]
    Query = Annotated[ListQuery, Depends(list_query)]
    UpdateWriter = Annotated[AgentStamp, Depends(update_writer)]
    one = "/{" + kind + "_id}"
    if_match = conditional(kind)
    limits = (
        f"Limits: {content}; request bodies over {MAX_BODY_BYTES // MIB} MiB are refused unread with 413. "
        f"{fields}Text cannot hold NUL characters (422). Tags: {TAG_RULE}; at most {MAX_TAGS} per {kind}, "
        "duplicates dropped, case kept."
    )

    def answer(response: Response, item: Item) -> BaseModel:
        etag(response, item.version)
        return public.model_validate(item)

    @router.post("", **CREATED, response_model=public, summary=f"Create {article} {kind}", description=limits)
    @_taking(create_model)
    def create(body: BaseModel, conn: Conn, response: Response, writer: Writer) -> BaseModel:
        values = body.model_dump()
        values["created_by_agent_id"] = writer.stamp("created_by_agent_id", values["created_by_agent_id"])
        return answer(response, create_item(conn, **values))

    @router.get(
        "",
        response_model=page_model,
        summary=f"List {kind}s",
        description="Pinned first, then the most recently updated. `count` is the total matching.",
    )
    def list_(conn: ReadConn, query: Query) -> BaseModel:
        filters, more = query
        found = list_items(conn, filters, **more)
        return page_model(data=[public.model_validate(i) for i in found.items], count=found.count)

    @router.get(
        one,
        response_model=public,
        responses=READ_RESPONSES,
        summary=f"Get {article} {kind}",
        description=f"With an ETag: send it back in If-Match when you change the {kind}.",
    )
    def get(item_id: ItemId, conn: ReadConn, response: Response) -> BaseModel:
        return answer(response, get_item(conn, item_id))

    @router.patch(
        one,
        response_model=public,
        responses=WRITE_RESPONSES,
        summary=f"Update {article} {kind}",
        description=f"Partial update; also how {article} {kind} is pinned or unpinned. "
        f"{update_note}{if_match} {limits}",
    )
    @_taking(update_model)
    def update(
        item_id: ItemId, body: BaseModel, conn: Conn, response: Response, writer: UpdateWriter, if_match: IfMatch = None
    ) -> BaseModel:
        changes = body.model_dump(exclude_unset=True)
        if writer.agent_id is not None:
            changes["updated_by_agent_id"] = writer.stamp("updated_by_agent_id", changes.get("updated_by_agent_id"))
        return answer(response, update_item(conn, item_id, **changes, if_match=if_match))

    @router.delete(
        one,
        status_code=status.HTTP_204_NO_CONTENT,
        responses=DELETE_RESPONSES,
        summary=f"Delete {article} {kind}",
        description=f"{deletes} {if_match}",
    )
    def delete(item_id: ItemId, conn: Conn, if_match: IfMatch = None) -> Response:
        delete_item(conn, item_id, if_match=if_match)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    def changing(change: Callable[..., Item]) -> Callable[..., BaseModel]:
        def changed(item_id: ItemId, conn: Conn, response: Response, if_match: IfMatch = None) -> BaseModel:
            return answer(response, change(conn, item_id, if_match=if_match))

        return changed

    archived = f"Lists leave archived {kind}s out unless `archived=true` or `any`. "
    for action, about in (("archive", archived), ("unarchive", "")):
        router.add_api_route(
            f"{one}/{action}",
            changing(getattr(domain, f"{action}_{kind}")),
            methods=["POST"],
            name=action,
            response_model=public,
            responses=WRITE_RESPONSES,
            summary=f"{action.capitalize()} {article} {kind}",
            description=about + if_match,
        )

    @router.post(
        one + "/retry",
        response_model=public,
        summary="Retry a failed embedding",
        description=f"Puts a `failed` {kind} back to `pending` with its attempts reset; 409 otherwise.",
    )
    def retry(item_id: ItemId, conn: Conn, response: Response) -> BaseModel:
        return answer(response, retry_item(conn, item_id))

    return router
