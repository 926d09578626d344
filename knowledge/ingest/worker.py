"""The ingestion worker: keeps every document and asset chunked, embedded and indexed.

Work is claimed per record (a document or an asset) with FOR UPDATE SKIP LOCKED and a
lease, so several workers share one database without doing anything twice, and a worker
killed mid-batch only delays its records until the lease expires. A record's passages
are written in one transaction, after checking that the record is still at the version
that was read and still leased by this worker: an edit made while embedding wins, and
the stale vectors are dropped. Passages whose text is unchanged keep their embeddings
(matched by hash, within a document and across documents).

The worker outlives the database: a lost connection, a server restart, a full disk or a
lost race pauses it (its leases given back, the connections dropped, then reconnecting
with back-off) instead of stopping it; only a programming error stops `run()`. The leases
of workers of this host that died (kill -9, a crash) are given back as soon as a worker
sees it, and a worker renews its own leases while it embeds, so a lease need not outlast
the slowest batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import dict_row

from embeddings.model import Embedder
from embeddings.registry import active_spec
from knowledge.db.errors import is_transient
from knowledge.db.keyword_index import repair_bm25_index
from knowledge.health import Health
from knowledge.ingest import queue
from knowledge.ingest.chunking import passage_hash
from knowledge.ingest.leases import dead_owners, new_owner, node_name
from knowledge.ingest.outage import Outage, describe
from knowledge.ingest.passages import stored_vectors, write_passages
from knowledge.ingest.records import Record, WorkerStats, register_embedder

__all__ = ["Worker", "WorkerStats", "register_embedder"]  # the last two from .records

log = logging.getLogger("hq_knowledge.worker")
CHANNEL = "hq_embedding"
_EMBED_STEP = 128  # passages per embedder call: the worker beats and renews its leases between calls
HEALTH = "worker"
STALE_AFTER = 120.0  # seconds without a beat before readiness calls the worker stuck


class Worker:
    """Embeds pending documents and assets with `embedder` into the database at `url`.

    `run()` loops until `stop` is set (or, with once=True, until nothing is pending),
    riding out database outages; it raises only on a non-transient error, which the
    caller must treat as fatal. `process_batch()` does one lease-embed-write round and
    returns how many records it finished. `health`, when given, gets the worker's state
    ('starting', 'ok', 'recovering', 'failed', 'stopped') and a beat at least every few
    seconds while it runs. A worker is used from one thread.
    """

    def __init__(
        self,
        url: str,
        embedder: Embedder | None,
        *,
        worker_id: str | None = None,
        batch_records: int = 64,
        lease_seconds: int = 120,
        max_attempts: int = 5,
        retry_base_seconds: float = 10.0,
        poll_seconds: float = 5.0,
        reclaim_seconds: float = 30.0,
        health: Health | None = None,
        on_record: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.url = url
        # None: embed with the active model, following a model switch (the embedder of a
        # registered model is loaded by embeddings.registry); else always this model.
        self.follow_active = embedder is None
        self._embedder = embedder
        self.worker_id = worker_id or new_owner()
        self.batch_records = batch_records
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.poll_seconds = poll_seconds
        self.reclaim_seconds = reclaim_seconds
        self.health = health
        self.on_record = on_record  # (kind, id, outcome) after each record
        self.stats = WorkerStats()
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._registered = False
        self._next_reclaim = 0.0
        self._next_renewal = 0.0
        self._outage = Outage("ingestion worker", log)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self._active_embedder()
        return self._embedder

    def _active_embedder(self) -> Embedder:
        """The active model's embedder (the packaged default when no model is active)."""
        from embeddings.model import load_embedder
        from embeddings.registry import load_model

        spec = active_spec(self.conn_raw)
        return load_model(spec) if spec else load_embedder()

    def _follow(self) -> None:
        """Switch to the active model if it changed since the last round."""
        spec = active_spec(self.conn_raw)
        if spec and self._embedder is not None and spec.name != self._embedder.name:
            log.info("the active model is now %s: embedding with it", spec.name)
            self._embedder = self._active_embedder()
            register_embedder(self.conn_raw, self._embedder)

    # -- loop ---------------------------------------------------------------------------

    def run(self, *, once: bool = False, stop: threading.Event | None = None) -> WorkerStats:
        """Work until `stop` (or with `once`, until nothing is pending). Transient database
        errors are waited out; any other exception is raised, with the state 'failed'."""
        stop = stop or threading.Event()
        self._state("starting")
        try:
            while not stop.is_set():
                try:
                    self._work(once, stop)
                    break
                except psycopg.Error as e:
                    if not is_transient(e):
                        raise
                    self._interrupted(e, stop)
        except BaseException as e:
            self._state("failed", describe(e))
            raise
        finally:
            self.close()
        self._state("stopped")
        return self.stats

    def _work(self, once: bool, stop: threading.Event) -> None:
        self._listen = listen = self._connect()
        listen.execute(f"LISTEN {CHANNEL}")
        # NOTIFYs sent while disconnected are lost: the first round looks at the queue itself.
        # And a server that restarted meanwhile has forgotten pg_textsearch's statistics.
        repair_bm25_index(self.conn_raw)
        self._release_mine()
        self._reclaim_dead()
        self._outage.recovered()
        self._state("ok")
        while not stop.is_set():
            while not stop.is_set() and self.process_batch(stop) > 0:
                self._beat()
            if once:
                if not self._pending_now():
                    break
                continue
            self._wait(listen, stop)

    def _interrupted(self, e: psycopg.Error, stop: threading.Event) -> None:
        """After a transient error: give back what can be given back, drop both connections,
        and wait the back-off (or until `stop`)."""
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):  # else given back after reconnecting, or by their lease expiring
                self._release_mine()
        self.close()
        delay = self._outage.failed(e)
        self._state("recovering", describe(e))
        deadline = time.monotonic() + delay
        while not stop.is_set() and time.monotonic() < deadline:
            self._beat()
            stop.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    def _state(self, state: str, detail: str = "") -> None:
        if self.health is not None:
            self.health.set(HEALTH, state, detail, stale_after=STALE_AFTER)
            self.health.beat(HEALTH)

    def _beat(self) -> None:
        if self.health is not None:
            self.health.beat(HEALTH)

    def _wait(self, listen: psycopg.Connection[Any], stop: threading.Event) -> None:
        """Sleep until a NOTIFY, a retry falls due, `stop`, or the poll interval passes."""
        deadline = time.monotonic() + self._seconds_to_next_retry()
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._beat()
            for _ in listen.notifies(timeout=min(remaining, 0.25), stop_after=1):
                return

    def _seconds_to_next_retry(self) -> float:
        due = queue.seconds_to_next(self.conn)
        return max(0.0, min(self.poll_seconds, self.poll_seconds if due is None else due))

    def _pending_now(self) -> bool:
        """Is anything leasable now, or soon (a retry or an expired lease within the poll)?"""
        return queue.has_work(self.conn) and self._seconds_to_next_retry() < self.poll_seconds

    # -- one round ------------------------------------------------------------------------

    def process_batch(self, stop: threading.Event | None = None) -> int:
        if self.follow_active:
            self._follow()
        if time.monotonic() >= self._next_reclaim:
            self._reclaim_dead()
        records = self._lease()
        if not records:
            return 0
        self._next_renewal = time.monotonic() + self.lease_seconds / 3
        if stop is not None and stop.is_set():
            self._release(records)
            return 0
        for record in records:
            record.prepare(self.embedder)
        vectors = self._embed([r for r in records if r.error is None])
        for record in records:
            self._finish(record, vectors)
            self._batch_beat()
        return len(records)

    def _batch_beat(self) -> None:
        """A beat mid-batch; renews this worker's leases when a third of a lease has passed."""
        self._beat()
        if time.monotonic() >= self._next_renewal:
            self._next_renewal = time.monotonic() + self.lease_seconds / 3
            queue.renew(self.conn, self.worker_id, self.lease_seconds)

    def _lease(self) -> list[Record]:
        return [
            Record(
                kind,
                row["id"],
                row["content_version"],
                row["embedding_attempts"],
                row["title"] if kind == "document" else row["name"],
                row,
            )
            for kind, row in queue.lease(self.conn, self.worker_id, self.batch_records, self.lease_seconds)
        ]

    def _release_mine(self) -> int:
        """Give back every record this worker holds (a batch cut short by a lost connection
        may have leased rows it never saw); attempts not counted. Returns how many."""
        released = queue.give_back(self.conn_raw, self.worker_id)
        if released:
            log.info("gave back %d record(s) leased before the interruption", released)
        return released

    def _reclaim_dead(self) -> int:
        """Give back at once the leases of workers of this host whose process is gone; a live
        worker's lease is never touched. Returns how many. The try counts as an attempt: a
        record that kills every worker embedding it (a crash in the model) must end `failed`
        after max_attempts instead of taking the queue down again and again."""
        self._next_reclaim = time.monotonic() + self.reclaim_seconds
        node = node_name()
        dead = dead_owners(queue.lease_owners(self.conn_raw, node + ":"), node)
        reclaimed = queue.reclaim(self.conn_raw, dead, "its worker stopped while embedding it (process gone)")
        if reclaimed:
            self.stats.reclaimed += reclaimed
            log.info("reclaimed %d lease(s) of dead worker(s) on this host", reclaimed)
        return reclaimed

    def _release(self, records: list[Record]) -> None:
        """Give leased records back untouched (shutting down before any work was done)."""
        queue.give_back(self.conn, self.worker_id, [(r.kind, r.id) for r in records])

    def _embed(self, records: list[Record]) -> dict[str, np.ndarray[Any, Any]]:
        """Vectors by passage hash: reused from the database where they exist, else embedded.
        A failing batch is retried record by record, so one bad record fails alone."""
        wanted = {h: c.indexed_text for r in records for h, c in zip(r.hashes, r.chunks, strict=True)}
        vectors: dict[str, np.ndarray[Any, Any]] = {}
        if wanted:
            vectors.update(stored_vectors(self.conn, self.embedder.name, list(wanted)))
        self.stats.passages_reused += sum(1 for r in records for h in r.hashes if h in vectors)
        missing = [h for h in wanted if h not in vectors]
        try:
            for start in range(0, len(missing), _EMBED_STEP):
                vectors.update(self._encode(missing[start : start + _EMBED_STEP], wanted))
                self._batch_beat()
        except psycopg.Error:
            raise  # the database, not the model: run() decides
        except Exception:
            for record in records:
                todo = [h for h in dict.fromkeys(record.hashes) if h not in vectors]
                try:
                    vectors.update(self._encode(todo, wanted))
                except Exception as e:
                    record.error = f"embedding failed: {type(e).__name__}: {e}"
                self._batch_beat()
        return vectors

    def _encode(self, hashes: list[str], texts: dict[str, str]) -> dict[str, np.ndarray[Any, Any]]:
        if not hashes:
            return {}
        start = time.perf_counter()
        matrix = self.embedder.embed([texts[h] for h in hashes])
        self.stats.seconds_embedding += time.perf_counter() - start
        self.stats.passages_embedded += len(hashes)
        return dict(zip(hashes, matrix, strict=True))

    def _finish(self, record: Record, vectors: dict[str, np.ndarray[Any, Any]]) -> None:
        if record.error is None and any(h not in vectors for h in record.hashes):
            record.error = "embedding failed: no vector for some passages"
        try:
            outcome = self._write(record, vectors) if record.error is None else self._fail(record)
        except psycopg.Error as e:
            if is_transient(e):
                raise  # not the record's fault: run() waits it out and the record is given back
            record.error = f"writing passages failed: {str(e).strip().splitlines()[0]}"
            outcome = self._fail(record)
        if self.on_record:
            self.on_record(record.kind, str(record.id), outcome)

    def _write(self, record: Record, vectors: dict[str, np.ndarray[Any, Any]]) -> str:
        model = self.embedder.name
        with self.conn.transaction():
            if not queue.holds(self.conn, record.kind, record.id, self.worker_id, record.version):
                self.stats.stale += 1
                return "stale"  # edited, deleted or taken over meanwhile: its new version is queued
            if self.follow_active:
                # Held until commit: a model switch waits for this write, or this write sees
                # the switch and the record goes back to the queue for the new model.
                active = active_spec(self.conn, lock=True)
                if active is None or active.name != model:
                    self._release([record])
                    self.stats.stale += 1
                    return "stale"
            write_passages(self.conn, record.kind, record.id, record.chunks, record.hashes, vectors, model)
            queue.indexed(
                self.conn,
                record.kind,
                record.id,
                text=record.markdown,
                source_hash=passage_hash("\n".join(record.hashes), model),
                model=model,
                dims=self.embedder.dims,
            )
        self.stats.indexed += 1
        return "indexed"

    def _fail(self, record: Record) -> str:
        final = record.attempts >= self.max_attempts
        queue.fail(
            self.conn,
            record.kind,
            record.id,
            owner=self.worker_id,
            version=record.version,
            error=record.error or "",
            retry_in=None if final else self.retry_base_seconds * 2 ** max(record.attempts - 1, 0),
        )
        log.warning(
            "%s %s: %s (attempt %d of %d)", record.kind, record.id, record.error, record.attempts, self.max_attempts
        )
        if final:
            self.stats.failed += 1
            return "failed"
        self.stats.retried += 1
        return "retry"

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, application_name="hq-knowledge-worker")
        register_vector(conn)
        return conn

    @property
    def conn_raw(self) -> psycopg.Connection[Any]:
        """The connection, without registering the model."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._registered = False
        return self._conn

    @property
    def conn(self) -> psycopg.Connection[Any]:
        conn = self.conn_raw
        if not self._registered:
            register_embedder(conn, self.embedder)
            self._registered = True
        return conn

    def close(self) -> None:
        """Close both connections (the next use of `conn` opens a new one)."""
        for conn in (self._conn, self._listen):
            if conn is not None:
                conn.close()
        self._conn = self._listen = None
