"""The ingestion worker against a real database: leasing, re-embedding only what changed,
crashes, concurrency, stale edits, failures, wake-ups and shutdown."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
import pytest

from embeddings.model import FakeEmbedder, Vectors
from knowledge.ingest.worker import Worker

from .commands import hq
from .factories import add_document

Conn = psycopg.Connection[dict[str, Any]]

TOPICS = [
    "refunds",
    "pricing",
    "onboarding",
    "security",
    "invoices",
    "outages",
    "hiring",
    "roadmap",
    "analytics",
    "support",
    "contracts",
    "partners",
]


def long_document(sections: int, *, seed: str = "") -> str:
    """Markdown with one heading and one ~150-word paragraph per section: a passage each."""
    parts = []
    for i in range(sections):
        words = " ".join(f"{seed}{TOPICS[(i + k) % len(TOPICS)]}{i}w{k}" for k in range(150))
        parts.append(f"## Section {i}\n\n{words}.\n")
    return "\n".join(parts)


def statuses(conn: Conn) -> collections.Counter[str]:
    return collections.Counter(r["embedding_status"] for r in conn.execute("SELECT embedding_status FROM documents"))


def passages(conn: Conn, doc: uuid.UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT c.id, c.chunk_index, c.content, c.content_hash, e.model, e.content_hash AS embedded_hash "
        "FROM knowledge_chunks c LEFT JOIN chunk_embeddings e ON e.chunk_id = c.id "
        "WHERE c.document_id = %s ORDER BY c.chunk_index",
        [doc],
    ).fetchall()


def test_worker_indexes_documents_and_assets(conn: Conn, db_url: str) -> None:
    doc = add_document(conn, "Refund policy", "# Refunds\n\nAnnual plans are refunded pro rata.\n")
    asset = conn.execute(
        "INSERT INTO assets (name, asset_type, url, description) VALUES "
        "('Status page', 'link', 'https://status.example.com', 'Live uptime of every region') RETURNING id"
    ).fetchone()["id"]  # type: ignore[index]
    fake = FakeEmbedder()
    stats = Worker(db_url, fake).run(once=True)
    assert stats.indexed == 2 and stats.failed == 0
    row = conn.execute("SELECT * FROM documents WHERE id = %s", [doc]).fetchone()
    assert row is not None
    assert (row["embedding_status"], row["embedding_model"], row["embedding_dims"]) == ("indexed", fake.name, 384)
    assert row["embedding_attempts"] == 1 and row["embedding_lease_owner"] is None
    assert "pro rata" in row["extracted_text"]
    got = passages(conn, doc)
    assert got and all(p["model"] == fake.name and p["embedded_hash"] == p["content_hash"] for p in got)
    asset_text = conn.execute(
        "SELECT string_agg(indexed_text, ' ') AS t FROM knowledge_chunks WHERE asset_id = %s", [asset]
    ).fetchone()
    assert asset_text is not None and "status.example.com" in asset_text["t"]
    assert conn.execute("SELECT embedding_status FROM assets WHERE id = %s", [asset]).fetchone() == {
        "embedding_status": "indexed"
    }


def test_editing_one_paragraph_reembeds_only_the_changed_passages(conn: Conn, db_url: str) -> None:
    markdown = long_document(50)
    doc = add_document(conn, "Handbook", markdown)
    fake = FakeEmbedder()
    Worker(db_url, fake).run(once=True)
    before = passages(conn, doc)
    assert len(before) == 50
    assert len(fake.calls) == 50

    edited = markdown.replace("17w3 ", "17w3 CHANGED ", 1)
    assert edited != markdown
    conn.execute("UPDATE documents SET content_text = %s WHERE id = %s", [edited, doc])
    fake.calls.clear()
    stats = Worker(db_url, fake).run(once=True)

    after = passages(conn, doc)
    assert len(after) == 50
    assert len(fake.calls) == 1 and "CHANGED" in fake.calls[0]
    assert stats.passages_embedded == 1
    changed = [(b["id"], a["id"]) for b, a in zip(before, after, strict=True) if b["content_hash"] != a["content_hash"]]
    assert len(changed) == 1
    # Unchanged passages are the same rows, with the same vectors.
    assert sum(b["id"] == a["id"] for b, a in zip(before, after, strict=True)) == 49


def test_identical_passages_are_embedded_once_across_documents(conn: Conn, db_url: str) -> None:
    body = "## Shared\n\nEvery agent follows the escalation ladder before paging a human.\n"
    for i in range(3):
        add_document(conn, "Escalation", body + f"\n## Own\n\nDocument number {i} only.\n")
    fake = FakeEmbedder()
    Worker(db_url, fake).run(once=True)
    assert statuses(conn) == {"indexed": 3}
    assert collections.Counter(fake.calls).most_common(1)[0][1] == 1


def test_two_workers_never_embed_the_same_passage_twice(conn: Conn, db_url: str) -> None:
    for i in range(40):
        add_document(conn, f"Doc {i}", long_document(3, seed=f"d{i}"))
    shared = FakeEmbedder()
    workers = [Worker(db_url, shared, batch_records=4) for _ in range(2)]
    threads = [threading.Thread(target=w.run, kwargs={"once": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses(conn) == {"indexed": 40}
    counts = collections.Counter(shared.calls)
    assert len(counts) == 120 and max(counts.values()) == 1
    assert all(w.stats.indexed > 0 for w in workers), [w.stats for w in workers]
    assert conn.execute("SELECT count(*) AS n FROM chunk_embeddings").fetchone() == {"n": 120}


class EditingEmbedder(FakeEmbedder):
    """Edits the document while its passages are being embedded, as an operator might."""

    def __init__(self, url: str, doc: uuid.UUID) -> None:
        super().__init__()
        self.url, self.doc, self.edited = url, doc, False

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not self.edited:
            self.edited = True
            with psycopg.connect(self.url, autocommit=True) as other:
                other.execute("UPDATE documents SET content_text = '# New\n\nThe new text.' WHERE id = %s", [self.doc])
        return super().embed(texts)


def test_document_edited_while_embedding_is_not_written_with_stale_vectors(conn: Conn, db_url: str) -> None:
    doc = add_document(conn, "Draft", "# Old\n\nThe old text.")
    worker = Worker(db_url, EditingEmbedder(db_url, doc))
    assert worker.process_batch() == 1
    assert worker.stats.stale == 1
    row = conn.execute("SELECT embedding_status, content_version FROM documents WHERE id = %s", [doc]).fetchone()
    assert row == {"embedding_status": "pending", "content_version": 2}
    assert passages(conn, doc) == []  # nothing of the old version was written

    worker.run(once=True)
    texts = [p["content"] for p in passages(conn, doc)]
    assert statuses(conn) == {"indexed": 1} and any("new text" in t for t in texts)
    assert not any("old text" in t for t in texts)


class PoisonEmbedder(FakeEmbedder):
    def embed(self, texts: Sequence[str]) -> Vectors:
        if any("POISON" in t for t in texts):
            raise RuntimeError("the model choked on this text")
        return super().embed(texts)


def test_a_failing_document_retries_then_fails_and_the_rest_is_indexed(conn: Conn, db_url: str) -> None:
    good = [add_document(conn, f"Good {i}", f"Fine text number {i}.") for i in range(5)]
    bad = add_document(conn, "Bad", "This one is POISON for the model.")
    worker = Worker(db_url, PoisonEmbedder(), max_attempts=3, retry_base_seconds=0.01)
    worker.process_batch()
    row = conn.execute("SELECT * FROM documents WHERE id = %s", [bad]).fetchone()
    assert row is not None
    assert row["embedding_status"] == "pending" and row["embedding_attempts"] == 1
    assert "the model choked" in row["embedding_error"] and row["embedding_next_attempt_at"] is not None
    assert all(
        conn.execute("SELECT embedding_status FROM documents WHERE id = %s", [g]).fetchone()
        == {"embedding_status": "indexed"}
        for g in good
    )

    worker.run(once=True)
    row = conn.execute("SELECT * FROM documents WHERE id = %s", [bad]).fetchone()
    assert row is not None
    assert row["embedding_status"] == "failed" and row["embedding_attempts"] == 3
    assert "RuntimeError: the model choked on this text" in row["embedding_error"]
    assert worker.stats.failed == 1 and statuses(conn) == {"indexed": 5, "failed": 1}


def test_worker_wakes_on_insert_without_waiting_for_the_poll(conn: Conn, db_url: str) -> None:
    stop = threading.Event()
    worker = Worker(db_url, FakeEmbedder(), poll_seconds=120)
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    try:
        time.sleep(0.5)  # let it drain and start listening
        doc = add_document(conn, "Fresh", "Just written.")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if conn.execute("SELECT embedding_status FROM documents WHERE id = %s", [doc]).fetchone() == {
                "embedding_status": "indexed"
            }:
                break
            time.sleep(0.05)
        else:
            pytest.fail("not indexed within 20 s although the poll interval is 120 s: NOTIFY did not wake it")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


SLOW_WORKER = textwrap.dedent("""
    import signal, sys, threading, time
    from embeddings.model import FakeEmbedder
    from knowledge.ingest.worker import Worker

    class Slow(FakeEmbedder):
        def embed(self, texts):
            print("embedding", len(texts), flush=True)
            time.sleep(float(sys.argv[2]))
            return super().embed(texts)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = Worker(sys.argv[1], Slow(), lease_seconds=2, batch_records=int(sys.argv[3]))
    worker.run(stop=stop)
    print("stopped", worker.stats.indexed, flush=True)
