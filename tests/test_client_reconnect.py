"""knowledge.client when the server drops a connection it kept alive: the next read goes through
without an error reaching the agent, a write is not sent twice; and the service keeps idle
connections for longer than an agent's pause.

The drop is made by a proxy in front of the real service: it forwards requests until it is told
to drop, then closes the client's connection on the next request without forwarding it, as
the service does when it times out an idle keep-alive connection just as the client sends."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from knowledge.cli.serve import http_config
from knowledge.client import AsyncKnowledgeClient, KnowledgeClient
from knowledge.config import Settings
from knowledge.errors import InvalidInput, ServiceUnavailable

from .mcp_clients import http_service
from .sample_knowledge import KB

Conn = psycopg.Connection[dict[str, Any]]


class DroppingProxy:
    """TCP from a local port to `upstream`'s; `drop()` makes it close the next connection that
    sends, unanswered and unforwarded. Counts the connections clients open to it."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.connections = 0
        self.dropped = 0
        self._drop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self) -> None:
        self._drop.set()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._forward, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._forward, args=(server, client, False), daemon=True).start()

    def _forward(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._drop.is_set():
                    self._drop.clear()
                    self.dropped += 1
                    break
                target.sendall(data)
        except OSError:
            pass
        for end in (source, target):
            end.close()


@pytest.fixture
def kb(conn: Conn, db_url: str) -> KB:
    return KB(conn, db_url)


@pytest.fixture
def service(kb: KB) -> Iterator[tuple[DroppingProxy, dict[str, str]]]:
    with http_service(kb.url) as base:
        upstream = int(base.rsplit(":", 1)[1])
        proxy = DroppingProxy(upstream)
        try:
            # The service answers its own Host only (DNS-rebinding protection): name it.
            yield proxy, {"Host": f"127.0.0.1:{upstream}"}
        finally:
            proxy.close()


def test_a_search_on_a_dropped_connection_is_sent_again(service: tuple[DroppingProxy, dict[str, str]]) -> None:
    proxy, host = service
    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.port}", headers=host) as http:
        client = KnowledgeClient(http=http)
        assert client.search("refund").hits  # the connection is open, and kept alive
        proxy.drop()
        found = client.search("refund")  # sent on the dropped connection, then again
        assert found.hits and found.hits[0].title == "Refund policy"
        assert (proxy.dropped, proxy.connections) == (1, 2)
        assert client.overview().documents > 0  # the other reads too (GET)
        proxy.drop()
        assert client.overview().documents > 0


def test_the_async_client_sends_a_read_again(service: tuple[DroppingProxy, dict[str, str]]) -> None:
    proxy, host = service

    async def main() -> list[str]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}", headers=host) as http:
            client = AsyncKnowledgeClient(http=http)
            first = await client.search("refund")
            proxy.drop()
            second = await client.search("refund")
            return [first.hits[0].title, second.hits[0].title]

    assert anyio.run(main) == ["Refund policy", "Refund policy"]
    assert (proxy.dropped, proxy.connections) == (1, 2)


def test_a_write_on_a_dropped_connection_is_not_sent_again(
    service: tuple[DroppingProxy, dict[str, str]], conn: Conn
) -> None:
    proxy, host = service
    before = conn.execute("SELECT count(*) AS n FROM documents").fetchone()
    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.port}", headers=host) as http:
        client = KnowledgeClient(http=http)
        assert client.search("refund").hits
        proxy.drop()
        with pytest.raises(ServiceUnavailable, match=r"RemoteProtocolError|ReadError|WriteError"):
            client.save_document(f"Note {uuid.uuid4()}", "Written once or not at all.")
        assert (proxy.dropped, proxy.connections) == (1, 1)  # no second connection: not sent again
    assert conn.execute("SELECT count(*) AS n FROM documents").fetchone() == before


def test_idle_connections_are_kept_for_75_seconds_by_default() -> None:
    assert Settings.from_env({}).keep_alive == 75
    assert Settings.from_env({"HQ_KEEP_ALIVE": "300"}).keep_alive == 300
    # what `serve` hands uvicorn
    assert http_config(None, "127.0.0.1", 8765, Settings.from_env({})).timeout_keep_alive == 75
    assert http_config(None, "127.0.0.1", 8765, Settings.from_env({"HQ_KEEP_ALIVE": "120"})).timeout_keep_alive == 120
    for value in ("0", "soon", "1.5"):
        with pytest.raises(InvalidInput, match="HQ_KEEP_ALIVE"):
            Settings.from_env({"HQ_KEEP_ALIVE": value})
