"""/assets: create, read, update, archive, delete and list assets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from knowledge.api.body import MAX_BODY_BYTES, CheckedBodyRoute
from knowledge.api.deps import BY_AGENT_RULE, Conn, Filters, ReadConn, Writer
from knowledge.api.fields import JSON_OBJECT, TAG, TEXT, name, no_null
from knowledge.api.routes.documents import DELETE_RESPONSES, ETAG_HEADER, READ_RESPONSES, WRITE_RESPONSES, IfMatch, etag
from knowledge.store.assets import (
    MAX_NAME_CHARS,
    MAX_SHORT_TEXT_CHARS,
    MAX_SIZE_BYTES,
    Asset,
    AssetType,
    archive_asset,
    create_asset,
    delete_asset,
    get_asset,
    list_assets,
    retry_asset_embedding,
    unarchive_asset,
    update_asset,
)
from knowledge.store.validation import MAX_CONTENT_BYTES, TAG_RULE

router = APIRouter(prefix="/assets", tags=["assets"], route_class=CheckedBodyRoute)

_MIB = 1024 * 1024
LIMITS = (
    f"Limits: name 1..{MAX_NAME_CHARS} characters, not blank; description and content_text at most "
    f"{MAX_CONTENT_BYTES // _MIB} MiB of UTF-8 each (413 over it); request bodies over "
    f"{MAX_BODY_BYTES // _MIB} MiB are refused unread with 413. A `link` needs a url. Text cannot "
    f"hold NUL characters (422). Tags: {TAG_RULE}; at most 100 per asset, duplicates dropped, case kept."
)


_SHORT = name(MAX_SHORT_TEXT_CHARS)  # url, storage_path, mime_type: checked as names are


def _link_has_url(schema: dict[str, Any]) -> None:
    schema["allOf"] = [
        {
            "if": {"properties": {"asset_type": {"const": "link"}}, "required": ["asset_type"]},
            "then": {"required": ["url"], "properties": {"url": {"type": "string"}}},
        }
    ]


class AssetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_link_has_url)

    name: str = Field(description=f"1..{MAX_NAME_CHARS} characters, not blank.", json_schema_extra=name(MAX_NAME_CHARS))
    asset_type: AssetType = "other"
    description: str | None = Field(None, json_schema_extra=TEXT)
    url: str | None = Field(None, description="Required for asset_type `link`.", json_schema_extra=_SHORT)
    storage_path: str | None = Field(
        None, description="Where the file is stored (media, uploads).", json_schema_extra=_SHORT
    )
    mime_type: str | None = Field(None, json_schema_extra=_SHORT)
    size_bytes: int | None = Field(None, ge=0, le=MAX_SIZE_BYTES)
    content_text: str | None = Field(
        None, description="Text of the asset (an SOP, a script, CSV); media have none.", json_schema_extra=TEXT
    )
    folder_id: UUID | None = Field(None, description="An asset folder; null: at the root.")
    tags: list[str] = Field(default_factory=list, description=TAG_RULE, json_schema_extra=TAG)
    pinned: bool = False
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Any JSON object.", json_schema_extra=JSON_OBJECT
    )
    created_by_agent_id: UUID | None = Field(None, description=BY_AGENT_RULE)


class AssetUpdate(BaseModel):
    """Only the fields sent change; null clears an optional field. `folder_id: null` moves
    the asset to the root."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra=no_null("name", "asset_type", "tags", "pinned", "metadata")
    )

    name: str | None = Field(
        None, description=f"1..{MAX_NAME_CHARS} characters, not blank.", json_schema_extra=name(MAX_NAME_CHARS)
    )
    asset_type: AssetType | None = None
    description: str | None = Field(None, json_schema_extra=TEXT)
    url: str | None = Field(None, json_schema_extra=_SHORT)
    storage_path: str | None = Field(None, json_schema_extra=_SHORT)
    mime_type: str | None = Field(None, json_schema_extra=_SHORT)
    size_bytes: int | None = Field(None, ge=0, le=MAX_SIZE_BYTES)
    content_text: str | None = Field(None, json_schema_extra=TEXT)
    folder_id: UUID | None = None
    tags: list[str] | None = Field(None, description=f"Replaces the tags. {TAG_RULE}", json_schema_extra=TAG)
    pinned: bool | None = None
    metadata: dict[str, Any] | None = Field(
        None, description="Replaces the metadata: any JSON object.", json_schema_extra=JSON_OBJECT
    )

    @field_validator("name", "asset_type", "tags", "pinned", "metadata", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null (leave the field out to keep it)")
        return value


class AssetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    name: str
    description: str | None
    asset_type: AssetType
    folder_id: UUID | None
    folder_path: str = Field(description="'/Media/Logos'; '/' for an asset in no folder.")
    url: str | None
    storage_path: str | None
    mime_type: str | None
    size_bytes: int | None
    content_text: str | None
    tags: list[str]
    pinned: bool
    metadata: dict[str, Any]
    archived_at: datetime | None
    created_by_agent_id: UUID | None
    created_at: datetime
    updated_at: datetime
    embedding_status: str = Field(description="pending, processing, indexed or failed.")
    embedding_error: str | None
    embedding_attempts: int
    embedding_model: str | None
    embedded_at: datetime | None
    passage_count: int


class AssetsPublic(BaseModel):
    data: list[AssetPublic]
    count: int = Field(description="All assets matching the filters, not only this page.")


def _public(response: Response, asset: Asset) -> AssetPublic:
    etag(response, asset.version)
    return AssetPublic.model_validate(asset)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AssetPublic,
    responses={201: {"headers": ETAG_HEADER}},
    summary="Create an asset",
    description=LIMITS,
)
def create(body: AssetCreate, conn: Conn, response: Response, writer: Writer) -> AssetPublic:
    values = body.model_dump()
    values["created_by_agent_id"] = writer.stamp("created_by_agent_id", body.created_by_agent_id)
    return _public(response, create_asset(conn, **values))


