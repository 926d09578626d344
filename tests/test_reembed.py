"""Re-embed jobs and model switches against a real database, with deterministic fake models
of two dimensions (fake-hash-384 active, fake-hash-256 built beside it)."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from embeddings.model import FakeEmbedder, Vectors
from embeddings.registry import resolve_model
from knowledge.api import create_app
from knowledge.errors import Conflict
from knowledge.ingest.embedding_models import activate_model, drop_model, list_models
from knowledge.ingest.reembed_jobs import Selection, get_job, start_job
from knowledge.ingest.reembedder import ReembedRunner
from knowledge.ingest.worker import Worker
from knowledge.search.setup import forget_setup

from .apiclient import local_client
from .commands import environment, hq

Conn = psycopg.Connection[dict[str, Any]]

ROOT = Path(__file__).resolve().parent.parent
# SciFact from the shared datasets next to the checkout when it is there; otherwise (a clone
# elsewhere) deterministic text from the sample knowledge base's vocabulary.
_SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
SCIFACT = _SCIFACT if (_SCIFACT / "corpus.jsonl").is_file() else None
OLD, NEW = "fake-hash-384", "fake-hash-256"


def _vocabulary() -> list[str]:
    words = {
        w.lower()
        for f in sorted((ROOT / "samples" / "knowledge-base").rglob("*.md"))
        for w in f.read_text().split()
        if w.isalpha() and len(w) > 3
    }
    return sorted(words)


def scifact_texts(n: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if SCIFACT is None:
        rng, words = np.random.default_rng(1), _vocabulary()
        for i in range(n):
            picked = rng.choice(words, 110)
            out.append((f"Note {i}: {' '.join(picked[:5])}", " ".join(picked)))
        return out
    with (SCIFACT / "corpus.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            out.append((row["title"][:120], " ".join(row["text"].split()[:110])))
            if len(out) == n:
                break
    return out


def scifact_queries(n: int) -> list[str]:
    if SCIFACT is None:
        rng, words = np.random.default_rng(2), _vocabulary()
        return [" ".join(rng.choice(words, 8)) for _ in range(n)]
    with (SCIFACT / "queries.jsonl").open() as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n), strict=False)]


def build_base(conn: Conn, url: str, docs: int, sections: int = 10) -> int:
    """`docs` documents of `sections` SciFact abstracts each (a passage per section), indexed
    with fake-hash-384 as the active model. Returns the number of passages."""
    texts = scifact_texts(docs * sections)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO documents (title, content_text, tags) VALUES (%s, %s, %s)",
            [
                (
                    f"Study {d}",
                    "\n".join(
                        f"## {texts[d * sections + s][0]}\n\n{texts[d * sections + s][1]}\n" for s in range(sections)
                    ),
                    ["even" if d % 2 == 0 else "odd"],
                )
                for d in range(docs)
            ],
        )
    Worker(url, FakeEmbedder(OLD)).run(once=True)
    activate_model(conn, OLD)
    forget_setup()
    count = conn.execute("SELECT count(*) AS n FROM knowledge_chunks").fetchone()
    assert count is not None
    return int(count["n"])


class SlowFake(FakeEmbedder):
    """fake-hash-256 taking `delay` seconds a batch, so a switch takes long enough to search across."""

    def __init__(self, delay: float) -> None:
        super().__init__(name=NEW, dims=256)
        self.delay = delay

    def embed(self, texts: Sequence[str]) -> Vectors:
        time.sleep(self.delay)
        return super().embed(texts)


def cosine_scores(conn: Conn, model: str, query: str, item: str) -> list[float]:
    """Cosine of `query` (embedded with fake `model`) to every passage of `item` under `model`."""
    dims = int(model.rsplit("-", 1)[1])
    q = FakeEmbedder(name=model, dims=dims).embed([query])[0]
    rows = conn.execute(
        "SELECT e.embedding::text AS v FROM chunk_embeddings e JOIN knowledge_chunks c ON c.id = e.chunk_id"
        " WHERE e.model = %s AND c.document_id = %s",
        [model, item],
    ).fetchall()
    return [float(np.dot(q, np.array(json.loads(r["v"]), dtype=np.float32))) for r in rows]


@pytest.mark.slow
def test_model_switch_while_searching(conn: Conn, db_url: str) -> None:
    """Must-show 1: 200 searches spread across a switch on a 2,000-passage base all succeed,
    each ranking is one model's (its semantic scores are that model's cosines), and every
    search that starts after the switch uses the new model."""
    assert build_base(conn, db_url, docs=200) == 2000
    queries = scifact_queries(200)
    spec = resolve_model(NEW)
    job, created = start_job(conn, spec, Selection(), activate=True)
    assert created and job.total == 2000
    runner = ReembedRunner(db_url, job.id, SlowFake(delay=0.12), batch=64)  # 32 rounds, ~4 s
    finished: list[float] = []

    def switch() -> None:
        runner.run()
        finished.append(time.monotonic())

    results: list[tuple[float, str, dict[str, Any]]] = []
    with local_client(create_app(db_url)) as client:
        thread = threading.Thread(target=switch)
        for n, query in enumerate(queries):
            if n == 20:
                thread.start()
            if n == len(queries) - 20:  # the last 20 after the switch, however long it takes here
                thread.join()
            started = time.monotonic()
            response = client.get("/search", params={"q": query, "limit": 5, "explain": "true"})
            assert response.status_code == 200, response.text
            results.append((started, query, response.json()))
            time.sleep(0.03)
        thread.join()
    assert runner.stats.activated and finished
    by_model = collections.Counter(body["model"] for _, _, body in results)
    print(
        f"searches by model: {dict(by_model)}; started after the switch: "
        f"{sum(1 for started, _, _ in results if started > finished[0])}"
    )
    assert set(by_model) == {OLD, NEW} and min(by_model.values()) >= 20, by_model
    for started, query, body in results:
        if started > finished[0]:
            assert body["model"] == NEW, "a search after the switch used the old model"
        for hit in body["hits"]:
            score = hit["explain"]["semantic"]["score"]
            if score is None:
                continue
            own = cosine_scores(conn, body["model"], query, hit["id"])
            assert min(abs(score - s) for s in own) < 1e-4, (body["model"], hit["title"])
    # Once switched, old results never come back.
    switched = [body["model"] for _, _, body in sorted(results)]
    assert switched == sorted(switched, key=lambda m: m == NEW)
    assert [m.name for m in list_models(conn) if m.is_active] == [NEW]


KILLED_RUNNER = textwrap.dedent("""
    import hashlib, sys, time, uuid
    from embeddings.model import FakeEmbedder
    from knowledge.ingest.reembedder import ReembedRunner

    url, job_id, log = sys.argv[1], uuid.UUID(sys.argv[2]), sys.argv[3]

    class Logged(FakeEmbedder):
        def embed(self, texts):
            with open(log, "a") as f:
                f.write("start\\n")
            time.sleep(0.2)  # the test kills the process here
            vectors = super().embed(texts)
            with open(log, "a") as f:
                f.write("".join("done " + hashlib.sha1(t.encode()).hexdigest() + "\\n" for t in texts))
            return vectors

    ReembedRunner(url, job_id, Logged(name="fake-hash-256", dims=256), batch=40).run()
