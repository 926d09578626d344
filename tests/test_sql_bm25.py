"""The SQL keyword index (020): its statistics stay exact under concurrent writers, and its
scores are BM25 as pg_textsearch computes them."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from embeddings.model import FakeEmbedder
from knowledge.ingest.worker import Worker

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "knowledge-base"

# The statistics recounted from scratch, from the passages' text (not from search_tsv, which
# the triggers read): one row per (lexeme, passage) with its frequency and the passage length.
RECOUNT = """
    SELECT u.lexeme AS term, c.id AS chunk_id, coalesce(array_length(u.positions, 1), 1) AS tf,
           (sum(coalesce(array_length(u.positions, 1), 1)) OVER (PARTITION BY c.id))::integer AS dl
      FROM knowledge_chunks c, unnest(to_tsvector('english', c.indexed_text)) u
"""


def _texts(n: int, seed: int = 3) -> list[str]:
    """`n` paragraphs of the sample knowledge base (real prose, markdown included), shuffled."""
    paragraphs = [
        p.strip()
        for f in sorted(SAMPLES.rglob("*.md"))
        for p in f.read_text(encoding="utf-8").split("\n\n")
        if len(p.strip()) > 80
    ]
    return random.Random(seed).sample(paragraphs, n)


def _differences(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What the maintained statistics and a recount disagree on (all zero when exact)."""
    row = conn.execute(f"""
        WITH recount AS ({RECOUNT})
        SELECT (SELECT count(*) FROM (SELECT term, chunk_id, tf, dl FROM bm25_postings
                                      EXCEPT ALL SELECT * FROM recount) x) AS extra_postings,
               (SELECT count(*) FROM (SELECT * FROM recount
                                      EXCEPT ALL SELECT term, chunk_id, tf, dl FROM bm25_postings) x)
                 AS missing_postings,
               (SELECT coalesce(sum(passages), 0) FROM bm25_corpus) - (SELECT count(*) FROM knowledge_chunks)
                 AS passages_off,
               (SELECT coalesce(sum(total_length), 0) FROM bm25_corpus)
                 - (SELECT coalesce(sum(dl), 0) FROM (SELECT DISTINCT chunk_id, dl FROM recount) d) AS length_off
    """).fetchone()
    assert row is not None
    return dict(row)


def test_statistics_stay_exact_under_500_edits_by_4_concurrent_writers(db_url: str, conn: Any) -> None:
    """4 writers create, edit and delete documents (and rewrite passages' text directly)
    while 2 workers index them; then the statistics equal a recount from scratch."""
    texts = _texts(200)
    edits_per_writer = 125
    done = threading.Event()
    errors: list[BaseException] = []
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def writer(seed: int) -> None:
        pick = random.Random(seed)
        mine: list[Any] = []
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                for _ in range(edits_per_writer):
                    op = pick.choices(["create", "edit", "delete", "rewrite"], [4, 3, 2, 1])[0]
                    if op != "create" and not mine:
                        op = "create"
                    try:
                        if op == "create":
                            row = c.execute(
                                "INSERT INTO documents (title, content_text) VALUES (%s, %s) RETURNING id",
                                [f"w{seed} doc {len(mine)}", "\n\n".join(pick.sample(texts, 2))],
                            ).fetchone()
                            mine.append(row[0])  # type: ignore[index]
                        elif op == "edit":
                            c.execute(
                                "UPDATE documents SET content_text = %s WHERE id = %s",
                                ["\n\n".join(pick.sample(texts, pick.randint(1, 3))), pick.choice(mine)],
                            )
                        elif op == "delete":
                            c.execute("DELETE FROM documents WHERE id = %s", [mine.pop(pick.randrange(len(mine)))])
                        else:  # a passage's text rewritten in place: the UPDATE trigger's path
                            c.execute(
                                "UPDATE knowledge_chunks SET indexed_text = %s"
                                " WHERE id = (SELECT id FROM knowledge_chunks WHERE document_id = ANY(%s)"
                                " ORDER BY random() LIMIT 1)",
                                [pick.choice(texts), mine],
                            )
                    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                        op = f"{op} (conflict, rolled back)"
                    with lock:
                        counts[op] += 1
                    time.sleep(0.005)  # spread the edits over the workers' batches
        except BaseException as e:
            errors.append(e)

    def indexer(name: str) -> None:
        try:
            while not done.is_set():
                stats = Worker(db_url, FakeEmbedder(), worker_id=name, poll_seconds=0.05).run(once=True)
                with lock:
                    counts["indexed while writing"] += stats.indexed
        except BaseException as e:
            errors.append(e)

    writers = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    workers = [threading.Thread(target=indexer, args=(f"bm25-test-{i}",)) for i in range(2)]
    for t in writers + workers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in workers:
        t.join()
    assert not errors, errors
    Worker(db_url, FakeEmbedder()).run(once=True)  # what is left in the queue

    assert sum(n for op, n in counts.items() if op != "indexed while writing") == 4 * edits_per_writer
    assert counts["indexed while writing"] > 50, counts
    assert counts["create"] > 100 and counts["edit"] > 50 and counts["delete"] > 30 and counts["rewrite"] > 10, counts
    stats = conn.execute(
        "SELECT count(*) AS passages, (SELECT count(*) FROM bm25_postings) AS postings,"
        " (SELECT count(*) FROM bm25_corpus) AS slots FROM knowledge_chunks"
    ).fetchone()
    assert stats["passages"] > 100 and stats["postings"] > 3_000, stats
    assert stats["slots"] > 1, stats  # the writers really added to different slots
    print(dict(counts), stats)
    assert _differences(conn) == {"extra_postings": 0, "missing_postings": 0, "passages_off": 0, "length_off": 0}
    # Deleting everything leaves nothing behind.
    conn.execute("DELETE FROM documents")
    assert conn.execute("SELECT count(*) AS n FROM bm25_postings").fetchone()["n"] == 0
    assert conn.execute("SELECT sum(passages) AS n, sum(total_length) AS len FROM bm25_corpus").fetchone() == {
        "n": 0,
        "len": 0,
    }


