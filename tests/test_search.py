"""GET /search against a real database, with the deterministic fake embedder as the active model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from embeddings.model import FakeEmbedder
from knowledge.api import create_app
from knowledge.config import Settings
from knowledge.db.embedded import EmbeddedPostgres
from knowledge.db.migrations import migrate
from knowledge.db.pools import configure_for_search
from knowledge.errors import InvalidInput
from knowledge.ingest import embedding_models as models
from knowledge.ingest.worker import Worker
from knowledge.search import SearchQuery
from knowledge.search.setup import forget_setup, search_active

from .apiclient import local_client
from .factories import add_asset, add_document, add_folder, index_with_fake

Conn = psycopg.Connection[dict[str, Any]]

DOCS = [
    ("Refund policy", "# Refunds\n\nAnnual plans are refunded pro rata within 30 days of renewal.", ["billing"]),
    (
        "Discount approvals",
        "# Discounts\n\nA sales rep may give up to 10% without approval; more needs the CFO.",
        ["sales", "pricing"],
    ),
    ("On-call handoff", "# Handoff\n\nThe outgoing engineer writes open incidents in the channel.", ["engineering"]),
    ("Tomato care", "# Garden\n\nTomatoes need six hours of sun and regular watering.", ["garden"]),
]


@pytest.fixture
def client(conn: Conn, db_url: str) -> Iterator[TestClient]:
    for title, text, tags in DOCS:
        add_document(conn, title, text, tags)
    index_with_fake(conn, db_url)
    with local_client(create_app(db_url)) as c:
        yield c


def titles(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [h["title"] for h in response.json()["hits"]]


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "keyword"])
def test_each_mode_finds_the_document(client: TestClient, mode: str) -> None:
    got = titles(
        client.get("/search", params={"q": "how much discount can a sales rep give without approval", "mode": mode})
    )
    assert got[0] == "Discount approvals"


def test_hit_shape_explain_and_highlight(client: TestClient) -> None:
    body = client.get("/search", params={"q": "refunded annual plans", "explain": "true", "limit": 2}).json()
    hit = body["hits"][0]
    assert hit["title"] == "Refund policy" and hit["kind"] == "document" and hit["folder_path"] == "/"
    assert hit["tags"] == ["billing"] and hit["passages"][0]["heading_path"] == ["Refunds"]
    assert "<mark>refunded</mark>" in hit["snippet"] and "<mark>Annual</mark>" in hit["snippet"]
    assert hit["explain"]["semantic"]["rank"] == 1 and hit["explain"]["keyword"]["rank"] == 1
    assert hit["explain"]["keyword"]["score"] > 0
    assert body["mode"] == "hybrid" and body["keyword_path"] == "bm25" and body["model"] == "fake-hash-384"
    assert "explain" not in client.get("/search", params={"q": "refund"}).json()["hits"][0]


def test_html_in_documents_and_queries_comes_back_escaped(conn: Conn, db_url: str, client: TestClient) -> None:
    add_document(conn, "Unsafe <b>title</b>", "# Note\n\n<script>alert('x')</script> quarterly refund review", ["x"])
    Worker(db_url, FakeEmbedder()).run(once=True)
    body = client.get("/search", params={"q": "<script>quarterly review", "mode": "keyword"}).json()
    hit = body["hits"][0]
    assert hit["title"] == "Unsafe <b>title</b>"  # JSON text: the client renders it as text
    assert "<mark>quarterly</mark>" in hit["snippet"]
    without_marks = hit["snippet"].replace("<mark>", "").replace("</mark>", "")
    assert "<" not in without_marks and ">" not in without_marks


def test_filters(conn: Conn, db_url: str, client: TestClient) -> None:
    folder = conn.execute("INSERT INTO document_folders (name) VALUES ('Ops') RETURNING id").fetchone()["id"]  # type: ignore[index]
    sub = conn.execute(
        "INSERT INTO document_folders (name, parent_id) VALUES ('Sales', %s) RETURNING id", [folder]
    ).fetchone()["id"]  # type: ignore[index]
    add_document(
        conn,
        "Discount ladder (archived)",
        "Discount approval ladder for sales reps.",
        ["sales"],
        archived_at="2030-01-01",
    )
    add_document(
        conn,
        "Discount FAQ",
        "Questions about discount approval for sales reps.",
        ["sales", "faq"],
        folder_id=sub,
        pinned=True,
    )
    conn.execute(
        "INSERT INTO assets (name, asset_type, content_text, tags) VALUES "
        "('Discount calculator', 'spreadsheet', 'discount approval sales rep percent', '{sales}')"
    )
    Worker(db_url, FakeEmbedder()).run(once=True)
    q = "discount approval sales rep"

    def get(**params: Any) -> list[str]:
        return titles(client.get("/search", params={"q": q, **params}))

    assert "Discount ladder (archived)" not in get()
    assert get(archived="true") == ["Discount ladder (archived)"]
    assert set(get(folder=str(folder))) == {"Discount FAQ"}  # the subtree counts
    assert set(get(tags_all=["sales", "faq"])) == {"Discount FAQ"}
    assert set(get(tags_any=["faq", "pricing"])) == {"Discount FAQ", "Discount approvals"}
    assert get(kind="asset") == ["Discount calculator"]
    assert get(asset_type="spreadsheet") == ["Discount calculator"]
    assert set(get(kind="document", pinned="true")) == {"Discount FAQ"}
    assert get(updated_since="2999-01-01T00:00:00Z") == []


def test_hits_carry_their_folder_paths(conn: Conn, db_url: str, client: TestClient) -> None:
    ops = add_folder(conn, "document", "Ops")
    deep = add_folder(conn, "document", "EMEA", add_folder(conn, "document", "Revenue", ops))
    add_document(conn, "Ledger close", "The ledger close checklist for month end.", [], folder_id=deep)
    add_document(conn, "Ledger basics", "What the ledger holds and who owns it.", [], folder_id=ops)
    finance = add_folder(conn, "asset", "Finance", add_folder(conn, "asset", "Shared"))
    add_asset(conn, "Ledger template", "A ledger template for month end.", "template", folder_id=finance)
    Worker(db_url, FakeEmbedder()).run(once=True)
    for mode in ("hybrid", "keyword"):
        hits = client.get("/search", params={"q": "ledger month end", "mode": mode}).json()["hits"]
        paths = {h["title"]: h["folder_path"] for h in hits if h["title"].startswith("Ledger")}
        assert paths == {
            "Ledger close": "/Ops/Revenue/EMEA",
            "Ledger basics": "/Ops",
            "Ledger template": "/Shared/Finance",
        }, mode
        # as the items' own pages give them
        for hit in hits:
            item = client.get(f"/{hit['kind']}s/{hit['id']}").json()
            assert item["folder_path"] == hit["folder_path"]


@pytest.mark.parametrize("exact_below", [0, 100_000], ids=["hnsw-iterative-scan", "exact-scan"])
def test_one_percent_filter_returns_the_full_limit(
    conn: Conn, db_url: str, monkeypatch: pytest.MonkeyPatch, exact_below: int
) -> None:
    """1,000 passages, 10 of them tagged: both the HNSW path (iterative scan) and the exact
    path return all 10, every hit matching."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO documents (title, content_text, tags) VALUES (%s, %s, %s)",
            [
                (
                    f"Note {i}",
                    f"Operations note {i} about shipping rates and carriers.",
                    ["rare"] if i % 100 == 0 else ["common"],
                )
                for i in range(1000)
            ],
        )
    index_with_fake(conn, db_url)
    monkeypatch.setattr(models, "EXACT_SCAN_FLOOR", exact_below)
    monkeypatch.setattr(models, "EXACT_SCAN_SHARE", 0.0)
    with local_client(create_app(db_url)) as c:
        for mode in ("semantic", "hybrid"):
            body = c.get(
                "/search", params={"q": "shipping carriers", "tags_any": "rare", "limit": 10, "mode": mode}
            ).json()
            assert len(body["hits"]) == 10, (mode, body)
            assert all(h["tags"] == ["rare"] for h in body["hits"])
            assert ("selective filter: exact vector scan" in body["notes"]) == (exact_below > 0)