""")


@pytest.fixture
def write_counter(conn: Conn) -> Iterator[None]:
    """Counts every write of a fake-hash-256 vector, per passage (a trigger in the test's database)."""
    conn.execute("CREATE TABLE vector_writes (chunk_id bigint, at timestamptz DEFAULT clock_timestamp())")
    conn.execute("""CREATE FUNCTION count_vector_write() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN IF NEW.model = 'fake-hash-256' THEN INSERT INTO vector_writes (chunk_id)
                    VALUES (NEW.chunk_id); END IF; RETURN NEW; END $$""")
    conn.execute(
        "CREATE TRIGGER count_vector_write AFTER INSERT OR UPDATE ON chunk_embeddings"
        " FOR EACH ROW EXECUTE FUNCTION count_vector_write()"
    )
    yield


def wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_killed_at_half_then_resumed_embeds_each_passage_once(
    conn: Conn, db_url: str, tmp_path: Path, write_counter: None
) -> None:
    """Must-show 2: kill -9 at about 50%, run again: every passage embedded exactly once
    (completed embed calls counted by the model, vector writes by a trigger)."""
    total = build_base(conn, db_url, docs=40)
    job, _ = start_job(conn, resolve_model(NEW), Selection(), activate=True)
    script, log = tmp_path / "runner.py", tmp_path / "embedded.log"
    script.write_text(KILLED_RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, str(script), db_url, str(job.id), str(log)], env=env)

    def half_done_and_embedding() -> bool:
        done = get_job(conn, job.id).embedded
        lines = log.read_text().splitlines() if log.exists() else []
        return done >= total // 2 and bool(lines) and lines[-1] == "start"

    wait_until(half_done_and_embedding)
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = get_job(conn, job.id)
    assert at_kill.status == "running" and total // 2 <= at_kill.embedded < total
    second = subprocess.run(
        [sys.executable, str(script), db_url, str(job.id), str(log)], env=env, timeout=120, check=False
    )
    assert second.returncode == 0
    final = get_job(conn, job.id)
    assert (final.status, final.embedded, final.skipped, final.failed) == ("completed", total, 0, 0)
    embedded = collections.Counter(line.split()[1] for line in log.read_text().split("\n") if line.startswith("done "))
    texts = [
        hashlib.sha1(r["t"].encode()).hexdigest()
        for r in conn.execute("SELECT indexed_text AS t FROM knowledge_chunks")
    ]
    assert len(set(texts)) == total
    assert sorted(embedded) == sorted(texts) and set(embedded.values()) == {1}
    writes = conn.execute("SELECT chunk_id, count(*) AS n FROM vector_writes GROUP BY chunk_id").fetchall()
    assert len(writes) == total and {w["n"] for w in writes} == {1}
    print(
        f"{total} passages; killed at {at_kill.embedded} embedded; embed calls completed per passage: "
        f"{dict(collections.Counter(embedded.values()))}; vector writes per passage: "
        f"{dict(collections.Counter(w['n'] for w in writes))}"
    )
    assert [m.name for m in list_models(conn) if m.is_active] == [NEW]


