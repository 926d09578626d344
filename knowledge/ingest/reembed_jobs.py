"""Re-embed jobs: which passages to (re)embed with which model, and how far a job has got.

A job is rows, not a process: `start_job` records the model and the selection and lists
the passages as the job's items; any number of runners (knowledge/ingest/reembedder.py), in any
number of processes, then work the items off. For a model that is not the active one the
selection is always what is stale for it (no vector, or one of an older text), and the
job sweeps again before it finishes, so passages added meanwhile are covered too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from embeddings.registry import ModelSpec
from knowledge.errors import NotFound
from knowledge.ingest.embedding_models import get_model, register_model

__all__ = ["ReembedJob", "Selection", "count_selection", "get_job", "start_job"]


@dataclass(frozen=True)
class Selection:
    """Which passages: all (the default), or those of items with any of `tags`, in
    `folder` (a document or asset folder, with its subtree), updated since `since`; with
    `stale`, only those without a current vector of the job's model."""

    stale: bool = False
    tags: tuple[str, ...] = ()
    folder: uuid.UUID | None = None
    since: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "stale": self.stale,
            "tags": list(self.tags),
            "folder": str(self.folder) if self.folder else None,
            "since": self.since.isoformat() if self.since else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        return cls(
            stale=bool(data.get("stale")),
            tags=tuple(data.get("tags") or ()),
            folder=uuid.UUID(data["folder"]) if data.get("folder") else None,
            since=datetime.fromisoformat(data["since"]) if data.get("since") else None,
        )


@dataclass
class ReembedJob:
    id: uuid.UUID
    model: str
    status: str
    activate: bool
    total: int
    embedded: int
    skipped: int
    failed: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.embedded + self.skipped + self.failed

    def as_dict(self) -> dict[str, Any]:
        end = self.finished_at or self.updated_at
        seconds = max((end - self.created_at).total_seconds(), 1e-9)
        rate = self.embedded / seconds if self.embedded else 0.0
        left = max(self.total - self.done, 0)
        return {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "activate": self.activate,
            "total": self.total,
            "done": self.done,
            "embedded": self.embedded,
            "skipped": self.skipped,
            "failed": self.failed,
            "progress": round(self.done / self.total, 4) if self.total else 1.0,
            "passages_per_second": round(rate, 2),
            "eta_seconds": round(left / rate, 1) if rate and self.status == "running" else None,
            "error": self.error,
            "selection": self.selection,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        }


