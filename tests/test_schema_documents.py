"""Documents and their embeddings (migration 011): re-queueing and notifying on a content change,
cascading deletes, the per-model HNSW indexes and their dimensions."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import errors

from .factories import add_document
from .schema_calls import Conn, Connect, one, scalar


def insert_document(conn: Conn, title: str = "Playbook", text: str = "# Hello") -> UUID:
    return add_document(conn, title, text)


def document(conn: Conn, doc: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM documents WHERE id = %s", [doc])


def insert_chunk(conn: Conn, doc: UUID, index: int, text: str = "passage") -> int:
    return int(
        scalar(
            conn,
            "INSERT INTO knowledge_chunks (document_id, chunk_index, content, indexed_text, "
            "content_hash) VALUES (%s, %s, %s, %s, hq_sha256_hex(%s)) RETURNING id",
            [doc, index, text, text, text],
        )
    )


def vector_literal(dims: int, value: float = 0.1) -> str:
    return "[" + ",".join([str(value)] * dims) + "]"


def insert_embedding(conn: Conn, chunk: int, model: str, dims: int) -> None:
    conn.execute(
        "INSERT INTO chunk_embeddings (chunk_id, model, embedding, content_hash) VALUES (%s, %s, %s::vector, 'h')",
        [chunk, model, vector_literal(dims)],
    )


def drain_until_sentinel(listener: Conn, sender: Conn, channel: str) -> list[str]:
    """Payloads `listener` receives on `channel` before a sentinel `sender` sends last.

    A session's notifications arrive in commit order, so whatever `sender` notified before
    the sentinel has arrived by the time the sentinel does: no waiting on a timeout.
    """
    sender.execute("SELECT pg_notify(%s, 'sentinel')", [channel])
    payloads: list[str] = []
    for n in listener.notifies(timeout=10):
        if n.channel != channel:
            continue
        if n.payload == "sentinel":
            return payloads
        payloads.append(n.payload)
    raise AssertionError("sentinel notification never arrived")


def test_document_content_change_requeues_embedding_and_notifies(conn: Conn, connect: Connect) -> None:
    """A title or content change bumps content_version, resets to pending, NOTIFYs hq_embedding."""
    listener = connect()
    listener.execute("LISTEN hq_embedding")
    doc = insert_document(conn)
    inserted = drain_until_sentinel(listener, conn, "hq_embedding")
    assert [json.loads(p) for p in inserted] == [{"kind": "document", "id": str(doc)}]
    conn.execute(
        "UPDATE documents SET embedding_status = 'indexed', embedding_attempts = 2, "
        "embedding_error = 'old' WHERE id = %s",
        [doc],
    )
    assert drain_until_sentinel(listener, conn, "hq_embedding") == []

    conn.execute("UPDATE documents SET title = 'Playbook v2' WHERE id = %s", [doc])

    d = document(conn, doc)
    assert d["content_version"] == 2
    assert d["embedding_status"] == "pending"
    assert (d["embedding_attempts"], d["embedding_error"]) == (0, None)
    payloads = drain_until_sentinel(listener, conn, "hq_embedding")
    assert [json.loads(p) for p in payloads] == [{"kind": "document", "id": str(doc)}]

    conn.execute("UPDATE documents SET embedding_status = 'indexed' WHERE id = %s", [doc])
    drain_until_sentinel(listener, conn, "hq_embedding")
    conn.execute("UPDATE documents SET content_text = '# Changed' WHERE id = %s", [doc])
    assert document(conn, doc)["content_version"] == 3
    assert document(conn, doc)["embedding_status"] == "pending"
    assert len(drain_until_sentinel(listener, conn, "hq_embedding")) == 1


def test_document_tag_or_pin_change_does_not_requeue(conn: Conn, connect: Connect) -> None:
    """Changing only tags, pinned or metadata keeps the version, the status and sends no NOTIFY."""
    listener = connect()
    listener.execute("LISTEN hq_embedding")
    doc = insert_document(conn)
    conn.execute("UPDATE documents SET embedding_status = 'indexed' WHERE id = %s", [doc])
    drain_until_sentinel(listener, conn, "hq_embedding")

    conn.execute(
        "UPDATE documents SET tags = ARRAY['boot:all'], pinned = true, metadata = '{\"a\": 1}' WHERE id = %s",
        [doc],
    )

    d = document(conn, doc)
    assert (d["content_version"], d["embedding_status"]) == (1, "indexed")
    assert (d["tags"], d["pinned"]) == (["boot:all"], True)
    assert drain_until_sentinel(listener, conn, "hq_embedding") == []


def test_deleting_a_document_deletes_its_comments_chunks_and_embeddings(conn: Conn) -> None:
    """Comments, passages and their vectors go with the document; another document's stay."""
    doc, keep = insert_document(conn, "Gone"), insert_document(conn, "Kept")
    for d in (doc, keep):
        conn.execute(
            "INSERT INTO comments (entity_type, entity_id, body) VALUES ('document', %s, 'hi')",
            [d],
        )
        for i in range(2):
            insert_embedding(conn, insert_chunk(conn, d, i), "all-MiniLM-L6-v2", 384)

    conn.execute("DELETE FROM documents WHERE id = %s", [doc])

    for table, column in [("comments", "entity_id"), ("knowledge_chunks", "document_id")]:
        assert scalar(conn, f"SELECT count(*) AS n FROM {table} WHERE {column} = %s", [doc]) == 0
        assert scalar(conn, f"SELECT count(*) AS n FROM {table} WHERE {column} = %s", [keep]) > 0
    assert scalar(conn, "SELECT count(*) AS n FROM chunk_embeddings") == 2
    assert (
        scalar(
            conn,
            "SELECT count(*) AS n FROM chunk_embeddings e JOIN knowledge_chunks k ON k.id = e.chunk_id "
            "WHERE k.document_id = %s",
            [keep],
        )
        == 2
    )