def test_cli_reembed_killed_and_run_again(conn: Conn, db_url: str, write_counter: None) -> None:
    """The command itself: kill -9 at about half, the same command again joins the job and
    finishes it; each passage's vector is written once; then search uses the new model."""
    total = build_base(conn, db_url, docs=100)
    env = {"HQ_DATABASE_URL": db_url}
    first = subprocess.Popen(
        [sys.executable, "-m", "knowledge", "reembed", "--model", NEW, "--batch", "5"],
        env=environment(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def half() -> bool:
        row = conn.execute("SELECT count(*) AS n FROM vector_writes").fetchone()
        return row is not None and row["n"] >= total // 2

    wait_until(half)
    first.send_signal(signal.SIGKILL)
    first.wait()
    written = conn.execute("SELECT count(*) AS n FROM vector_writes").fetchone()
    assert written is not None and written["n"] < total
    again = hq("reembed", "--model", NEW, env=env)
    assert again.returncode == 0, again.stderr
    assert "joined re-embed job" in again.stderr and "search now uses fake-hash-256" in again.stdout
    assert f"re-embedded {total - written['n']} passages" in again.stdout
    writes = conn.execute("SELECT count(*) AS n, count(DISTINCT chunk_id) AS d FROM vector_writes").fetchone()
    assert writes == {"n": total, "d": total}
    forget_setup()
    found = hq("search", "cerebral white matter diffusion", "--json", env=env)
    assert json.loads(found.stdout)["model"] == NEW


def test_two_runners_share_one_job(conn: Conn, db_url: str, write_counter: None) -> None:
    total = build_base(conn, db_url, docs=30)
    job, _ = start_job(conn, resolve_model(NEW), Selection(), activate=False)
    runners = [ReembedRunner(db_url, job.id, SlowFake(delay=0.02), batch=10) for _ in range(2)]
    threads = [threading.Thread(target=r.run) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.stats.embedded > 0 for r in runners)
    assert sum(r.stats.embedded for r in runners) == total
    assert conn.execute("SELECT count(*) AS n FROM vector_writes").fetchone() == {"n": total}
    final = get_job(conn, job.id)
    assert final.status == "completed" and final.embedded == total
    # Without activate the old model keeps serving.
    assert [m.name for m in list_models(conn) if m.is_active] == [OLD]


def test_stale_and_selected_passages(conn: Conn, db_url: str) -> None:
    total = build_base(conn, db_url, docs=20)
    old = resolve_model(OLD)
    # Nothing is stale right after indexing.
    job, _ = start_job(conn, old, Selection(stale=True), activate=False)
    assert job.total == 0
    ReembedRunner(db_url, job.id, FakeEmbedder(OLD)).run()
    # Two passages lose their vector, one gets a vector of another text: three are stale.
    ids = [r["id"] for r in conn.execute("SELECT id FROM knowledge_chunks ORDER BY id LIMIT 3")]
    conn.execute("DELETE FROM chunk_embeddings WHERE chunk_id = ANY(%s) AND model = %s", [ids[:2], OLD])
    conn.execute("UPDATE chunk_embeddings SET content_hash = 'outdated' WHERE chunk_id = %s", [ids[2]])
    job, _ = start_job(conn, old, Selection(stale=True), activate=False)
    assert job.total == 3
    embedder = FakeEmbedder(OLD)
    stats = ReembedRunner(db_url, job.id, embedder).run()
    assert stats.embedded == 3 and len(embedder.calls) == 3
    # Everything with the active model, but only the 'even' documents' passages.
    job, _ = start_job(conn, old, Selection(tags=("even",)), activate=False)
    assert job.total == total // 2
    # Updated since: none in the future.
    future = Selection(since=datetime(2100, 1, 1, tzinfo=UTC))
    assert start_job(conn, old, future, activate=False)[0].total == 0


def test_worker_follows_the_switch(conn: Conn, db_url: str) -> None:
    """A worker of the active model (no pinned embedder) embeds new documents with the new
    model after a switch, so they stay findable by meaning."""
    build_base(conn, db_url, docs=5)
    job, _ = start_job(conn, resolve_model(NEW), Selection(), activate=True)
    assert ReembedRunner(db_url, job.id, FakeEmbedder(NEW, dims=256)).run().activated
    conn.execute("INSERT INTO documents (title, content_text) VALUES ('Late note', 'Arrived after the switch.')")
    stats = Worker(db_url, None).run(once=True)
    assert stats.indexed == 1
    models = {
        r["model"]
        for r in conn.execute(
            "SELECT e.model FROM chunk_embeddings e JOIN knowledge_chunks c ON c.id = e.chunk_id"
            " JOIN documents d ON d.id = c.document_id WHERE d.title = 'Late note'"
        )
    }
    assert models == {NEW}


def test_new_passages_during_a_build_are_covered(conn: Conn, db_url: str) -> None:
    """Passages added while a model is built (by the live worker, with the old model) are
    swept into the job before it switches."""
    total = build_base(conn, db_url, docs=10)
    job, _ = start_job(conn, resolve_model(NEW), Selection(), activate=True)
    conn.execute("INSERT INTO documents (title, content_text) VALUES ('Meanwhile', 'Written during the build.')")
    Worker(db_url, FakeEmbedder(OLD)).run(once=True)
    stats = ReembedRunner(db_url, job.id, FakeEmbedder(NEW, dims=256)).run()
    assert stats.activated and stats.embedded == total + 1
    assert list_models(conn, NEW)[0].complete


def test_activate_and_drop_refusals_keep_the_active_model(conn: Conn, db_url: str) -> None:
    build_base(conn, db_url, docs=3)
    job, _ = start_job(conn, resolve_model(NEW), Selection(), activate=False)
    with pytest.raises(Conflict, match=r"model 'fake-hash-256' has vectors for 0 of 30 passages"):
        activate_model(conn, NEW)
    with pytest.raises(Conflict, match="is being built by re-embed job"):
        drop_model(conn, NEW)
    with pytest.raises(Conflict, match="'fake-hash-384' is the active model"):
        drop_model(conn, OLD)
    assert [m.name for m in list_models(conn) if m.is_active] == [OLD]
    ReembedRunner(db_url, job.id, FakeEmbedder(NEW, dims=256)).run()
    activate_model(conn, NEW)
    index = list_models(conn, OLD)[0].index
    assert index is not None
    assert drop_model(conn, OLD) == 30
    assert list_models(conn, OLD) == [] and conn.execute("SELECT to_regclass(%s) AS i", [index]).fetchone() == {
        "i": None
    }


def fake_model_dir(root: Path, *, weights: bool) -> Path:
    """A directory that looks like a sentence-transformers model; with weights=False it has
    the configuration files only."""
    root.mkdir()
    (root / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384}))
    return root