def test_semantic_leg_is_read_from_the_models_hnsw_index(conn: Conn, db_url: str) -> None:
    """The semantic leg orders by the expression of the model's HNSW index (011), so the index
    can serve it: with every other plan disabled, a search scans that index."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO documents (title, content_text) VALUES (%s, %s)",
            [(f"Note {i}", f"Operations note {i}: carrier {i % 37} ships on weekday {i % 5}.") for i in range(300)],
        )
    index_with_fake(conn, db_url)
    name = conn.execute("SELECT hq_embedding_index_name('fake-hash-384') AS n").fetchone()["n"]  # type: ignore[index]
    with psycopg.connect(db_url, autocommit=True) as search_conn:
        configure_for_search(search_conn)
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):  # the index whenever it can serve
            search_conn.execute(f"SET {setting} = off")
        with search_conn.transaction():
            result = search_active(
                search_conn,
                SearchQuery("Operations note 123: carrier 12 ships on weekday 3.", mode="semantic", limit=3),
            )
            scans = search_conn.execute("SELECT pg_stat_get_xact_numscans(to_regclass(%s))", [name]).fetchone()
    assert scans is not None and scans[0] >= 1
    assert result.hits[0].title == "Note 123"


BAD: list[tuple[dict[str, Any], int, str]] = [
    ({"q": ""}, 422, "q"),
    ({"q": "   "}, 422, "q"),
    ({"q": "x" * 10_000}, 422, "q"),
    ({"q": "a\x00b"}, 422, "q"),
    ({"q": "refund", "limit": 0}, 422, "limit"),
    ({"q": "refund", "limit": -1}, 422, "limit"),
    ({"q": "refund", "limit": 10_000}, 422, "limit"),
    ({"q": "refund", "offset": -5}, 422, "offset"),
    ({"q": "refund", "mode": "fuzzy"}, 422, "mode"),
    ({"q": "refund", "kind": "video"}, 422, "kind"),
    ({"q": "refund", "asset_type": "hologram"}, 422, "asset_type"),
    ({"q": "refund", "archived": "maybe"}, 422, "archived"),
    ({"q": "refund", "updated_since": "yesterday"}, 422, "updated_since"),
    ({"q": "refund", "folder": "not-a-uuid"}, 422, "folder"),
    ({"q": "refund", "pinned": "sometimes"}, 422, "pinned"),
    ({"q": "refund", "tags_any": "x" * 101}, 422, "tags_any"),
    ({"q": "refund", "k": 0}, 422, "rrf_k"),
]
SANE = [
    "!&|():*'\\<>-\"",
    "refund & | ! ( ) : * ' \\ < > - \"",
    "'; DROP TABLE documents; --",
    "1' OR '1'='1",
    "refund) OR 1=1 --",
    "knowledge_chunks_bm25_idx:refund",
    "\ufffd\ufffd",
    "é ü ß 中文",
    "-",
    "*",
    ":",
    "<->",
    "a:* & b",
]


def test_bad_input_is_a_clear_4xx_and_odd_queries_are_sane(client: TestClient, conn: Conn) -> None:
    before = conn.execute("SELECT count(*) AS n FROM documents").fetchone()
    for params, status, field in BAD:
        r = client.get("/search", params=params)
        assert r.status_code == status, (params, r.text)
        assert field in r.text, (params, r.text)
    for q in SANE:
        for mode in ("hybrid", "semantic", "keyword"):
            r = client.get("/search", params={"q": q, "mode": mode})
            assert r.status_code == 200, (q, mode, r.text)
    raw = client.get("/search?q=%ff%fe%fdrefund")  # not UTF-8
    assert raw.status_code in (200, 422), raw.text
    assert conn.execute("SELECT count(*) AS n FROM documents").fetchone() == before


def test_source_path_of_imported_documents(conn: Conn, db_url: str, tmp_path: Path) -> None:
    from knowledge.store.importer import import_folder

    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "vat.md").write_text("# VAT rules\n\nInvoices to EU companies carry reverse-charge VAT.\n")
    import_folder(conn, tmp_path / "kb")
    index_with_fake(conn, db_url)
    with local_client(create_app(db_url)) as c:
        hit = c.get("/search", params={"q": "reverse-charge VAT invoices"}).json()["hits"][0]
    assert hit["source_path"] == "kb/vat.md" and hit["folder_path"] == "/kb"


def _answers_in_every_mode(url: str, keyword_path: str) -> None:
    """The app on `url` says it searches keywords by `keyword_path`, and finds in every mode."""
    with local_client(create_app(url)) as c:
        assert c.get("/healthz").json()["keyword_search"] == keyword_path
        for mode in ("hybrid", "semantic", "keyword"):
            body = c.get("/search", params={"q": "discount approval for a sales rep", "mode": mode}).json()
            assert body["keyword_path"] == keyword_path
            assert body["hits"][0]["title"] == "Discount approvals", (mode, body)


def test_server_without_bm25_answers_in_every_mode(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path, preload=()) as server:
        with _migrated_and_indexed(server.url):
            pass
        _answers_in_every_mode(server.url, "sql-bm25")
        # Without the SQL keyword index either (its function dropped), ts_rank_cd still answers.
        with psycopg.connect(server.url, autocommit=True) as raw:
            raw.execute("DROP FUNCTION hq_sql_bm25_top(text, integer)")
        forget_setup()
        _answers_in_every_mode(server.url, "ts_rank_cd")
        forget_setup()


def test_sql_keyword_index_chosen_by_setting_ranks_like_pg_textsearch(
    conn: Conn, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from knowledge.cli.main import apply_settings

    """HQ_KEYWORD_INDEX=sql on a server with pg_textsearch: the same ranking from the tables."""
    for title, text, tags in DOCS:
        add_document(conn, title, text, tags)
    index_with_fake(conn, db_url)
    queries = ["discount approval for a sales rep", "refund renewal", "incidents handoff channel", "tomatoes sun"]
    runs: dict[str, list[list[str]]] = {}
    try:
        for choice in ("pg_textsearch", "sql"):
            apply_settings(Settings.from_env({"HQ_KEYWORD_INDEX": choice}))
            forget_setup()
            with local_client(create_app(db_url)) as c:
                assert c.get("/healthz").json()["keyword_search"] == {"sql": "sql-bm25"}.get(choice, "bm25")
                bodies = [
                    c.get("/search", params={"q": q, "mode": "keyword", "explain": "true"}).json() for q in queries
                ]
            assert {b["keyword_path"] for b in bodies} == {{"sql": "sql-bm25"}.get(choice, "bm25")}
            runs[choice] = [[h["title"] for h in b["hits"]] for b in bodies]
            if choice == "sql":  # scores are BM25 scores, best first
                for b in bodies:
                    scores = [h["explain"]["keyword"]["score"] for h in b["hits"]]
                    assert scores == sorted(scores, reverse=True) and all(x > 0 for x in scores), b
    finally:
        apply_settings(Settings.from_env({}))  # back to auto
        forget_setup()
    assert runs["sql"] == runs["pg_textsearch"]
    monkeypatch.setenv("HQ_KEYWORD_INDEX", "bm26")
    with pytest.raises(InvalidInput, match="HQ_KEYWORD_INDEX must be auto, pg_textsearch or sql, got 'bm26'"):
        Settings.from_env()


@contextmanager
def _migrated_and_indexed(url: str) -> Iterator[Conn]:
    """A connection to the database at `url`, migrated, holding DOCS indexed by the fake model."""
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        migrate(conn)
        for title, text, tags in DOCS:
            add_document(conn, title, text, tags)
        index_with_fake(conn, url)
        yield conn


def test_sql_keyword_index_survives_a_server_restart(tmp_path: Path) -> None:
    """The SQL keyword index is ordinary tables: a restart leaves its statistics as they were."""
    server = EmbeddedPostgres(tmp_path, preload=())
    server.start()
    try:
        with _migrated_and_indexed(server.url) as conn:
            before = conn.execute("SELECT sum(passages) AS n, sum(total_length) AS len FROM bm25_corpus").fetchone()
        assert before is not None and before["n"] > 0
        server.stop()
        server.start()
        with psycopg.connect(server.url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            after = conn.execute("SELECT sum(passages) AS n, sum(total_length) AS len FROM bm25_corpus").fetchone()
        assert after == before
        forget_setup()
        with local_client(create_app(server.url)) as c:
            body = c.get("/search", params={"q": "discount approval", "mode": "keyword"}).json()
        assert body["keyword_path"] == "sql-bm25"
        assert body["hits"][0]["title"] == "Discount approvals"
    finally:
        server.stop()
        forget_setup()


def test_keyword_search_survives_a_server_restart(tmp_path: Path) -> None:
    """pg_textsearch 1.0 forgets its corpus statistics on restart (BM25 then finds nothing);
    the start-up repair rebuilds the index, once."""
    from knowledge.db.keyword_index import repair_bm25_index

    server = EmbeddedPostgres(tmp_path)
    server.start()
    try:
        with _migrated_and_indexed(server.url) as conn:
            assert repair_bm25_index(conn) is False  # healthy: nothing to do
        server.stop()
        server.start()
        with local_client(create_app(server.url)) as c:
            broken = c.get("/search", params={"q": "discount approval", "mode": "keyword"}).json()
        assert broken["hits"] == []  # the upstream behaviour this repair exists for
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert repair_bm25_index(conn) is True
            assert repair_bm25_index(conn) is False
        with local_client(create_app(server.url)) as c:
            body = c.get("/search", params={"q": "discount approval", "mode": "keyword"}).json()
        assert body["hits"][0]["title"] == "Discount approvals"
        # A rebuilt index also lists passages without any query term (score 0): cut off.
        wanted = {t for t, text, _ in DOCS if "discount" in (t + text).lower() or "approv" in (t + text).lower()}
        assert {h["title"] for h in body["hits"]} == wanted, body["hits"]
        assert all("<mark>" in h["snippet"] for h in body["hits"])
    finally:
        server.stop()


def test_keyword_search_survives_deleted_passages_and_a_restart(tmp_path: Path) -> None:
    """Passages with their text stored out of line, deleted before a restart: pg_textsearch
    1.0's recovered index then points at text that is gone (the first read of it fails with
    'missing chunk number 0 for toast value', then BM25 finds little or nothing). The repair
    that serve, the worker and the CLI run at start rebuilds it."""
    import random

    from knowledge.db.keyword_index import repair_bm25_index

    rng = random.Random(3)
    words = ["refund", "discount", "invoice", "approval", "annual", "plan", "policy", "ledger"]

    def long_notes(conn: Conn, n: int) -> list[uuid.UUID]:  # ~6 kB of text each: stored out of line
        return [
            add_document(
                conn, f"Long note {i}", " ".join(f"{rng.choice(words)}{rng.randrange(999)}" for _ in range(600)), []
            )
            for i in range(n)
        ]

    def deleted_then_restarted() -> None:
        with psycopg.connect(server.url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            ids = long_notes(conn, 12)
            index_with_fake(conn, server.url)
            conn.execute("DELETE FROM documents WHERE id = ANY(%s)", [ids])
        server.stop()
        server.start()

    def keyword_titles() -> list[str]:
        with local_client(create_app(server.url)) as c:
            r = c.get("/search", params={"q": "discount approval", "mode": "keyword"})
        assert r.status_code == 200, r.text
        return [h["title"] for h in r.json()["hits"]]

    bm25 = (
        "SELECT count(*) FROM (SELECT id FROM knowledge_chunks ORDER BY indexed_text <@>"
        " to_bm25query('discount approval', 'knowledge_chunks_bm25_idx') LIMIT 10) t"
    )
    server = EmbeddedPostgres(tmp_path)
    server.start()
    try:
        with _migrated_and_indexed(server.url) as conn:
            long_notes(conn, 20)  # kept
            index_with_fake(conn, server.url)
        deleted_then_restarted()
        with psycopg.connect(server.url, autocommit=True) as plain:
            assert repair_bm25_index(plain) is True  # the statistics were lost (the test above)
        deleted_then_restarted()
        with psycopg.connect(server.url, autocommit=True) as plain:
            assert repair_bm25_index(plain) is True  # the deleted passages' text is gone
            assert repair_bm25_index(plain) is False
        assert keyword_titles()[0] == "Discount approvals"
        deleted_then_restarted()
        with (
            psycopg.connect(server.url, autocommit=True) as plain,
            pytest.raises(psycopg.errors.DataCorrupted, match="missing chunk number 0 for toast value"),
        ):
            plain.execute(bm25)  # the upstream behaviour repaired above
    finally:
        server.stop()
        forget_setup()


def test_a_bm25_index_that_rebuilding_does_not_mend_is_left_until_the_server_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the BM25 index is still broken after its rebuilds (pg_textsearch 1.0 once kept a
    few passages through every REINDEX until the server restarted), searches take the SQL
    keyword index until the server restarts, and say so."""
    from knowledge.db import keyword_index
    from knowledge.db.keyword_index import keyword_path, repair_bm25_index

    server = EmbeddedPostgres(tmp_path)
    server.start()
    try:
        with _migrated_and_indexed(server.url) as conn:
            assert keyword_path(conn, "auto") == "bm25"
            rebuilds: list[int] = []

            def problem(_conn: Any) -> str:
                rebuilds.append(1)
                return "counts 1 of 4 passages"

            monkeypatch.setattr(keyword_index, "_bm25_problem", problem)
            assert repair_bm25_index(conn) is True
            assert len(rebuilds) == 1 + keyword_index.REBUILDS
            assert "searches use the SQL keyword index" in caplog.text
            assert keyword_path(conn, "auto") == "sql-bm25"
            assert repair_bm25_index(conn) is False  # nothing more to do until the restart
            monkeypatch.undo()
        forget_setup()
        with local_client(create_app(server.url)) as c:
            body = c.get("/search", params={"q": "discount approval", "mode": "keyword"}).json()
        assert body["keyword_path"] == "sql-bm25" and body["hits"][0]["title"] == "Discount approvals"
        server.stop()
        server.start()
        with psycopg.connect(server.url, autocommit=True) as plain:
            assert keyword_path(plain, "auto") == "bm25"
    finally:
        server.stop()
        forget_setup()


