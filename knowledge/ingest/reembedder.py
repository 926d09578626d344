"""The re-embed runner: works off a re-embed job's items (knowledge/ingest/reembed_jobs.py).

Each round is one transaction: claim up to `batch` of the job's open items with FOR UPDATE
SKIP LOCKED, lock their passages FOR KEY SHARE (an edit deleting one waits for the round),
embed them, write the vectors, mark the items done, add to the job's counters, commit.
So runners in several processes share a job without embedding a passage twice, and a
runner killed mid-round (kill -9, a lost connection, a database restart) loses only that
round: its locks go with its connection and the items are open again at once. A runner
waits out such faults itself (reconnecting with back-off), and stops only when asked to or
on an error that is not the database's passing state.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import dict_row

from embeddings.model import Embedder
from knowledge.db.errors import is_transient
from knowledge.errors import Conflict
from knowledge.ingest.chunking import passage_hash
from knowledge.ingest.embedding_models import activate_model
from knowledge.ingest.outage import Outage
from knowledge.ingest.reembed_jobs import ReembedJob, get_job, sweep

__all__ = ["ReembedRunner", "RunStats"]

log = logging.getLogger("hq_knowledge.reembed")
MAX_ATTEMPTS = 3


@dataclass
class RunStats:
    embedded: int = 0  # by this runner
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    seconds_embedding: float = 0.0
    activated: bool = False
    job: ReembedJob | None = None

    @property
    def rate(self) -> float:
        """Passages embedded per second of this runner's wall time."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


