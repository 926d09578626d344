"""POST /reembed starts (or joins) a re-embed job in this process; GET /reembed/{id} reads
its progress; GET /models lists the embedding models and their coverage."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from knowledge.api.body import CheckedBodyRoute
from knowledge.api.deps import Conn
from knowledge.errors import InvalidInput, NotFound
from knowledge.ingest.embedding_models import active_spec, list_models
from knowledge.ingest.reembed_jobs import Selection, count_selection, get_job, start_job

router = APIRouter(tags=["reembed"], route_class=CheckedBodyRoute)
log = logging.getLogger("hq_knowledge.reembed")


class ReembedCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        max_length=4096,
        description=(
            "A model name: one registered (GET /models), all-MiniLM-L6-v2, all-MiniLM-L6-v2-int8, or "
            "fake-hash-<dims>; default: the active model. Model directories are registered on the "
            "command line only."
        ),
    )
    stale: bool = Field(False, description="Only passages without a vector of their current text.")
    tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=100, description="Only items with any of these tags."
    )
    folder: UUID | None = Field(None, description="Only items in this document or asset folder and below.")
    since: datetime | None = Field(None, description="Only items updated since.")
    activate: bool = Field(True, description="For another model: switch search to it once it covers every passage.")
    dry_run: bool = Field(False, description="Count the passages; start nothing.")

    @model_validator(mode="before")
    @classmethod
    def _no_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" in data:
            raise InvalidInput(
                "name: only for registering a model directory, which is done on the "
                "command line (`hq-knowledge reembed --model PATH --name NAME`)"
            )
        return data


class ReembedPublic(BaseModel):
    id: UUID
    model: str
    status: str = Field(description="running, completed, failed or cancelled")
    activate: bool
    total: int
    done: int
    embedded: int
    skipped: int
    failed: int
    progress: float = Field(description="done / total, 0..1")
    passages_per_second: float
    eta_seconds: float | None
    error: str | None
    selection: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class ReembedPlan(BaseModel):
    model: str
    passages: int = Field(description="Passages the job would embed now.")


class ModelPublic(BaseModel):
    name: str
    dims: int
    provider: str
    is_active: bool
    vectors: int
    passages: int
    complete: bool
    index: str | None


def _spec(conn: Conn, body: ReembedCreate) -> Any:
    """The model to embed with, by name only: a registered model, a packaged one or a fake.
    Over HTTP nothing on the server's file system is looked at (a path given here would let a
    caller probe which paths exist): a model directory is registered on the command line."""
    from embeddings.registry import PACKAGED, ModelError, resolve_model, spec_from_row

    if body.model is not None:
        row = conn.execute(
            "SELECT name, dims, provider, source, max_tokens FROM embedding_models WHERE name = %s", (body.model,)
        ).fetchone()
        if row is not None:
            return spec_from_row(dict(zip(("name", "dims", "provider", "source", "max_tokens"), row, strict=True)))
        if body.model in PACKAGED or body.model.startswith("fake-hash-"):
            try:
                return resolve_model(body.model)
            except ModelError as e:
                raise InvalidInput(f"model: {e}") from None
        registered = [r[0] for r in conn.execute("SELECT name FROM embedding_models ORDER BY name")]
        raise NotFound(
            f"model: {body.model[:200]!r} is not a model name this service knows; give "
            f"one of {', '.join(dict.fromkeys([*registered, *PACKAGED]))} or fake-hash-<dims> "
            "(a model directory is registered on the command line: "
            "`hq-knowledge reembed --model PATH`)"
        )
    spec = active_spec(conn)
    if spec is None:
        raise InvalidInput("model: no model is active; name one")
    return spec


@router.post(
    "/reembed",
    status_code=202,
    response_model=ReembedPublic | ReembedPlan,
    responses={200: {"model": ReembedPlan, "description": "dry_run: what the job would do"}},
)
def create_reembed(body: ReembedCreate, conn: Conn, request: Request, response: Response) -> Any:
    """Start a re-embed job in this service (or join the running one for the same model and
    selection) and return it at once; follow it at the Location given."""
    from embeddings.registry import ModelError, probe_model

    spec = _spec(conn, body)
    selection = Selection(stale=body.stale, tags=tuple(body.tags), folder=body.folder, since=body.since)
    active = any(m.is_active for m in list_models(conn, spec.name))
    if body.dry_run:
        response.status_code = 200
        return ReembedPlan(
            model=spec.name, passages=count_selection(conn, spec.name, selection, stale=body.stale or not active)
        )
    try:
        embedder = probe_model(spec)
    except ModelError as e:
        raise InvalidInput(f"model: {e}") from None
    job, _created = start_job(conn, spec, selection, activate=body.activate)
    _run_in_background(request, job.id, embedder)
    response.headers["Location"] = f"/reembed/{job.id}"
    return get_job(conn, job.id).as_dict()


@router.get("/reembed/{job_id}", response_model=ReembedPublic)
def read_reembed(job_id: Annotated[UUID, Path(description="The job's id.")], conn: Conn) -> Any:
    """A re-embed job's progress: passages done of total, rate, ETA, status."""
    return get_job(conn, job_id).as_dict()


@router.get("/models", response_model=list[ModelPublic])
def read_models(conn: Conn) -> Any:
    """The embedding models, the active one first, with how many passages each covers."""
    return [ModelPublic.model_validate(m, from_attributes=True) for m in list_models(conn)]


def _run_in_background(request: Request, job_id: UUID, embedder: Any) -> None:
    """One runner thread per job in this process; stopped (after its batch) at shutdown."""
    from knowledge.ingest.reembedder import ReembedRunner

    runners: dict[UUID, tuple[threading.Thread, threading.Event]] = request.app.state.reembeds
    running = runners.get(job_id)
    if running is not None and running[0].is_alive():
        return
    stop = threading.Event()
    runner = ReembedRunner(request.app.state.database_url, job_id, embedder)

    def work() -> None:
        try:
            stats = runner.run(stop)
            log.info("re-embed job %s: %d passages embedded here at %.1f/s", job_id, stats.embedded, stats.rate)
        except Exception:
            log.exception("re-embed job %s stopped", job_id)

    thread = threading.Thread(target=work, name=f"hq-knowledge-reembed-{job_id}", daemon=True)
    runners[job_id] = (thread, stop)
    thread.start()