@pytest.mark.slow
def test_bad_input_each_a_clear_error_and_search_keeps_serving(conn: Conn, db_url: str, tmp_path: Path) -> None:
    """Must-show 5, on the command line and over HTTP."""
    build_base(conn, db_url, docs=3)
    env = {"HQ_DATABASE_URL": db_url}
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    no_weights = fake_model_dir(tmp_path / "empty-model", weights=False)
    start_job(conn, resolve_model(NEW), Selection(), activate=False)  # a build that is not complete
    cases = [
        (["--model", "no-such-model"], "error: --model: unknown model 'no-such-model': expected all-MiniLM-L6-v2"),
        (["--model", str(tmp_path / "missing")], "error: --model: unknown model"),
        (["--model", str(not_a_model)], "is not a sentence-transformers model directory: it has no modules.json"),
        (["--model", str(not_a_model / "readme.txt")], "is a file: expected a sentence-transformers model directory"),
        (["--model", str(no_weights)], "error: --model: model empty-model"),
        (["--activate", NEW], "error: model 'fake-hash-256' has vectors for 0 of 30 passages"),
        (["--activate", "nope"], "error: model 'nope' is not registered"),
        (["--drop", OLD], "error: model 'fake-hash-384' is the active model"),
        (["--drop", "--status"], "error:"),
        (["--folder", "not-a-uuid"], "error: --folder: a folder id (UUID)"),
        (["--folder", str(uuid.uuid4())], "error: folder: no document or asset folder has id"),
        (["--since", "yesterday"], "error: --since: an ISO date"),
        (["--batch", "0"], "error: --batch: from 1 to 10000"),
        (["--activate", NEW, "--stale"], "error: --activate, --drop and --status each go alone"),
    ]
    for args, message in cases:
        result = hq("reembed", *args, env=env)
        assert result.returncode in (1, 2), (args, result.stdout)
        assert message in result.stderr, (args, result.stderr)
    assert "cannot be loaded" in hq("reembed", "--model", str(no_weights), env=env).stderr
    with local_client(create_app(db_url)) as client:
        for body, status, message in [
            ({"model": "no-such-model"}, 404, "model: 'no-such-model' is not a model name this service knows"),
            # a path is only a name over HTTP: nothing on the server's disk is looked at
            ({"model": str(not_a_model)}, 404, "is not a model name this service knows"),
            ({"model": str(no_weights)}, 404, "is not a model name this service knows"),
            ({"folder": str(uuid.uuid4())}, 404, "folder: no document or asset folder"),
        ]:
            response = client.post("/reembed", json=body)
            assert response.status_code == status and message in response.json()["detail"], response.text
        invalid = client.post("/reembed", json={"tags": [""], "activate": "sometimes"})
        assert invalid.status_code == 422
        assert {e["loc"][-1] for e in invalid.json()["detail"]} >= {0, "activate"}
        assert client.get("/reembed/not-a-uuid").status_code == 422
        missing = client.get(f"/reembed/{uuid.uuid4()}")
        assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
        found = client.get("/search", params={"q": "cerebral white matter", "mode": "semantic"})
        assert found.status_code == 200 and found.json()["model"] == OLD and found.json()["hits"]
    assert [m.name for m in list_models(conn) if m.is_active] == [OLD]
    assert list_models(conn, OLD)[0].complete


