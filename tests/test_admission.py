"""Admission control (knowledge.search.admission) and batched query embedding (embeddings.batching):
a bound on searches in flight with a short queue, 503 past it; concurrent queries embedded in
one model run, each caller getting its own vector."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from embeddings.batching import QueryBatcher
from embeddings.model import FakeEmbedder
from knowledge.api import create_app
from knowledge.config import Settings
from knowledge.errors import InvalidInput, Overloaded
from knowledge.search.admission import Admission, admission_for, default_limit, default_queue

from .apiclient import local_client
from .factories import add_document, index_with_fake
from .test_search import DOCS

Conn = psycopg.Connection[dict[str, Any]]


# -- admission ----------------------------------------------------------------------------


def _wait_until_in_flight(adm: Admission, n: int) -> None:
    """Until `n` searches hold or wait for a slot (threads started meanwhile), at most 5 s."""
    deadline = time.monotonic() + 5
    while adm.in_flight < n and time.monotonic() < deadline:
        time.sleep(0.002)
    assert adm.in_flight == n


def test_defaults_come_from_the_cores() -> None:
    assert default_limit(1) == 2 and default_limit(2) == 4 and default_limit(8) == 16
    assert default_queue(4) == 8
    adm = admission_for()
    assert adm.limit == default_limit() and adm.queue == default_queue(adm.limit)
    assert admission_for(3, 0).limit == 3 and admission_for(3, 0).queue == 0


def test_a_full_queue_refuses_at_once_and_a_freed_slot_admits_the_next() -> None:
    adm = Admission(1, 1, max_wait=10)
    admitted = threading.Event()
    release = threading.Event()

    def waiter() -> None:
        with adm.slot():
            admitted.set()
            release.wait(10)

    with adm.slot():
        thread = threading.Thread(target=waiter)
        thread.start()
        _wait_until_in_flight(adm, 2)
        assert not admitted.is_set()  # queued behind the holder
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused, adm.slot():  # the one waiting place is taken
            pass
        assert time.monotonic() - started < 1  # refused without waiting
        assert refused.value.status == 503 and refused.value.retry_after == 1
        assert "HQ_SEARCH_CONCURRENCY 1" in refused.value.message and "retry" in refused.value.message
    assert admitted.wait(5)  # the slot passed to the waiter
    release.set()
    thread.join(5)
    assert adm.in_flight == 0
    assert (adm.stats.admitted, adm.stats.queued, adm.stats.refused) == (2, 1, 1)


def test_waiters_are_served_in_arrival_order_and_newcomers_queue_behind_them() -> None:
    adm = Admission(1, 4, max_wait=10)
    order: list[str] = []
    hold = threading.Event()

    def search(name: str) -> None:
        with adm.slot():
            order.append(name)
            hold.wait(10)

    def start(name: str, in_flight: int) -> threading.Thread:
        thread = threading.Thread(target=search, args=(name,))
        thread.start()
        _wait_until_in_flight(adm, in_flight)
        return thread

    threads = [start("holder", 1), start("a", 2), start("b", 3), start("c", 4)]
    hold.set()  # each holder leaves at once: the slot passes down the queue
    for thread in threads:
        thread.join(5)
    assert order == ["holder", "a", "b", "c"]
    assert (adm.stats.admitted, adm.stats.queued, adm.in_flight) == (4, 3, 0)


def test_a_slot_given_back_goes_to_the_waiter_not_to_a_newcomer() -> None:
    adm = Admission(1, 4, max_wait=10)
    order: list[str] = []

    def waiter() -> None:
        with adm.slot():
            order.append("waiter")

    with adm.slot():
        thread = threading.Thread(target=waiter)
        thread.start()
        _wait_until_in_flight(adm, 2)
    with adm.slot():  # the newcomer asks the moment the slot is given back: it waits its turn
        order.append("newcomer")
    thread.join(5)
    assert order == ["waiter", "newcomer"]


def test_a_wait_past_max_wait_is_refused() -> None:
    adm = Admission(1, 4, max_wait=0.05)
    with adm.slot(), pytest.raises(Overloaded), adm.slot():
        pass
    assert adm.stats.timed_out == 1 and adm.in_flight == 0
    with adm.slot():  # nothing leaked: the slot is free again
        assert adm.in_flight == 1


def test_an_error_inside_the_slot_gives_it_back() -> None:
    adm = Admission(1, 0)
    with pytest.raises(RuntimeError), adm.slot():
        raise RuntimeError("boom")
    with adm.slot():
        assert adm.in_flight == 1


def test_settings_read_the_bounds() -> None:
    settings = Settings.from_env({"HQ_SEARCH_CONCURRENCY": "3", "HQ_SEARCH_QUEUE": "0"})
    assert (settings.search_concurrency, settings.search_queue) == (3, 0)
    assert Settings.from_env({}).search_concurrency is None
    assert Settings.from_env({"HQ_QUERY_BATCH": "8", "HQ_QUERY_CACHE": "0"}).query_batch == 8
    assert (Settings.from_env({}).access_log, Settings.from_env({"HQ_ACCESS_LOG": "yes"}).access_log) == (False, True)
    for name, value in (
        ("HQ_SEARCH_CONCURRENCY", "0"),
        ("HQ_SEARCH_CONCURRENCY", "many"),
        ("HQ_SEARCH_QUEUE", "-1"),
        ("HQ_SEARCH_QUEUE", "1e9"),
        ("HQ_QUERY_BATCH", "300"),
        ("HQ_QUERY_CACHE", "lots"),
        ("HQ_ACCESS_LOG", "verbose"),
    ):
        with pytest.raises(InvalidInput, match=name):
            Settings.from_env({name: value})


@pytest.fixture
def busy_app(conn: Conn, db_url: str) -> Iterator[tuple[TestClient, Admission]]:
    for title, text, tags in DOCS:
        add_document(conn, title, text, tags)
    index_with_fake(conn, db_url)
    adm = Admission(1, 0)
    with local_client(create_app(db_url, admission=adm)) as client:
        yield client, adm


def test_search_past_the_bound_is_a_503_with_retry_after(busy_app: tuple[TestClient, Admission]) -> None:
    client, adm = busy_app
    assert client.get("/search", params={"q": "refund"}).status_code == 200
    with adm.slot():  # the one slot is taken, and there is no queue
        r = client.get("/search", params={"q": "refund"})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "busy" in r.json()["detail"] and "retry" in r.json()["detail"]
        assert client.get("/documents").status_code == 200  # only searches are bounded
        shed = client.get("/search", params={"q": "refund", "limit": 0})  # refused before it is parsed
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        load = client.get("/status").json()["searches"]
        assert (load["limit"], load["queue"], load["in_flight"], load["refused"]) == (1, 0, 1, 2)
    r = client.get("/search", params={"q": "refund"})
    assert r.status_code == 200 and r.json()["hits"]


def test_mcp_search_past_the_bound_is_a_tool_error_saying_to_retry(busy_app: tuple[TestClient, Admission]) -> None:
    client, adm = busy_app
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    r = client.post("/mcp", json=init, headers=headers)
    assert r.status_code == 200, r.text
    session = r.headers.get("mcp-session-id")
    if session:
        headers["mcp-session-id"] = session
    client.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "search_knowledge", "arguments": {"query": "refund"}},
    }

    def result() -> dict[str, Any]:
        r = client.post("/mcp", json=call, headers=headers)
        assert r.status_code == 200, r.text
        body = r.text
        if body.startswith("event:") or "data:" in body:
            body = next(line[5:] for line in body.splitlines() if line.startswith("data:"))
        import json

        return json.loads(body)["result"]  # type: ignore[no-any-return]

    with adm.slot():
        busy = result()
    assert busy["isError"] is True
    assert "busy" in busy["content"][0]["text"] and "retry" in busy["content"][0]["text"]
    assert result()["isError"] is False


# -- batched query embedding --------------------------------------------------------------


class _Recording:
    """FakeEmbedder's vectors, recording each call's batch, each call taking `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.inner = FakeEmbedder()
        self.delay = delay
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(list(texts))
        time.sleep(self.delay)
        if any(t == "fail" for t in texts):
            raise RuntimeError("model failed")
        return self.inner.embed(texts)


def _concurrently(batcher: QueryBatcher, texts: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def one(text: str) -> None:
        try:
            out[text] = batcher.embed_one(text)
        except Exception as e:
            out[text] = e

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_concurrent_queries_share_model_runs_and_get_their_own_vectors() -> None:
    model = _Recording(delay=0.05)  # queries pile up while a run is busy
    batcher = QueryBatcher(model, max_batch=8)
    texts = [f"query number {i}" for i in range(24)]
    try:
        got = _concurrently(batcher, texts)
    finally:
        batcher.close()
    expected = FakeEmbedder().embed(texts)
    for i, text in enumerate(texts):
        assert np.array_equal(got[text], expected[i]), text
    assert len(model.calls) < len(texts)  # batched
    assert max(len(c) for c in model.calls) <= 8
    assert sum(n * runs for n, runs in batcher.batch_sizes.items()) == len(texts)
    assert sorted(t for c in model.calls for t in c) == sorted(texts)  # each embedded once


def test_the_window_is_waited_only_while_other_searches_are_in_flight() -> None:
    for busy, runs in ((lambda: 3, 1), (None, 2)):
        model = _Recording()
        batcher = QueryBatcher(model, window=0.5, busy=busy)
        try:
            first = threading.Thread(target=batcher.embed_one, args=("first",))
            first.start()
            time.sleep(0.1)  # well inside the window
            batcher.embed_one("second")
            first.join(5)
        finally:
            batcher.close()
        assert len(model.calls) == runs, (busy, model.calls)


def test_a_failed_run_fails_its_callers_only() -> None:
    model = _Recording(delay=0.05)
    batcher = QueryBatcher(model)
    try:
        got = _concurrently(batcher, ["fail", "a", "b"])
        failed = [t for t, v in got.items() if isinstance(v, Exception)]
        assert "fail" in failed and all(str(got[t]) == "model failed" for t in failed)
        assert np.array_equal(batcher.embed_one("after"), FakeEmbedder().embed(["after"])[0])
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.embed_one("late")


def test_several_texts_go_straight_to_the_model() -> None:
    model = _Recording()
    batcher = QueryBatcher(model)
    vectors = batcher.embed(["a", "b", "c"])
    assert vectors.shape == (3, 384) and model.calls == [["a", "b", "c"]]
    assert batcher.embed(["one"]).shape == (1, 384)
    batcher.close()


def test_a_search_arriving_idle_has_its_query_embedded_ahead(busy_app: tuple[TestClient, Admission]) -> None:
    """While no other search is in flight, the door starts embedding the query on the query
    embedder's own thread before the route runs; the search uses that vector (embedded
    once) and answers as it would have. Under load, or in keyword mode, nothing is started."""
    from embeddings.registry import load_model
    from knowledge.search.setup import _last_model

    client, adm = busy_app
    assert client.get("/search", params={"q": "refund policy"}).status_code == 200  # the model is known now
    assert _last_model
    fake = load_model(_last_model[0])
    threads: list[tuple[str, str]] = []
    embed = fake.embed

    def recorded(texts: Sequence[str]) -> NDArray[np.float32]:
        threads.extend((t, threading.current_thread().name) for t in texts)
        return embed(texts)

    fake.embed = recorded  # type: ignore[method-assign]
    try:
        r = client.get("/search", params={"q": "how are refunds approved"})
        assert r.status_code == 200 and r.json()["hits"]
        assert threads == [("how are refunds approved", threads[0][1])]
        assert threads[0][1].startswith("hq-query-ahead")
        threads.clear()
        assert client.get("/search", params={"q": "annual plans", "mode": "keyword"}).status_code == 200
        with adm.slot():  # busy: the search would wait for a slot (and here is refused)
            assert client.get("/search", params={"q": "discount approvals"}).status_code == 503
        assert client.get("/search", params={"q": "", "mode": "semantic"}).status_code == 422
        assert threads == []
    finally:
        fake.embed = embed  # type: ignore[method-assign]


def test_embedding_ahead_hands_the_vector_to_the_next_lookup_once() -> None:
    from embeddings.onnx import AHEAD_KEPT, CachedQueryEmbedder

    fake = FakeEmbedder()
    for size in (0, 16):
        embedder = CachedQueryEmbedder(fake, cache_size=size)
        fake.calls.clear()
        embedder.embed_ahead("refund policy")
        embedder.embed_ahead("refund policy")  # under way already: not started twice
        np.testing.assert_allclose(embedder.embed_query("refund policy"), fake.embed(["refund policy"])[0])
        assert fake.calls.count("refund policy") == 2  # once ahead, once for the comparison
        embedder.embed_query("refund policy")  # cached (size 16) or embedded again (no cache)
        assert fake.calls.count("refund policy") == (3 if size == 0 else 2)
        for i in range(AHEAD_KEPT + 3):  # searches that never came are not kept for ever
            embedder.embed_ahead(f"query {i}")
        assert len(embedder._queries._ahead) == AHEAD_KEPT


def test_a_failed_embedding_ahead_is_tried_again_by_the_search() -> None:
    from embeddings.onnx import CachedQueryEmbedder

    fake = FakeEmbedder()
    embedder = CachedQueryEmbedder(fake)
    failures = [RuntimeError("onnx run failed")]
    embed = fake.embed

    def flaky(texts: Sequence[str]) -> NDArray[np.float32]:
        if failures:
            raise failures.pop()
        return embed(texts)

    fake.embed = flaky  # type: ignore[method-assign]
    embedder.embed_ahead("refund policy")
    np.testing.assert_allclose(embedder.embed_query("refund policy"), embed(["refund policy"])[0])
