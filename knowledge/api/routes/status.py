"""GET /status: counts, embedding queue depth, active model and keyword path."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ...status import service_status
from ..deps import Conn

router = APIRouter(tags=["status"])


class StatusPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    documents: int = Field(description="Unarchived documents.")
    assets: int = Field(description="Unarchived assets.")
    passages: int = Field(description="Passages (chunks) stored for search.")
    queue: int = Field(description="Documents and assets pending or processing.")
    failed: int = Field(description="Documents and assets whose embedding failed.")
    active_model: str | None = Field(description="The embedding model searched.")
    keyword_path: str = Field(description="`bm25` (pg_textsearch), `sql-bm25` (the SQL keyword index) or `ts_rank_cd`.")


@router.get("/status", response_model=StatusPublic, summary="The service at a glance")
def get_status(conn: Conn) -> StatusPublic:
    return StatusPublic.model_validate(service_status(conn))