def test_serve_restarts_its_embedded_server_when_rebuilding_does_not_mend_bm25(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On the embedded server, a BM25 index that rebuilding does not mend (pg_textsearch 1.0
    until the server restarts, here made so for the first server only) gets the server
    restarted at start, once: searches then use BM25."""
    from knowledge.config import Settings
    from knowledge.db import keyword_index
    from knowledge.db.connect import database
    from knowledge.db.embedded import postmaster_pid

    server = EmbeddedPostgres(tmp_path)
    server.start()
    try:
        with _migrated_and_indexed(server.url) as conn:
            first = conn.execute("SELECT pg_postmaster_start_time()::text AS t").fetchone()["t"]  # type: ignore[index]
    finally:
        server.stop()
    real = keyword_index._bm25_problem
    broken_for: list[str] = []

    def broken_until_restarted(conn: psycopg.Connection[Any]) -> str | None:
        started = (
            conn.cursor(row_factory=psycopg.rows.tuple_row)
            .execute("SELECT pg_postmaster_start_time()::text")
            .fetchall()[0][0]
        )
        if not broken_for:
            broken_for.append(started)
        return "counts 1 of 4 passages" if started == broken_for[0] else real(conn)

    monkeypatch.setattr(keyword_index, "_bm25_problem", broken_until_restarted)
    with database(Settings(data_dir=tmp_path)) as url, psycopg.connect(url, autocommit=True) as restarted:
        now = restarted.execute("SELECT pg_postmaster_start_time()::text").fetchall()[0][0]
        assert now not in (first, broken_for[0]) and postmaster_pid(tmp_path / "pg") is not None
        assert keyword_index.keyword_path(restarted, "auto") == "bm25"
    assert "restarted the embedded PostgreSQL to finish rebuilding the BM25 index" in caplog.text
    forget_setup()


def test_a_sound_bm25_index_is_left_alone_whatever_its_first_words(conn: Conn, db_url: str) -> None:
    """The repair's probe searches a word of a passage: a stop word would find nothing and
    have a sound index rebuilt at every start."""
    from knowledge.db.keyword_index import keyword_path, repair_bm25_index

    add_document(conn, "With", "This is what they were about to have: refunds.", [])
    for title, text, tags in DOCS:
        add_document(conn, title, text, tags)
    index_with_fake(conn, db_url)
    assert keyword_path(conn, "auto") == "bm25"
    assert repair_bm25_index(conn) is False


def test_a_document_with_many_close_passages_does_not_shorten_the_page(conn: Conn, db_url: str) -> None:
    """Sixty passages of one document fill the semantic leg's first quota of 50 passages: the
    page still holds `limit` items (the search asks again with more passages)."""
    big = "\n\n".join(f"## Part {i}\n\napple orchard harvest apple orchard harvest" for i in range(60))
    add_document(conn, "Orchard", big, ["farm"])
    for i in range(12):
        add_document(
            conn, f"Note {i}", f"apple orchard harvest, and also tractors, weather, markets and prices {i}", ["farm"]
        )
    index_with_fake(conn, db_url)
    passages = conn.execute(
        "SELECT count(*) AS n FROM knowledge_chunks c JOIN documents d ON d.id = c.document_id"
        " WHERE d.title = 'Orchard'"
    ).fetchone()
    assert passages is not None and passages["n"] == 60
    with local_client(create_app(db_url)) as client:
        got = titles(client.get("/search", params={"q": "apple orchard harvest", "mode": "semantic", "limit": 12}))
    assert len(got) == 12 and got[0] == "Orchard"
    assert len(set(got[1:])) == 11 and all(t.startswith("Note ") for t in got[1:])


def test_prepared_statements_answer_as_statements_planned_each_time(conn: Conn, db_url: str) -> None:
    """Unfiltered searches are prepared once per connection and, after five runs, run on a
    generic plan; each answers exactly as a statement planned for its own values. Filtered
    searches are never prepared."""
    from knowledge.db.pools import configure_for_search
    from knowledge.search import MODES, SearchQuery
    from knowledge.search.setup import search_active

    for title, text, tags in DOCS:
        add_document(conn, title, text, tags)
    topics = ["refund", "discount", "incident", "tomato", "invoice", "renewal", "approval", "watering"]
    for i in range(40):
        add_document(
            conn,
            f"Note {i}",
            f"{topics[i % 8]} notes {i}: {topics[(i * 3) % 8]} and {topics[(i * 5) % 8]} review",
            ["notes"],
        )
    index_with_fake(conn, db_url)
    queries = [
        "refund annual plan",
        "discount approval",
        "open incidents",
        "tomato sun",
        "invoice review",
        "renewal notes",
        "approval by the CFO",
        "watering tomatoes",
        "incident handoff",
        "discount notes",
        "refund review",
        "sales rep",
    ]
    with (
        psycopg.connect(db_url, autocommit=True) as prepared,
        psycopg.connect(db_url, autocommit=True, prepare_threshold=None) as planned,
    ):
        configure_for_search(prepared)
        configure_for_search(planned)
        for mode in MODES:
            for text in queries:
                a = search_active(prepared, SearchQuery(q=text, mode=mode))
                b = search_active(planned, SearchQuery(q=text, mode=mode))
                assert a.hits, (mode, text)
                assert [(h.id, round(h.score, 9), h.snippet, h.explain) for h in a.hits] == [
                    (h.id, round(h.score, 9), h.snippet, h.explain) for h in b.hits
                ], (mode, text)
        plans = prepared.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements").fetchall()
        assert len(plans) == len(MODES), plans  # one statement per mode, reused for every query
        assert all(generic + custom == len(queries) and generic > 0 for generic, custom in plans), plans
        assert planned.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        filtered = search_active(prepared, SearchQuery(q="refund", tags_any=("billing",)))
        assert [h.title for h in filtered.hits] == ["Refund policy"]
        assert prepared.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (len(MODES),)


def test_prepared_statements_can_be_turned_off(conn: Conn, db_url: str) -> None:
    from knowledge.errors import InvalidInput

    def setting(value: str) -> bool:
        return Settings.from_env({"HQ_PREPARED_STATEMENTS": value}).prepared_statements

    assert Settings.from_env({}).prepared_statements and setting("on") and setting("1")
    for off in ("0", "false", "Off", " no "):
        assert not setting(off)
    with pytest.raises(InvalidInput, match="HQ_PREPARED_STATEMENTS must be 1/true/yes/on or 0/false/no/off"):
        setting("maybe")
    for title, text, tags in DOCS:
        add_document(conn, title, text, tags)
    index_with_fake(conn, db_url)
    for value, prepared in (("0", 0), ("1", 1)):
        with local_client(create_app(db_url, pool_size=1, prepared_statements=setting(value))) as c:
            for _ in range(3):
                assert titles(c.get("/search", params={"q": "refund annual plans"}))[0] == "Refund policy"
            with c.app.state.pool.connection() as pooled:  # type: ignore[attr-defined]
                assert pooled.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (prepared,)
