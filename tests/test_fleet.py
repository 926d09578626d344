"""A fleet on one primary (the session's embedded server) and one streaming standby of it: two
`hq-knowledge serve --no-worker` reading from the standby, two `hq-knowledge worker` embedding
on the primary. Documents written through one API are indexed once each and searched through
the other with the primary's results; the standby killed during a stream of searches through
both costs no 5xx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from embeddings.model import FakeEmbedder
from knowledge.db.keyword_index import configure_keyword_index
from knowledge.db.pools import configure_for_search
from knowledge.ingest.worker import register_embedder
from knowledge.search import SearchQuery
from knowledge.search.setup import forget_setup, search_active

from .conftest import Server
from .fleet import Processes, Standby, running_standby

pytestmark = pytest.mark.slow

TOPICS = [
    "refunds",
    "invoices",
    "onboarding",
    "escalations",
    "pricing",
    "security reviews",
    "hiring",
    "on-call handoffs",
    "travel expenses",
    "vendor contracts",
    "release notes",
    "data retention",
]
QUERIES = [
    "how are refunds for annual plans handled",
    "who approves vendor contracts",
    "data retention for customer records",
    "on-call handoffs checklist",
    "pricing discounts",
]


def _document(n: int) -> dict[str, Any]:
    topic = TOPICS[n % len(TOPICS)]
    text = (
        f"# {topic.title()} {n}\n\nThis note {n} explains {topic} for team {n % 5}: who owns it, "
        f"what is checked first and where the record of each decision is kept.\n\n"
        f"## Exceptions {n}\n\nAn exception to the {topic} rule {n} needs a second approver and a "
        f"written reason; reviews happen every {n % 4 + 1} weeks.\n"
    )
    return {"title": f"{topic.title()} note {n}", "content_text": text, "tags": [f"fleet-{n % 3}"]}


@pytest.fixture(scope="module")
def standby(pg_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standby]:
    with running_standby(pg_server.embedded, tmp_path_factory) as s:
        yield s


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


def _wait(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def _hits(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(str(h["id"]), round(float(h["score"]), 6)) for h in body["hits"]]


def test_two_apis_on_a_standby_and_two_workers_on_the_primary(
    conn: Any, db_url: str, standby: Standby, fleet: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbname = str(conninfo_to_dict(db_url)["dbname"])
    register_embedder(conn, FakeEmbedder())
    with conn.transaction():  # the APIs embed queries with the model the workers embed passages with
        conn.execute("UPDATE embedding_models SET is_active = (name = 'fake-hash-384')")
    standby.wait_until_replayed(db_url, dbname)
    env = {"HQ_DATABASE_URL": db_url, "HQ_EMBEDDER": "fake"}
    for n in (1, 2):
        fleet.start(f"worker{n}", ["worker"], env)
    apis = [fleet.serve(f"api{n}", {**env, "HQ_READ_DATABASE_URL": standby.url(dbname)}) for n in (1, 2)]
    for base in apis:
        _wait("the standby in use", lambda b=base: httpx.get(f"{b}/readyz").json()["replicas"][0]["state"] == "ok")

    # Written through API 1 (on the primary), indexed once each by the two workers.
    with httpx.Client(base_url=apis[0], timeout=30) as api1:
        for n in range(24):
            r = api1.post("/documents", json=_document(n))
            assert r.status_code == 201 and r.headers["HQ-Write-LSN"], r.text
    _wait(
        "every document indexed",
        lambda: (
            conn.execute("SELECT count(*) FILTER (WHERE embedding_status = 'indexed') AS n FROM documents").fetchone()[
                "n"
            ]
            == 24
        ),
    )
    standby.wait_until_replayed(db_url, dbname)

    # Searched through API 2 (on the standby): the primary's answers.
    configure_keyword_index("sql")  # the standby's keyword path, here on the primary
    forget_setup()
    try:
        with psycopg.connect(db_url, autocommit=True) as primary, httpx.Client(base_url=apis[1], timeout=30) as api2:
            configure_for_search(primary)
            for q in QUERIES:
                for mode in ("hybrid", "semantic", "keyword"):
                    body = api2.get("/search", params={"q": q, "mode": mode}).json()
                    expected = search_active(primary, SearchQuery(q=q, mode=mode).validated()).as_dict()
                    assert body["keyword_path"] == expected["keyword_path"] == "sql-bm25"
                    assert body["hits"] and _hits(body) == _hits(expected), (q, mode)
    finally:
        configure_keyword_index("auto")
        forget_setup()

    # Each passage embedded exactly once, and no document claimed twice.
    assert (
        conn.execute(
            "SELECT count(*) AS n FROM knowledge_chunks c WHERE (SELECT count(*) FROM chunk_embeddings e"
            " WHERE e.chunk_id = c.id AND e.model = 'fake-hash-384') <> 1"
        ).fetchone()["n"]
        == 0
    )
    passages = conn.execute("SELECT count(*) AS n FROM knowledge_chunks").fetchone()["n"]
    assert passages >= 48 and conn.execute("SELECT count(*) AS n FROM chunk_embeddings").fetchone()["n"] == passages
    assert conn.execute("SELECT array_agg(DISTINCT embedding_attempts) AS a FROM documents").fetchone()["a"] == [1]

    # The standby killed during a stream of searches through both APIs: no 5xx, answers go on.
    answers: list[tuple[int, float, int, str]] = []
    killed_at: list[float] = []
    stop = threading.Event()

    def search(api: int) -> None:
        with httpx.Client(base_url=apis[api], timeout=30) as client:
            n = 0
            while not stop.is_set():
                r = client.get("/search", params={"q": QUERIES[n % len(QUERIES)]})
                path = r.json().get("keyword_path", "") if r.status_code == 200 else r.text[:200]
                answers.append((api, time.monotonic(), r.status_code, path))
                n += 1

    threads = [threading.Thread(target=search, args=(api,)) for api in (0, 1, 0, 1)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    killed_at.append(time.monotonic())
    standby.stop("immediate")
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    after_kill = [a for a in answers if a[1] > killed_at[0]]
    print(
        f"\n{len(answers)} searches through 2 APIs, {len(after_kill)} after the standby was killed; "
        f"{sum(a[2] != 200 for a in answers)} not 200"
    )
    assert [a for a in answers if a[2] != 200] == []
    for api in (0, 1):
        before = [a[3] for a in answers if a[0] == api and a[1] < killed_at[0]]
        after = [a[3] for a in answers if a[0] == api and a[1] > killed_at[0] + 1.0]
        assert before and set(before) == {"sql-bm25"}, before  # the standby answered
        assert after and set(after) == {"bm25"}, after  # then the primary
        ready = httpx.get(f"{apis[api]}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["degraded"]
        assert ready.json()["replicas"][0]["state"] == "down"

    codes = fleet.stop_all()
    assert set(codes.values()) == {0}, codes
    stats = [line for n in (1, 2) for line in fleet.log(f"worker{n}").splitlines() if line.startswith("indexed ")]
    assert len(stats) == 2, stats
    indexed = sum(int(line.split()[1].rstrip(",")) for line in stats)
    assert indexed == 24, stats
