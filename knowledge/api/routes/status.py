"""GET /status: counts, embedding queue depth, active model and keyword path."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from embeddings.onnx import query_batch_sizes
from knowledge.api.deps import Conn
from knowledge.ingest.status import service_status
from knowledge.search.admission import Admission

router = APIRouter(tags=["status"])


class SearchLoadPublic(BaseModel):
    limit: int = Field(description="Searches run at once at most (HQ_SEARCH_CONCURRENCY).")
    queue: int = Field(description="Searches that may wait for a slot (HQ_SEARCH_QUEUE); past them, 503.")
    in_flight: int = Field(description="Searches running or waiting now.")
    admitted: int = Field(description="Searches admitted since the service started.")
    queued: int = Field(description="Of those, searches that waited for a slot first.")
    refused: int = Field(description="Searches refused with 503 because the queue was full.")
    timed_out: int = Field(description="Searches refused with 503 after waiting too long for a slot.")
    query_batches: dict[int, int] = Field(
        description="Query embedding model runs by the number of queries embedded together in one run."
    )


class StatusPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    documents: int = Field(description="Unarchived documents.")
    assets: int = Field(description="Unarchived assets.")
    passages: int = Field(description="Passages (chunks) stored for search.")
    queue: int = Field(description="Documents and assets pending or processing.")
    failed: int = Field(description="Documents and assets whose embedding failed.")
    active_model: str | None = Field(description="The embedding model searched.")
    keyword_path: str = Field(description="`bm25` (pg_textsearch), `sql-bm25` (the SQL keyword index) or `ts_rank_cd`.")
    searches: SearchLoadPublic = Field(description="This process's searches under admission control.")


@router.get("/status", response_model=StatusPublic, summary="The service at a glance")
def get_status(conn: Conn, request: Request) -> StatusPublic:
    admission: Admission = request.app.state.admission
    load = SearchLoadPublic(
        **asdict(admission.stats),
        limit=admission.limit,
        queue=admission.queue,
        in_flight=admission.in_flight,
        query_batches=query_batch_sizes(),
    )
    return StatusPublic.model_validate({**asdict(service_status(conn)), "searches": load})