@router.get(
    "",
    response_model=AssetsPublic,
    summary="List assets",
    description="Pinned first, then the most recently updated. `count` is the total matching.",
)
def list_(
    conn: ReadConn,
    filters: Filters,
    asset_type: Annotated[AssetType | None, Query(description="Only assets of this type.")] = None,
) -> AssetsPublic:
    page = list_assets(conn, filters, asset_type=asset_type)
    return AssetsPublic(data=[AssetPublic.model_validate(a) for a in page.items], count=page.count)


@router.get(
    "/{asset_id}",
    response_model=AssetPublic,
    responses=READ_RESPONSES,
    summary="Get an asset",
    description="With an ETag: send it back in If-Match when you change the asset.",
)
def get(asset_id: UUID, conn: ReadConn, response: Response) -> AssetPublic:
    return _public(response, get_asset(conn, asset_id))


@router.patch(
    "/{asset_id}",
    response_model=AssetPublic,
    responses=WRITE_RESPONSES,
    summary="Update an asset",
    description="Partial update; also how an asset is pinned or unpinned. With If-Match, only "
    "if the asset is still at that version (412 otherwise). " + LIMITS,
)
def update(asset_id: UUID, body: AssetUpdate, conn: Conn, response: Response, if_match: IfMatch = None) -> AssetPublic:
    changes = body.model_dump(exclude_unset=True)
    return _public(response, update_asset(conn, asset_id, **changes, if_match=if_match))


@router.delete(
    "/{asset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=DELETE_RESPONSES,
    summary="Delete an asset",
    description="Deletes the record with its passages, embeddings and comments; not the file "
    "at storage_path. With If-Match, only if the asset is still at that version "
    "(412 otherwise).",
)
def delete(asset_id: UUID, conn: Conn, if_match: IfMatch = None) -> Response:
    delete_asset(conn, asset_id, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{asset_id}/archive",
    response_model=AssetPublic,
    responses=WRITE_RESPONSES,
    summary="Archive an asset",
    description="Lists leave archived assets out unless `archived=true` or `any`. With "
    "If-Match, only if the asset is still at that version (412 otherwise).",
)
def archive(asset_id: UUID, conn: Conn, response: Response, if_match: IfMatch = None) -> AssetPublic:
    return _public(response, archive_asset(conn, asset_id, if_match=if_match))


@router.post(
    "/{asset_id}/unarchive",
    response_model=AssetPublic,
    responses=WRITE_RESPONSES,
    summary="Unarchive an asset",
    description="With If-Match, only if the asset is still at that version (412 otherwise).",
)
def unarchive(asset_id: UUID, conn: Conn, response: Response, if_match: IfMatch = None) -> AssetPublic:
    return _public(response, unarchive_asset(conn, asset_id, if_match=if_match))


@router.post(
    "/{asset_id}/retry",
    response_model=AssetPublic,
    summary="Retry a failed embedding",
    description="Puts a `failed` asset back to `pending` with its attempts reset; 409 otherwise.",
)
def retry(asset_id: UUID, conn: Conn, response: Response) -> AssetPublic:
    return _public(response, retry_asset_embedding(conn, asset_id))
