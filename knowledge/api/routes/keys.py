"""API keys over HTTP, for an admin key: list, create (the key is in that answer only), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field

from knowledge.api.body import CheckedBodyRoute
from knowledge.api.deps import Conn
from knowledge.api.fields import SLUG, string_rule
from knowledge.store.keys import create_key, list_keys, revoke_key
from knowledge.store.validation import SLUG_RULE, name_pattern

router = APIRouter(prefix="/keys", tags=["keys"], route_class=CheckedBodyRoute)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Literal["read", "write", "admin"] = Field(
        description=(
            "read: search and read; write: also create and update; admin: also archive, delete, "
            "re-embed, switch models and manage keys."
        )
    )
    agent: str | None = Field(
        None,
        max_length=63,
        description=(f"Bind the key to this agent ({SLUG_RULE}): its caller is that agent."),
        json_schema_extra=SLUG,
    )
    name: str | None = Field(
        None,
        max_length=100,
        description="A name to recognise the key by.",
        json_schema_extra=string_rule(pattern=lambda: f"(^$)|({name_pattern()})"),
    )


class KeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    scope: str
    agent_slug: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself. Shown this once: only its hash is stored.")


@router.get("", response_model=list[KeyPublic], summary="List the live API keys")
def get_keys(conn: Conn) -> list[KeyPublic]:
    return [KeyPublic.model_validate(k) for k in list_keys(conn)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    summary="Create an API key",
    responses={422: {"description": "A bad scope, agent or name"}},
)
def post_key(body: KeyCreate, conn: Conn) -> KeyCreated:
    created = create_key(conn, scope=body.scope, name=body.name, agent=body.agent)
    return KeyCreated(**KeyPublic.model_validate(created.key).model_dump(), key=created.secret)


@router.delete(
    "/{key_id}",
    response_model=KeyPublic,
    summary="Revoke an API key",
    responses={404: {"description": "No live key has this id"}},
)
def delete_key(key_id: Annotated[UUID, Path(description="The key's id.")], conn: Conn) -> KeyPublic:
    return KeyPublic.model_validate(revoke_key(conn, str(key_id)))