class ReembedRunner:
    """Runs job `job_id` with `embedder` (the job's model) until no item is open, then
    finishes the job: sweeps for passages added meanwhile, and switches the active model
    when the job asks for it. `on_batch(embedded, skipped, job)` is called after each round.
    A runner is used from one thread."""

    def __init__(
        self,
        url: str,
        job_id: uuid.UUID,
        embedder: Embedder,
        *,
        batch: int = 128,
        on_batch: Callable[[int, int, ReembedJob], None] | None = None,
    ) -> None:
        self.url = url
        self.job_id = job_id
        self.embedder = embedder
        self.batch = batch
        self.on_batch = on_batch
        self.stats = RunStats()
        self._conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._outage = Outage(f"re-embed job {job_id}", log)

    def run(self, stop: threading.Event | None = None) -> RunStats:
        """Work the job off (see the class). Raises a transient database error only when
        `stop` is set while the database is away; any other error at once."""
        stop = self._stop = stop or threading.Event()
        start = time.perf_counter()
        try:
            while not stop.is_set():
                if self._with_retry(self._round):
                    continue
                if self._with_retry(self._others_busy):
                    stop.wait(0.2)  # another runner holds the last items: let it finish them
                    continue
                if self._with_retry(self._finish):
                    break
        finally:
            self.stats.seconds = time.perf_counter() - start
            self.stats.job = self._with_retry(lambda: get_job(self.conn, self.job_id))
            self.close()
        return self.stats

    # -- one round ------------------------------------------------------------------------

    def _round(self) -> bool:
        """Embed one batch of open items; False when none could be claimed."""
        conn = self.conn
        model = self.embedder.name
        with conn.transaction():
            ids = [
                r["chunk_id"]
                for r in conn.execute(
                    "SELECT chunk_id FROM reembed_items WHERE job_id = %s AND done_at IS NULL"
                    " ORDER BY chunk_id LIMIT %s FOR UPDATE SKIP LOCKED",
                    [self.job_id, self.batch],
                )
            ]
            if not ids:
                return False
            rows = conn.execute(
                "SELECT c.id, c.indexed_text, e.content_hash AS have FROM knowledge_chunks c"
                " LEFT JOIN chunk_embeddings e ON e.chunk_id = c.id AND e.model = %s"
                " WHERE c.id = ANY(%s) ORDER BY c.id FOR KEY SHARE OF c",
                [model, ids],
            ).fetchall()
            job = conn.execute("SELECT selection, activate FROM reembed_jobs WHERE id = %s", [self.job_id]).fetchone()
            # A stale-only job skips what another writer (the live worker) embedded meanwhile.
            only_stale = bool(job and (job["selection"].get("stale") or job["activate"]))
            todo = [(r["id"], r["indexed_text"], passage_hash(r["indexed_text"], model)) for r in rows]
            if only_stale:
                todo = [t for t, r in zip(todo, rows, strict=True) if r["have"] != t[2]]
            vectors = self._embed([text for _, text, _ in todo], ids)
            if vectors is None:
                return True  # the batch failed; its items were marked (see _embed)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO chunk_embeddings (chunk_id, model, embedding, content_hash) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (chunk_id, model) DO UPDATE SET embedding = EXCLUDED.embedding,"
                    " content_hash = EXCLUDED.content_hash, embedded_at = now()",
                    [(i, model, v, h) for (i, _, h), v in zip(todo, vectors, strict=True)],
                )
            conn.execute(
                "UPDATE reembed_items SET done_at = now() WHERE job_id = %s AND chunk_id = ANY(%s)", [self.job_id, ids]
            )
            skipped = len(ids) - len(todo)
            updated = conn.execute(
                "UPDATE reembed_jobs SET embedded = embedded + %s, skipped = skipped + %s WHERE id = %s RETURNING *",
                [len(todo), skipped, self.job_id],
            ).fetchone()
        self.stats.embedded += len(todo)
        self.stats.skipped += skipped
        if self.on_batch and updated is not None:
            self.on_batch(len(todo), skipped, _job(updated))
        return True

    def _embed(self, texts: list[str], ids: list[int]) -> Any:
        start = time.perf_counter()
        try:
            vectors = self.embedder.embed(texts) if texts else np.zeros((0, self.embedder.dims), np.float32)
        except Exception as e:
            log.warning("embedding %d passages failed: %s: %s", len(texts), type(e).__name__, e)
            self._failed_round(ids, f"{type(e).__name__}: {e}")
            return None
        self.stats.seconds_embedding += time.perf_counter() - start
        return vectors

    def _failed_round(self, ids: list[int], error: str) -> None:
        conn = self.conn
        rows = conn.execute(
            "UPDATE reembed_items SET attempts = attempts + 1, error = %s,"
            " done_at = CASE WHEN attempts + 1 >= %s THEN now() END"
            " WHERE job_id = %s AND chunk_id = ANY(%s) RETURNING done_at",
            [error, MAX_ATTEMPTS, self.job_id, ids],
        ).fetchall()
        failed = sum(1 for r in rows if r["done_at"] is not None)
        if failed:
            conn.execute(
                "UPDATE reembed_jobs SET failed = failed + %s, error = %s WHERE id = %s", [failed, error, self.job_id]
            )
            self.stats.failed += failed

    def _others_busy(self) -> bool:
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM reembed_items WHERE job_id = %s AND done_at IS NULL) AS open", [self.job_id]
        ).fetchone()
        return bool(row and row["open"])

    # -- the end of a job -------------------------------------------------------------------

    def _finish(self) -> bool:
        """Sweep, then complete the job (and switch models if asked). False when there is
        more to embed after all."""
        conn = self.conn
        job = get_job(conn, self.job_id)
        if job.status != "running":
            return True
        builds = job.activate or job.selection.get("stale")
        if builds and sweep(conn, job):
            return False
        if job.activate:
            try:
                activate_model(conn, job.model)
                self.stats.activated = True
            except Conflict as e:
                if sweep(conn, job):  # passages arrived between the sweep and the switch
                    return False
                # Items that failed for good leave passages without a vector: the switch
                # would make them unfindable by meaning, so the old model stays active.
                conn.execute(
                    "UPDATE reembed_jobs SET status = 'failed', error = %s, finished_at = now()"
                    " WHERE id = %s AND status = 'running'",
                    [e.message, self.job_id],
                )
                raise
        conn.execute(
            "UPDATE reembed_jobs SET status = 'completed', finished_at = now() WHERE id = %s AND status = 'running'",
            [self.job_id],
        )
        return True

    # -- connection -------------------------------------------------------------------------

    def _with_retry(self, step: Callable[[], Any]) -> Any:
        """Run `step` (one transaction, or reads: safe to run again); after a transient error
        (a lost connection, a restart, a full disk, a lost race) drop the connection, wait
        the back-off and run it again, until it works or `stop` is set."""
        while True:
            try:
                result = step()
            except psycopg.Error as e:
                if not is_transient(e):
                    raise
                self.close()
                if self._stop.is_set() or self._stop.wait(self._outage.failed(e)):
                    raise
                continue
            self._outage.recovered()
            return result

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, application_name="hq-knowledge-reembed"
            )
            register_vector(conn)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _job(row: dict[str, Any]) -> ReembedJob:
    return ReembedJob(**{k: row[k] for k in ReembedJob.__dataclass_fields__})
