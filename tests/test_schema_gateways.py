"""The gateway tokens (migration 006): one-time tokens stored as hashes, consumed once to register
one gateway, also under concurrent consumers."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from psycopg import errors

from .schema_calls import HOUR, Conn, Connect, one, run_in_thread, run_together, scalar, wait_until_blocked


def create_token(conn: Conn, label: str | None = "laptop") -> str:
    return str(scalar(conn, "SELECT create_gateway_token(%s) AS token", [label]))


def consume(conn: Conn, token: str | None, name: str = "gw-1") -> dict[str, Any]:
    return one(conn, "SELECT * FROM consume_gateway_token(%s, %s, 'host-1')", [token, name])


def gateway_count(conn: Conn) -> int:
    return int(scalar(conn, "SELECT count(*) AS n FROM gateways"))


def test_create_gateway_token_stores_only_the_sha256_of_the_token(conn: Conn) -> None:
    """The plain token is returned once; the table keeps its sha256 hex and nothing else of it."""
    token = create_token(conn)
    other = create_token(conn)

    assert token.startswith("hqgw_") and len(token) >= 60
    assert token != other
    rows = conn.execute(
        "SELECT t.*, row_to_json(t)::text AS as_text FROM gateway_registration_tokens t ORDER BY created_at"
    ).fetchall()
    assert len(rows) == 2
    hashes = {r["token_hash"] for r in rows}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in (token, other)}
    for r in rows:
        assert token not in r["as_text"] and other not in r["as_text"]
        assert r["label"] == "laptop"
        assert r["used_at"] is None
        assert timedelta(minutes=59) < r["expires_at"] - r["created_at"] <= HOUR


def test_consume_gateway_token_registers_one_gateway(conn: Conn) -> None:
    """A valid token yields an online gateway and is marked used and linked to it."""
    token = create_token(conn)

    gateway = consume(conn, token, name="  gw-1  ")

    assert gateway["name"] == "gw-1"
    assert gateway["hostname"] == "host-1"
    assert gateway["status"] == "online"
    assert gateway["last_heartbeat_at"] is not None
    row = one(conn, "SELECT used_at, gateway_id FROM gateway_registration_tokens")
    assert row["used_at"] is not None
    assert row["gateway_id"] == gateway["id"]
    assert gateway_count(conn) == 1


def test_consume_gateway_token_twice_raises(conn: Conn) -> None:
    """A token is single-use: the second attempt raises and registers nothing."""
    token = create_token(conn)
    first = consume(conn, token)

    with pytest.raises(errors.InvalidAuthorizationSpecification):
        consume(conn, token, name="gw-2")

    assert gateway_count(conn) == 1
    assert scalar(conn, "SELECT gateway_id FROM gateway_registration_tokens") == first["id"]


def test_consume_expired_gateway_token_raises(conn: Conn) -> None:
    """A token past its expires_at is refused and stays unused."""
    token = create_token(conn)
    conn.execute(
        "UPDATE gateway_registration_tokens "
        "SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 second'"
    )

    with pytest.raises(errors.InvalidAuthorizationSpecification):
        consume(conn, token)

    assert gateway_count(conn) == 0
    assert scalar(conn, "SELECT used_at FROM gateway_registration_tokens") is None


@pytest.mark.parametrize("wrong", ["hqgw_" + "0" * 64, "", None])
def test_consume_wrong_gateway_token_raises(conn: Conn, wrong: str | None) -> None:
    """An unknown, empty or NULL token is refused; the real token stays usable."""
    token = create_token(conn)

    with pytest.raises(errors.InvalidAuthorizationSpecification):
        consume(conn, wrong)

    assert gateway_count(conn) == 0
    assert consume(conn, token)["name"] == "gw-1"


def test_concurrent_consumers_of_one_token_register_one_gateway(conn: Conn, connect: Connect) -> None:
    """Of several callers released at once with the same token, exactly one succeeds."""
    token = create_token(conn)
    n = 4
    conns = [connect() for _ in range(n)]

    futures = run_together(n, lambda i: consume(conns[i], token, name=f"gw-{i}"))

    succeeded = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    assert len(succeeded) == 1
    assert all(isinstance(e, errors.InvalidAuthorizationSpecification) for e in failed)
    assert gateway_count(conn) == 1
    assert scalar(conn, "SELECT gateway_id FROM gateway_registration_tokens") == succeeded[0]["id"]


def test_consumer_waiting_on_a_claimed_token_fails_once_the_claim_commits(conn: Conn, connect: Connect) -> None:
    """A second consumer blocked behind an uncommitted claim re-checks the token and fails."""
    token = create_token(conn)
    first, second = connect(), connect()
    first.execute("BEGIN")
    consume(first, token, name="gw-first")

    pending = run_in_thread(lambda: consume(second, token, name="gw-second"))
    wait_until_blocked(conn, second.info.backend_pid)
    first.execute("COMMIT")

    with pytest.raises(errors.InvalidAuthorizationSpecification):
        pending.result(timeout=10)
    assert [r["name"] for r in conn.execute("SELECT name FROM gateways").fetchall()] == ["gw-first"]
