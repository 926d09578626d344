"""/assets: the routes of knowledge.api.routes.items for assets, and their models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from knowledge.api.deps import Filters
from knowledge.api.fields import TEXT, name
from knowledge.api.routes.items import MIB, ListQuery, item_create, item_public, item_routes, item_update
from knowledge.store import assets
from knowledge.store.assets import MAX_NAME_CHARS, MAX_SHORT_TEXT_CHARS, MAX_SIZE_BYTES, Asset, AssetType
from knowledge.store.validation import MAX_CONTENT_BYTES

_SHORT = name(MAX_SHORT_TEXT_CHARS)  # url, storage_path, mime_type: checked as names are


def _link_has_url(schema: dict[str, Any]) -> None:
    schema["allOf"] = [
        {
            "if": {"properties": {"asset_type": {"const": "link"}}, "required": ["asset_type"]},
            "then": {"required": ["url"], "properties": {"url": {"type": "string"}}},
        }
    ]


class _AssetFields(BaseModel):
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


AssetCreate = item_create(_AssetFields, "AssetCreate", folder="An asset folder; null: at the root.")
AssetUpdate = item_update(
    AssetCreate,
    "AssetUpdate",
    "Only the fields sent change; null clears an optional field. `folder_id: null` moves\nthe asset to the root.",
    config=ConfigDict(extra="forbid"),
    descriptions={"url": None, "storage_path": None, "content_text": None},
)
AssetPublic = item_public(
    Asset,
    "AssetPublic",
    types={"asset_type": AssetType},
    descriptions={"folder_path": "'/Media/Logos'; '/' for an asset in no folder."},
)


async def asset_query(
    filters: Filters,
    asset_type: Annotated[AssetType | None, Query(description="Only assets of this type.")] = None,
) -> ListQuery:
    """The list filters of assets: those of all items, and the type."""
    return filters, {"asset_type": asset_type}


router = item_routes(
    "asset",
    assets,
    (AssetCreate, AssetUpdate, AssetPublic),
    content=f"name 1..{MAX_NAME_CHARS} characters, not blank; description and content_text at most "
    f"{MAX_CONTENT_BYTES // MIB} MiB of UTF-8 each (413 over it)",
    fields="A `link` needs a url. ",
    deletes="Deletes the record with its passages, embeddings and comments; not the file at storage_path.",
    list_query=asset_query,
)
