"""The embedding queue: documents and assets waiting to be turned into passages and vectors.

The queue is the embedding columns of the two tables (`embedding_status`, its lease, attempts
and next attempt; migration 011's trigger puts an edited record back as `pending`). Every
statement that moves a record through it is here, used by the worker, the API, the CLI and
`/status`:

    pending --lease--> processing --indexed--> indexed
                 |          |--fail--> pending (later) or failed (out of attempts)
                 |          |--give_back / reclaim--> pending
    failed --retry--> pending

A lease names its owner (embeddings.leases) and expires; an expired lease may be leased again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

__all__ = [
    "TABLES",
    "Depth",
    "Kind",
    "depth",
    "fail",
    "give_back",
    "has_work",
    "holds",
    "indexed",
    "lease",
    "lease_owners",
    "reclaim",
    "renew",
    "retry",
    "retry_failed",
    "seconds_to_next",
]

Kind = Literal["document", "asset"]
TABLES: dict[Kind, str] = {"document": "documents", "asset": "assets"}

_QUEUED = sql.SQL("embedding_status IN ('pending', 'processing')")
_LEASED_BY = sql.SQL("embedding_lease_owner = %(owner)s AND embedding_status = 'processing'")
# Given back untouched: the try is not counted.
_GIVE_BACK = sql.SQL(
    "SET embedding_status = 'pending', embedding_lease_owner = NULL, embedding_lease_expires_at = NULL,"
    " embedding_attempts = greatest(embedding_attempts - 1, 0)"
)
# Back in the queue with its attempts reset (a failed record retried by the operator).
_REQUEUE = sql.SQL(
    "SET embedding_status = 'pending', embedding_attempts = 0, embedding_error = NULL, embedding_next_attempt_at = NULL"
)


def _table(kind: Kind) -> sql.Identifier:
    return sql.Identifier(TABLES[kind])


def lease(conn: psycopg.Connection[Any], owner: str, n: int, seconds: float) -> list[tuple[Kind, dict[str, Any]]]:
    """Lease up to `n` records for `seconds` to `owner`, documents first, each as (kind, its
    row after leasing): those pending and due, and those whose lease expired, oldest retry
    first. Each lease counts an attempt. Records another transaction holds are skipped."""
    leased: list[tuple[Kind, dict[str, Any]]] = []
    for kind in TABLES:
        room = n - len(leased)
        if room <= 0:
            break
        statement = sql.SQL(
            """WITH ready AS (
                 SELECT id FROM {table}
                  WHERE (embedding_status = 'pending'
                         AND (embedding_next_attempt_at IS NULL OR embedding_next_attempt_at <= now()))
                     OR (embedding_status = 'processing' AND embedding_lease_expires_at < now())
                  ORDER BY embedding_next_attempt_at NULLS FIRST, updated_at
                  LIMIT %(n)s FOR UPDATE SKIP LOCKED)
               UPDATE {table} t
                  SET embedding_status = 'processing', embedding_lease_owner = %(owner)s,
                      embedding_lease_expires_at = now() + make_interval(secs => %(seconds)s),
                      embedding_attempts = t.embedding_attempts + 1
                 FROM ready WHERE t.id = ready.id
               RETURNING t.*"""
        ).format(table=_table(kind))
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(statement, {"n": room, "owner": owner, "seconds": seconds}).fetchall()
        leased += [(kind, row) for row in rows]
    return leased


def renew(conn: psycopg.Connection[Any], owner: str, seconds: float) -> None:
    """Extend every lease `owner` holds to `seconds` from now."""
    for kind in TABLES:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET embedding_lease_expires_at = now() + make_interval(secs => %(seconds)s) WHERE {}"
            ).format(_table(kind), _LEASED_BY),
            {"owner": owner, "seconds": seconds},
        )


def give_back(conn: psycopg.Connection[Any], owner: str, records: list[tuple[Kind, UUID]] | None = None) -> int:
    """Give `records` (all those `owner` holds when None) back to the queue untouched, their
    tries not counted. Returns how many were given back."""
    given = 0
    for kind in TABLES:
        ids = None if records is None else [i for k, i in records if k == kind]
        if ids == []:
            continue
        statement = sql.SQL("UPDATE {} {} WHERE {}").format(_table(kind), _GIVE_BACK, _LEASED_BY)
        if ids is not None:
            statement = sql.SQL("{} AND id = ANY(%(ids)s)").format(statement)
        given += conn.execute(statement, {"owner": owner, "ids": ids}).rowcount
    return given


def lease_owners(conn: psycopg.Connection[Any], prefix: str) -> list[str]:
    """The owners, starting with `prefix`, of the leases held now."""
    owners: set[str] = set()
    for kind in TABLES:
        with conn.cursor(row_factory=tuple_row) as cur:
            owners.update(
                r[0]
                for r in cur.execute(
                    sql.SQL(
                        "SELECT DISTINCT embedding_lease_owner FROM {} WHERE embedding_status = 'processing'"
                        " AND left(embedding_lease_owner, %s) = %s"
                    ).format(_table(kind)),
                    [len(prefix), prefix],
                )
            )
    return sorted(owners)


def reclaim(conn: psycopg.Connection[Any], owners: list[str], reason: str) -> int:
    """Put the records leased by `owners` (gone) back in the queue at once, `reason` as their
    error. Their tries count: a record that kills every worker embedding it ends `failed`.
    Returns how many."""
    if not owners:
        return 0
    reclaimed = 0
    for kind in TABLES:
        reclaimed += conn.execute(
            sql.SQL(
                "UPDATE {} SET embedding_status = 'pending', embedding_lease_owner = NULL,"
                " embedding_lease_expires_at = NULL, embedding_next_attempt_at = NULL, embedding_error = %(reason)s"
                " WHERE embedding_status = 'processing' AND embedding_lease_owner = ANY(%(owners)s)"
            ).format(_table(kind)),
            {"owners": owners, "reason": reason},
        ).rowcount
    return reclaimed


def holds(conn: psycopg.Connection[Any], kind: Kind, record_id: UUID, owner: str, version: int) -> bool:
    """Does `owner` still hold the record at `version`? Locks its row until the transaction
    ends, so that an edit or another worker waits for what follows."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            sql.SQL("SELECT content_version, embedding_lease_owner FROM {} WHERE id = %s FOR UPDATE").format(
                _table(kind)
            ),
            [record_id],
        ).fetchone()
    return row is not None and row[0] == version and row[1] == owner