def test_the_differences_check_sees_a_wrong_statistic(db_url: str, conn: Any) -> None:
    """The recount comparison above can fail: one changed posting or total shows."""
    conn.execute(
        "INSERT INTO documents (title, content_text) VALUES ('Tides', 'The moon pulls the tides twice a day.')"
    )
    Worker(db_url, FakeEmbedder()).run(once=True)
    assert set(_differences(conn).values()) == {0}
    conn.execute("UPDATE bm25_postings SET tf = tf + 1 WHERE term = 'moon'")
    conn.execute("UPDATE bm25_corpus SET passages = passages + 1 WHERE slot = (SELECT min(slot) FROM bm25_corpus)")
    assert _differences(conn) == {"extra_postings": 1, "missing_postings": 1, "passages_off": 1, "length_off": 0}
    # hq_sql_bm25_rebuild recounts from the passages.
    conn.execute("SELECT hq_sql_bm25_rebuild()")
    assert set(_differences(conn).values()) == {0}


def test_truncate_and_rebuild_keep_the_statistics(db_url: str, conn: Any) -> None:
    for i, text in enumerate(_texts(5)):
        conn.execute("INSERT INTO documents (title, content_text) VALUES (%s, %s)", [f"doc {i}", text])
    Worker(db_url, FakeEmbedder()).run(once=True)
    before = conn.execute("SELECT count(*) AS n FROM bm25_postings").fetchone()["n"]
    assert before > 100
    assert conn.execute("SELECT hq_sql_bm25_rebuild() AS n").fetchone()["n"] == before
    conn.execute("TRUNCATE knowledge_chunks CASCADE")
    assert conn.execute("SELECT count(*) AS n FROM bm25_postings").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM bm25_corpus").fetchone()["n"] == 0


def test_scores_are_bm25_as_pg_textsearch_defines_it(db_url: str, conn: Any) -> None:
    """hq_sql_bm25_top's scores equal BM25 computed here from the recount: IDF
    ln(1 + (N - df + 0.5) / (df + 0.5)), k1 1.2, b 0.75, a repeated query lexeme counted twice."""
    for i, text in enumerate(_texts(40, seed=5)):
        conn.execute("INSERT INTO documents (title, content_text) VALUES (%s, %s)", [f"doc {i}", text])
    Worker(db_url, FakeEmbedder()).run(once=True)
    postings = conn.execute(RECOUNT).fetchall()
    lengths = {p["chunk_id"]: p["dl"] for p in postings}
    n, avgdl = len(lengths), sum(lengths.values()) / len(lengths)
    n += conn.execute("SELECT count(*) AS n FROM knowledge_chunks").fetchone()["n"] - len(lengths)
    by_term: dict[str, dict[int, int]] = {}
    for p in postings:
        by_term.setdefault(p["term"], {})[p["chunk_id"]] = p["tf"]
    for query in ("refund for an annual plan", "discount discount approval by the sales lead", "escalation"):
        qtf = Counter(
            r["lexeme"]
            for r in conn.execute(
                "SELECT u.lexeme FROM unnest(to_tsvector('english', %s)) u,"
                " generate_series(1, array_length(u.positions, 1))",
                [query],
            ).fetchall()
        )
        expected: dict[int, float] = {}
        for term, count in qtf.items():
            docs = by_term.get(term, {})
            idf = math.log(1 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
            for chunk_id, tf in docs.items():
                norm = tf + 1.2 * (1 - 0.75 + 0.75 * lengths[chunk_id] / avgdl)
                expected[chunk_id] = expected.get(chunk_id, 0.0) + count * idf * tf * 2.2 / norm
        got = {r["id"]: r["score"] for r in conn.execute("SELECT id, score FROM hq_sql_bm25_top(%s, 1000)", [query])}
        assert got.keys() == expected.keys(), query
        for chunk_id, score in expected.items():
            assert got[chunk_id] == pytest.approx(score, rel=1e-9), (query, chunk_id)
        ranked = [r["id"] for r in conn.execute("SELECT id FROM hq_sql_bm25_top(%s, 5)", [query])]
        assert ranked == sorted(expected, key=lambda c: (-expected[c], c))[:5]
