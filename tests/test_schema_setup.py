"""The setup wizard's complete_setup (migration 017): the workspace filled and audited once, bad
input refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from psycopg import errors

from .schema_calls import Conn, one


def workspace(conn: Conn) -> dict[str, Any]:
    return one(conn, "SELECT * FROM workspace")


def audit_rows(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM audit_log ORDER BY id").fetchall()


def complete_setup(
    conn: Conn,
    name: str | None = "Acme HQ",
    email: str | None = "ada@example.com",
    timezone: str | None = "Europe/Paris",
) -> dict[str, Any]:
    return one(
        conn,
        "SELECT * FROM complete_setup(%s, 'Ada', %s, %s, 250, '{\"theme\": \"dark\"}')",
        [name, email, timezone],
    )


def test_complete_setup_fills_the_workspace_and_audits_once(conn: Conn) -> None:
    """complete_setup records the profile, marks setup complete and writes one audit row."""
    assert workspace(conn)["setup_completed_at"] is None

    returned = complete_setup(conn, name="  Acme HQ  ")

    ws = workspace(conn)
    assert returned == ws
    assert ws["name"] == "Acme HQ"
    assert (ws["owner_name"], ws["owner_email"]) == ("Ada", "ada@example.com")
    assert ws["timezone"] == "Europe/Paris"
    assert ws["default_monthly_budget_usd"] == Decimal(250)
    assert ws["preferences"] == {"theme": "dark"}
    assert ws["setup_step"] == "done"
    assert ws["setup_completed_at"] is not None
    audit = audit_rows(conn)
    assert len(audit) == 1
    assert audit[0]["action"] == "workspace.setup_completed"
    assert audit[0]["actor_kind"] == "operator"
    assert audit[0]["details"] == {"name": "Acme HQ", "owner_email": "ada@example.com"}


def test_complete_setup_twice_raises_and_changes_nothing(conn: Conn) -> None:
    """A replayed setup request is refused; the workspace and audit log stay as they were."""
    complete_setup(conn)
    before, audit_before = workspace(conn), audit_rows(conn)

    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="already completed"):
        complete_setup(conn, name="Other", email="eve@example.com", timezone="UTC")

    assert workspace(conn) == before
    assert audit_rows(conn) == audit_before


@pytest.mark.parametrize(
    "bad",
    [
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"email": "not-an-email"},
        {"email": "two@@example.com"},
        {"email": "ada lovelace@example.com"},
        {"timezone": "Mars/Olympus_Mons"},
        {"timezone": None},
    ],
)
def test_complete_setup_rejects_bad_input(conn: Conn, bad: dict[str, Any]) -> None:
    """Empty name, malformed email or unknown time zone raise and leave setup incomplete."""
    before = workspace(conn)

    with pytest.raises(errors.InvalidParameterValue):
        complete_setup(conn, **bad)

    assert workspace(conn) == before
    assert audit_rows(conn) == []