def test_api_starts_a_job_and_reports_progress(conn: Conn, db_url: str) -> None:
    total = build_base(conn, db_url, docs=10)
    with local_client(create_app(db_url)) as client:
        plan = client.post("/reembed", json={"model": NEW, "dry_run": True})
        assert plan.status_code == 200 and plan.json() == {"model": NEW, "passages": total}
        assert list_models(conn, NEW) == []  # a dry run registers nothing
        started = client.post("/reembed", json={"model": NEW})
        assert started.status_code == 202, started.text
        job_url = started.headers["location"]
        wait_until(lambda: client.get(job_url).json()["status"] != "running")
        body = client.get(job_url).json()
        assert (body["status"], body["done"], body["total"], body["progress"]) == ("completed", total, total, 1.0)
        models = client.get("/models").json()
        assert [(m["name"], m["is_active"], m["complete"]) for m in models] == [
            (NEW, True, True),
            ("all-MiniLM-L6-v2", False, False),
            (OLD, False, True),
        ]


def test_dry_run_counts_and_estimates_without_changing_anything(conn: Conn, db_url: str) -> None:
    total = build_base(conn, db_url, docs=4)
    before = conn.execute("SELECT count(*) AS n FROM chunk_embeddings").fetchone()
    result = hq("reembed", "--model", NEW, "--dry-run", env={"HQ_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"would re-embed {total} passages with {NEW}: about ")
    assert "passages/s (timed on" in result.stdout
    assert conn.execute("SELECT count(*) AS n FROM chunk_embeddings").fetchone() == before
    assert list_models(conn, NEW) == [] and conn.execute("SELECT count(*) AS n FROM reembed_jobs").fetchone() == {
        "n": 0
    }


def test_progress_lines_off_a_terminal(conn: Conn, db_url: str) -> None:
    build_base(conn, db_url, docs=20)
    result = hq("reembed", env={"HQ_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert "started re-embed job" in result.stderr and "re-embedding: 200 passages in" in result.stderr
    assert "re-embedded 200 passages in" in result.stdout


@pytest.mark.slow
def test_alongside_the_live_worker_and_edits(conn: Conn, db_url: str) -> None:
    """Edits keep arriving and a live worker (following the active model) keeps indexing them
    while a model is built and switched: nothing fails, the job completes, and in the end
    every passage has a vector of the active model."""
    build_base(conn, db_url, docs=60)
    job, _ = start_job(conn, resolve_model(NEW), Selection(), activate=True)
    stop = threading.Event()
    worker = Worker(db_url, None, poll_seconds=0.2)
    worker_thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    worker_thread.start()
    runner = ReembedRunner(db_url, job.id, SlowFake(delay=0.05), batch=20)
    runner_thread = threading.Thread(target=runner.run)
    runner_thread.start()
    docs = [r["id"] for r in conn.execute("SELECT id FROM documents ORDER BY title")]
    edits = 0
    while runner_thread.is_alive() or edits < 30:
        doc = docs[edits % len(docs)]
        conn.execute(
            "UPDATE documents SET content_text = content_text || %s WHERE id = %s",
            [f"\n\n## Addendum {edits}\n\nA late paragraph about outcome {edits}.\n", doc],
        )
        edits += 1
        time.sleep(0.05)
    runner_thread.join()
    wait_until(
        lambda: (
            conn.execute("SELECT count(*) AS n FROM documents WHERE embedding_status <> 'indexed'").fetchone()
            == {"n": 0}
        )
    )
    stop.set()
    worker_thread.join()
    assert runner.stats.activated and get_job(conn, job.id).status == "completed"
    assert worker.stats.failed == 0 and worker.stats.indexed >= edits // 2
    assert list_models(conn, NEW)[0].is_active and list_models(conn, NEW)[0].complete


def test_ef_search_follows_the_size_of_the_index(conn: Conn, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from knowledge.db.pools import configure_for_search
    from knowledge.ingest import embedding_models as models
    from knowledge.search import SearchQuery
    from knowledge.search.setup import search_active

    build_base(conn, db_url, docs=10)  # 100 vectors
    conn.execute("ANALYZE chunk_embeddings")
    monkeypatch.setattr(models, "EF_SEARCH_BY_SIZE", ((50, 40), (500, 123), (None, 400)))
    assert [models.ef_search_for(n) for n in (10, 50, 51, 500, 10**6)] == [40, 40, 123, 123, 400]
    with psycopg.connect(db_url, autocommit=True) as search_conn:
        configure_for_search(search_conn)
        forget_setup()
        search_active(search_conn, SearchQuery(q="white matter", mode="keyword"))
        assert search_conn.execute("SHOW hnsw.ef_search").fetchone() == ("100",)  # keyword: untouched
        search_active(search_conn, SearchQuery(q="white matter"))
        assert search_conn.execute("SHOW hnsw.ef_search").fetchone() == ("123",)