""")


def _slow_worker(db_url: str, delay: float, batch: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WORKER, db_url, str(delay), str(batch)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("embedding")  # mid-batch from here on
    return proc


def test_kill_9_mid_batch_loses_nothing(conn: Conn, db_url: str) -> None:
    docs = [add_document(conn, f"Doc {i}", long_document(2, seed=f"k{i}")) for i in range(12)]
    proc = _slow_worker(db_url, delay=30, batch=6)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert statuses(conn)["processing"] == 6  # leased by the dead worker

    stats = Worker(db_url, FakeEmbedder(), poll_seconds=3).run(once=True)
    assert statuses(conn) == {"indexed": 12}
    assert stats.indexed == 12
    for doc in docs:
        got = passages(conn, doc)
        assert len(got) == 2 and all(p["embedded_hash"] == p["content_hash"] for p in got)


def test_sigterm_finishes_the_batch_and_exits(conn: Conn, db_url: str) -> None:
    for i in range(6):
        add_document(conn, f"Doc {i}", f"Text {i}.")
    proc = _slow_worker(db_url, delay=1.0, batch=3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.strip().splitlines()[-1] == "stopped 3"
    assert statuses(conn) == {"indexed": 3, "pending": 3}
    assert conn.execute("SELECT count(*) AS n FROM documents WHERE embedding_lease_owner IS NOT NULL").fetchone() == {
        "n": 0
    }


@pytest.mark.slow
def test_real_model_ranks_related_passages_first(conn: Conn, db_url: str, tmp_path: Any) -> None:
    """`import` a folder, then `worker --once` with the packaged all-MiniLM-L6-v2: every
    document is indexed, and a paraphrased question is nearest to the right document."""
    from embeddings.model import SentenceTransformerEmbedder

    folder = tmp_path / "kb"
    (folder / "Policies").mkdir(parents=True)
    (folder / "Policies" / "refunds.md").write_text(
        "---\ntags: [billing, boot:all]\n---\n# Refund policy\n\nCustomers on annual plans can ask for their "
        "money back within 30 days of renewal. After that we refund the unused months pro rata.\n"
    )
    (folder / "Policies" / "security.html").write_text(
        "<html><head><title>Password rules</title></head><body><h1>Password rules</h1><p>Agents never store "
        "credentials in documents. Rotate API keys every 90 days.</p></body></html>"
    )
    (folder / "garden.txt").write_text("Tomatoes need six hours of sun and regular watering in summer.\n")
    env = {"HQ_DATABASE_URL": db_url}
    imported = hq("import", str(folder), env=env, timeout=300)
    assert imported.returncode == 0, imported.stderr
    assert "3 created, 0 updated, 0 unchanged, 0 failed" in imported.stdout
    worked = hq("worker", "--once", env=env, timeout=300)
    assert worked.returncode == 0, worked.stderr
    assert worked.stdout.startswith("indexed 3, failed 0")

    assert statuses(conn) == {"indexed": 3}
    rows = conn.execute("SELECT title, tags, embedding_model, embedding_dims FROM documents ORDER BY title").fetchall()
    assert [r["title"] for r in rows] == ["Password rules", "Refund policy", "garden"]
    assert rows[1]["tags"] == ["billing", "boot:all"]
    assert all((r["embedding_model"], r["embedding_dims"]) == ("all-MiniLM-L6-v2", 384) for r in rows)
    folders = conn.execute("SELECT document_folder_path(folder_id) AS p FROM documents ORDER BY title").fetchall()
    assert [f["p"] for f in folders] == ["/kb/Policies", "/kb/Policies", "/kb"]

    from pgvector.psycopg import register_vector

    register_vector(conn)
    model = SentenceTransformerEmbedder()
    query = model.embed(["how do I get my money back on a yearly subscription?"])[0]
    ranked = conn.execute(
        "SELECT d.title, 1 - (e.embedding::vector(384) <=> %s) AS similarity FROM chunk_embeddings e "
        "JOIN knowledge_chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id "
        "WHERE e.model = 'all-MiniLM-L6-v2' ORDER BY e.embedding::vector(384) <=> %s",
        [query, query],
    ).fetchall()
    assert ranked[0]["title"] == "Refund policy"
    assert ranked[0]["similarity"] > ranked[-1]["similarity"] + 0.2
    assert float(np.linalg.norm(query)) == pytest.approx(1.0, abs=1e-4)