def _dicts(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    return conn.cursor(row_factory=dict_row)


def _selected(selection: Selection, *, stale: bool) -> tuple[sql.SQL, dict[str, Any]]:
    """The FROM/WHERE of the passages `selection` keeps (aliases c, d, a), and its parameters."""
    where: list[str] = ["true"]
    params: dict[str, Any] = {}
    ctes = ""
    if selection.tags:
        where.append("coalesce(d.tags, a.tags) && %(tags)s::text[]")
        params["tags"] = list(selection.tags)
    if selection.folder is not None:
        ctes = (
            "WITH RECURSIVE fd AS (SELECT id FROM document_folders WHERE id = %(folder)s"
            " UNION ALL SELECT f.id FROM document_folders f JOIN fd ON f.parent_id = fd.id),"
            " fa AS (SELECT id FROM asset_folders WHERE id = %(folder)s"
            " UNION ALL SELECT f.id FROM asset_folders f JOIN fa ON f.parent_id = fa.id) "
        )
        where.append("(d.folder_id IN (SELECT id FROM fd) OR a.folder_id IN (SELECT id FROM fa))")
        params["folder"] = selection.folder
    if selection.since is not None:
        where.append("coalesce(d.updated_at, a.updated_at) >= %(since)s")
        params["since"] = selection.since
    if stale:
        # passage_hash() of embeddings/chunking.py: sha256 of model, a NUL byte, the text.
        where.append(
            "NOT EXISTS (SELECT 1 FROM chunk_embeddings e WHERE e.chunk_id = c.id AND e.model = %(model)s"
            " AND e.content_hash = encode(sha256(convert_to(%(model)s, 'UTF8') || '\\x00'::bytea"
            " || convert_to(c.indexed_text, 'UTF8')), 'hex'))"
        )
    return sql.SQL(
        ctes + "{select} FROM knowledge_chunks c LEFT JOIN documents d ON d.id = c.document_id"
        " LEFT JOIN assets a ON a.id = c.asset_id WHERE " + " AND ".join(where)
    ), params


def _check_folder(conn: psycopg.Connection[Any], folder: uuid.UUID | None) -> None:
    if folder is None:
        return
    found = (
        _dicts(conn)
        .execute(
            "SELECT 1 FROM document_folders WHERE id = %(f)s UNION ALL SELECT 1 FROM asset_folders WHERE id = %(f)s",
            {"f": folder},
        )
        .fetchone()
    )
    if not found:
        raise NotFound(f"folder: no document or asset folder has id {folder}", field="folder")


def count_selection(conn: psycopg.Connection[Any], model: str, selection: Selection, *, stale: bool) -> int:
    """How many passages a job for `model` with `selection` would embed now."""
    _check_folder(conn, selection.folder)
    query, params = _selected(selection, stale=stale)
    row = (
        _dicts(conn).execute(query.format(select=sql.SQL("SELECT count(*) AS n")), params | {"model": model}).fetchone()
    )
    return int(row["n"]) if row else 0


def start_job(
    conn: psycopg.Connection[Any], spec: ModelSpec, selection: Selection, *, activate: bool
) -> tuple[ReembedJob, bool]:
    """A job embedding `selection` with `spec`, registered (and its index created) first;
    or the running job for the same model and selection, to join. Returns (job, created).
    `conn` must be in autocommit mode. Raises Conflict when the name is registered for
    another model, NotFound for an unknown folder."""
    _check_folder(conn, selection.folder)
    register_model(conn, spec)
    active = get_model(conn, spec.name).is_active
    stale = selection.stale or not active
    with conn.transaction():
        # One job per model and selection: two processes starting together must not both create one.
        _dicts(conn).execute("SELECT pg_advisory_xact_lock(hashtext('hq.reembed.' || %s))", [spec.name])
        running = (
            _dicts(conn)
            .execute(
                "SELECT id FROM reembed_jobs WHERE model = %s AND status = 'running' AND selection = %s"
                " ORDER BY created_at LIMIT 1",
                [spec.name, Jsonb(selection.as_json())],
            )
            .fetchone()
        )
        if running:
            return get_job(conn, running["id"]), False
        job_id = uuid.uuid4()
        _dicts(conn).execute(
            "INSERT INTO reembed_jobs (id, model, selection, activate) VALUES (%s, %s, %s, %s)",
            [job_id, spec.name, Jsonb(selection.as_json()), activate and not active],
        )
        query, params = _selected(selection, stale=stale)
        added = (
            _dicts(conn)
            .execute(
                sql.SQL("INSERT INTO reembed_items (job_id, chunk_id) {}").format(
                    query.format(select=sql.SQL("SELECT %(job)s::uuid, c.id"))
                ),
                params | {"model": spec.name, "job": job_id},
            )
            .rowcount
        )
        _dicts(conn).execute("UPDATE reembed_jobs SET total = %s WHERE id = %s", [added, job_id])
    return get_job(conn, job_id), True


def sweep(conn: psycopg.Connection[Any], job: ReembedJob) -> int:
    """Add the passages that the job's selection holds and that are stale for its model
    but not yet among its items (passages added since the job began). Returns how many."""
    selection = Selection.from_json(job.selection)
    query, params = _selected(selection, stale=True)
    with conn.transaction():
        added = (
            _dicts(conn)
            .execute(
                sql.SQL("INSERT INTO reembed_items (job_id, chunk_id) {} ON CONFLICT DO NOTHING").format(
                    query.format(select=sql.SQL("SELECT %(job)s::uuid, c.id"))
                ),
                params | {"model": job.model, "job": job.id},
            )
            .rowcount
        )
        if added:
            _dicts(conn).execute("UPDATE reembed_jobs SET total = total + %s WHERE id = %s", [added, job.id])
    return added


def get_job(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> ReembedJob:
    """The job `job_id`; raises NotFound."""
    row = (
        _dicts(conn)
        .execute(
            "SELECT id, model, status, activate, total, embedded, skipped, failed, error, created_at, updated_at,"
            " finished_at, selection FROM reembed_jobs WHERE id = %s",
            [job_id],
        )
        .fetchone()
    )
    if row is None:
        raise NotFound(f"re-embed job {job_id} does not exist")
    return ReembedJob(**row)
