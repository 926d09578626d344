"""The embedding queue (knowledge.ingest.queue) against a real database: leases, giving back,
failing with back-off, retries, the depth /status reports and the active model lookup.

Time is simulated by moving lease expiries and next attempts into the past, never by sleeping.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from embeddings.registry import active_spec
from knowledge.ingest import queue

from .factories import add_document

Conn = psycopg.Connection[dict[str, Any]]


def _status(conn: Conn, doc: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(
        "SELECT embedding_status::text AS status, embedding_attempts AS attempts, embedding_lease_owner AS owner,"
        " embedding_error AS error, embedding_next_attempt_at IS NOT NULL AS later FROM documents WHERE id = %s",
        [doc],
    ).fetchone()
    assert row is not None
    return row


def test_lease_give_back_and_reclaim(conn: Conn) -> None:
    docs = [add_document(conn, f"Doc {i}", f"Text {i}.", []) for i in range(3)]
    conn.execute("INSERT INTO assets (name, asset_type, content_text) VALUES ('Sheet', 'spreadsheet', 'numbers')")
    assert queue.depth(conn) == queue.Depth(queued=4, failed=0) and queue.has_work(conn)

    leased = queue.lease(conn, "host:1:a", 3, 60)
    assert [kind for kind, _ in leased] == ["document"] * 3  # documents first, up to n
    assert all(row["embedding_status"] == "processing" and row["embedding_attempts"] == 1 for _, row in leased)
    assert [kind for kind, _ in queue.lease(conn, "host:2:b", 5, 60)] == ["asset"]  # the rest; none twice
    assert queue.lease(conn, "host:3:c", 5, 60) == []

    # Given back untouched: pending again, the try not counted; only the owner's.
    assert queue.give_back(conn, "host:1:a", [("document", docs[0])]) == 1
    assert queue.give_back(conn, "host:2:b", [("document", docs[1])]) == 0
    assert _status(conn, docs[0]) == {"status": "pending", "attempts": 0, "owner": None, "error": None, "later": False}
    assert queue.give_back(conn, "host:1:a") == 2  # all it holds

    # A dead owner's leases: back at once, the try counted, the reason recorded.
    queue.lease(conn, "host:9:z", 1, 60)
    assert queue.lease_owners(conn, "host:") == ["host:2:b", "host:9:z"]
    assert queue.reclaim(conn, ["host:9:z"], "gone") == 1
    first = _status(conn, docs[0])
    assert first["status"] == "pending" and first["attempts"] == 1 and first["error"] == "gone"


def test_renew_and_an_expired_lease(conn: Conn) -> None:
    doc = add_document(conn, "Doc", "Text.", [])
    queue.lease(conn, "w:1:a", 1, 60)
    conn.execute("UPDATE documents SET embedding_lease_expires_at = now() - interval '1 second'")
    due = queue.seconds_to_next(conn)
    assert due is not None and due < 0  # an expired lease is due
    queue.renew(conn, "w:1:a", 60)  # the owner still working: no longer leasable by others
    assert queue.lease(conn, "w:2:b", 1, 60) == []
    conn.execute("UPDATE documents SET embedding_lease_expires_at = now() - interval '1 second'")
    taken = queue.lease(conn, "w:2:b", 1, 60)
    assert [row["id"] for _, row in taken] == [doc] and taken[0][1]["embedding_attempts"] == 2
    with conn.transaction():
        assert queue.holds(conn, "document", doc, "w:2:b", taken[0][1]["content_version"])
        assert not queue.holds(conn, "document", doc, "w:1:a", taken[0][1]["content_version"])
        assert not queue.holds(conn, "document", doc, "w:2:b", taken[0][1]["content_version"] + 1)


def test_fail_backs_off_then_fails_and_retry_puts_it_back(conn: Conn) -> None:
    doc = add_document(conn, "Doc", "Text.", [])
    ((_, row),) = queue.lease(conn, "w:1:a", 1, 60)
    version = row["content_version"]
    queue.fail(conn, "document", doc, owner="w:2:b", version=version, error="not mine", retry_in=30)
    assert _status(conn, doc)["status"] == "processing"  # another owner's failure changes nothing
    queue.fail(conn, "document", doc, owner="w:1:a", version=version, error="boom", retry_in=30)
    assert _status(conn, doc) == {"status": "pending", "attempts": 1, "owner": None, "error": "boom", "later": True}
    due = queue.seconds_to_next(conn)
    assert due is not None and 25 < due <= 30
    assert queue.lease(conn, "w:1:a", 1, 60) == []  # not yet due

    conn.execute("UPDATE documents SET embedding_next_attempt_at = now() - interval '1 second'")
    queue.lease(conn, "w:1:a", 1, 60)
    queue.fail(conn, "document", doc, owner="w:1:a", version=version, error="boom again", retry_in=None)
    assert _status(conn, doc) == {
        "status": "failed",
        "attempts": 2,
        "owner": None,
        "error": "boom again",
        "later": False,
    }
    assert queue.depth(conn) == queue.Depth(queued=0, failed=1) and not queue.has_work(conn)
    assert queue.seconds_to_next(conn) is None

    assert queue.retry_failed(conn) == 1
    assert _status(conn, doc) == {"status": "pending", "attempts": 0, "owner": None, "error": None, "later": False}
    assert conn.execute(queue.retry("document"), {"id": doc}).fetchone() is None  # only a failed one


def test_indexed_ends_the_lease(conn: Conn) -> None:
    doc = add_document(conn, "Doc", "Text.", [])
    queue.lease(conn, "w:1:a", 1, 60)
    queue.indexed(conn, "document", doc, text="Text.", source_hash="h", model="fake-hash-384", dims=384)
    row = conn.execute(
        "SELECT embedding_status::text AS status, embedding_lease_owner, extracted_text, embedding_model"
        " FROM documents WHERE id = %s",
        [doc],
    ).fetchone()
    assert row == {
        "status": "indexed",
        "embedding_lease_owner": None,
        "extracted_text": "Text.",
        "embedding_model": "fake-hash-384",
    }
    assert queue.depth(conn) == queue.Depth(queued=0, failed=0)


def test_active_spec_follows_the_active_model(conn: Conn) -> None:
    before = active_spec(conn)
    assert before is not None
    conn.execute(
        "INSERT INTO embedding_models (name, dims, provider) VALUES ('fake-hash-8', 8, 'fake')"
        " ON CONFLICT (name) DO NOTHING"
    )
    with conn.transaction():
        conn.execute("UPDATE embedding_models SET is_active = false")
        conn.execute("UPDATE embedding_models SET is_active = true WHERE name = 'fake-hash-8'")
    spec = active_spec(conn)
    assert spec is not None and (spec.name, spec.dims, spec.provider) == ("fake-hash-8", 8, "fake")
    with conn.transaction():
        assert active_spec(conn, lock=True) == spec
    conn.execute("UPDATE embedding_models SET is_active = false")
    assert active_spec(conn) is None