def hnsw_indexes(conn: Conn) -> dict[str, str]:
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes "
        "WHERE tablename = 'chunk_embeddings' AND indexdef ILIKE '%%USING hnsw%%'"
    ).fetchall()
    return {r["indexname"]: r["indexdef"] for r in rows}


def uses_index(conn: Conn, model: str, dims: int, index: str) -> bool:
    """Whether a nearest-neighbour query for `model` is planned on `index`."""
    with conn.transaction():
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute(f"SET LOCAL {setting} = off")
        plan = conn.execute(
            f"EXPLAIN SELECT chunk_id FROM chunk_embeddings WHERE model = %s "
            f"ORDER BY embedding::vector({dims}) <=> %s::vector({dims}) LIMIT 5",
            [model, vector_literal(dims)],
        ).fetchall()
    return any(index in r["QUERY PLAN"] for r in plan)


def test_default_model_embedding_inserts_and_has_a_partial_hnsw_index(conn: Conn) -> None:
    """A 384-dim vector for all-MiniLM-L6-v2 inserts; its partial HNSW index exists and is used."""
    chunk = insert_chunk(conn, insert_document(conn), 0)

    insert_embedding(conn, chunk, "all-MiniLM-L6-v2", 384)

    assert scalar(conn, "SELECT vector_dims(embedding) AS d FROM chunk_embeddings") == 384
    name = scalar(conn, "SELECT hq_embedding_index_name('all-MiniLM-L6-v2') AS n")
    indexes = hnsw_indexes(conn)
    assert name in indexes
    assert "vector(384)" in indexes[name] and "vector_cosine_ops" in indexes[name]
    assert "WHERE (model = 'all-MiniLM-L6-v2'::text)" in indexes[name]
    assert uses_index(conn, "all-MiniLM-L6-v2", 384, name)
    with pytest.raises(psycopg.errors.DataException):
        insert_embedding(conn, insert_chunk(conn, insert_document(conn, "Other"), 0), "all-MiniLM-L6-v2", 383)


def test_ensure_embedding_index_for_a_new_model_creates_its_own_partial_index(
    conn: Conn,
) -> None:
    """hq_ensure_embedding_index builds a per-model HNSW index at that model's dimension."""
    conn.execute("INSERT INTO embedding_models (name, dims) VALUES ('bge-base-en-v1.5', 768)")
    default_name = scalar(conn, "SELECT hq_embedding_index_name('all-MiniLM-L6-v2') AS n")

    name = scalar(conn, "SELECT hq_ensure_embedding_index('bge-base-en-v1.5') AS n")

    indexes = hnsw_indexes(conn)
    assert set(indexes) == {default_name, name}
    assert "vector(768)" in indexes[name]
    assert "WHERE (model = 'bge-base-en-v1.5'::text)" in indexes[name]
    assert scalar(conn, "SELECT hq_ensure_embedding_index('bge-base-en-v1.5') AS n") == name
    assert len(hnsw_indexes(conn)) == 2

    chunk = insert_chunk(conn, insert_document(conn), 0)
    insert_embedding(conn, chunk, "bge-base-en-v1.5", 768)
    insert_embedding(conn, chunk, "all-MiniLM-L6-v2", 384)
    assert uses_index(conn, "bge-base-en-v1.5", 768, name)

    with pytest.raises(errors.InvalidParameterValue):
        conn.execute("SELECT hq_ensure_embedding_index('no-such-model')")


def test_embedding_dimension_must_match_its_model_even_without_an_index(conn: Conn) -> None:
    """Models over HNSW's 2000-dimension limit get no index; the dimension check still holds."""
    conn.execute("INSERT INTO embedding_models (name, dims) VALUES ('wide', 3072)")
    assert scalar(conn, "SELECT hq_ensure_embedding_index('wide') AS n") is None
    chunk = insert_chunk(conn, insert_document(conn), 0)
    with pytest.raises(errors.DataException, match="embedding for model wide has 384 dimensions, expected 3072"):
        insert_embedding(conn, chunk, "wide", 384)
    insert_embedding(conn, chunk, "wide", 3072)
    assert scalar(conn, "SELECT count(*) FROM chunk_embeddings WHERE model = 'wide'") == 1