def indexed(
    conn: psycopg.Connection[Any], kind: Kind, record_id: UUID, *, text: str, source_hash: str, model: str, dims: int
) -> None:
    """Mark the record embedded: its text, what it was embedded from and with; lease ended."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET embedding_status = 'indexed', extracted_text = %s, embedding_source_hash = %s,"
            " embedding_model = %s, embedding_dims = %s, embedding_error = NULL, embedding_lease_owner = NULL,"
            " embedding_lease_expires_at = NULL, embedding_next_attempt_at = NULL, embedded_at = now() WHERE id = %s"
        ).format(_table(kind)),
        [text, source_hash, model, dims, record_id],
    )


def fail(
    conn: psycopg.Connection[Any],
    kind: Kind,
    record_id: UUID,
    *,
    owner: str,
    version: int,
    error: str,
    retry_in: float | None,
) -> None:
    """Record `error` for the record `owner` leased at `version`: pending again in `retry_in`
    seconds, or `failed` for good when None. Nothing when it was edited or taken meanwhile."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET embedding_status = %(status)s, embedding_error = %(error)s,"
            " embedding_next_attempt_at = now() + make_interval(secs => %(delay)s),"
            " embedding_lease_owner = NULL, embedding_lease_expires_at = NULL"
            " WHERE id = %(id)s AND embedding_lease_owner = %(owner)s AND content_version = %(version)s"
        ).format(_table(kind)),
        {
            "status": "failed" if retry_in is None else "pending",
            "error": error,
            "delay": retry_in,  # NULL for good: no next attempt
            "id": record_id,
            "owner": owner,
            "version": version,
        },
    )


def retry(kind: Kind) -> sql.Composed:
    """The statement putting the `failed` record %(id)s back in the queue with its attempts
    reset, RETURNING its row (none when it is not failed): for the caller to run and read."""
    return sql.SQL("UPDATE {} {} WHERE id = %(id)s AND embedding_status = 'failed' RETURNING *").format(
        _table(kind), _REQUEUE
    )


def retry_failed(conn: psycopg.Connection[Any]) -> int:
    """Put every `failed` record back in the queue with its attempts reset. Returns how many."""
    return sum(
        conn.execute(sql.SQL("UPDATE {} {} WHERE embedding_status = 'failed'").format(_table(kind), _REQUEUE)).rowcount
        for kind in TABLES
    )


@dataclass(frozen=True)
class Depth:
    queued: int  # pending or being embedded
    failed: int  # out of attempts, waiting for a retry by the operator


def depth(conn: psycopg.Connection[Any]) -> Depth:
    """How many records wait in the queue, and how many failed."""
    counts = [
        sql.SQL(
            "SELECT count(*) FILTER (WHERE {queued}) AS queued, count(*) FILTER"
            " (WHERE embedding_status = 'failed') AS failed FROM {table}"
        ).format(queued=_QUEUED, table=_table(k))
        for k in TABLES
    ]
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            sql.SQL("SELECT sum(queued)::int, sum(failed)::int FROM ({}) s").format(sql.SQL(" UNION ALL ").join(counts))
        ).fetchone()
    assert row is not None  # an aggregate always returns a row
    return Depth(int(row[0] or 0), int(row[1] or 0))


def has_work(conn: psycopg.Connection[Any]) -> bool:
    """Is any record pending or being embedded (due now or later)?"""
    exists = [sql.SQL("EXISTS (SELECT 1 FROM {} WHERE {})").format(_table(k), _QUEUED) for k in TABLES]
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(sql.SQL("SELECT {}").format(sql.SQL(" OR ").join(exists))).fetchone()
    return bool(row and row[0])


def seconds_to_next(conn: psycopg.Connection[Any]) -> float | None:
    """Seconds until a pending record's next attempt or a lease's expiry, whichever is
    first (negative: already due); None when neither is waiting."""
    parts = [
        sql.SQL(
            "SELECT min(embedding_next_attempt_at) AS t FROM {table} WHERE embedding_status = 'pending'"
            " UNION ALL SELECT min(embedding_lease_expires_at) FROM {table} WHERE embedding_status = 'processing'"
        ).format(table=_table(k))
        for k in TABLES
    ]
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            sql.SQL("SELECT extract(epoch FROM min(t) - now()) FROM ({}) s").format(sql.SQL(" UNION ALL ").join(parts))
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None
