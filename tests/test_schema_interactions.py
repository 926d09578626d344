"""Interactions (migration 008): the last interaction and the count the triggers keep on contacts
and organizations, also under concurrent writers."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import pytest
from psycopg import errors

from .schema_calls import (
    HOUR,
    T0,
    Conn,
    Connect,
    commit_in_thread,
    insert_returning_id,
    one,
    row_values,
    scalar,
    wait_until_blocked,
)


def insert_contact(conn: Conn, first_name: str) -> UUID:
    return insert_returning_id(conn, "INSERT INTO contacts (first_name) VALUES (%s) RETURNING id", [first_name])


def insert_organization(conn: Conn, name: str) -> UUID:
    return insert_returning_id(conn, "INSERT INTO organizations (name) VALUES (%s) RETURNING id", [name])


def add_interaction(conn: Conn, contact: UUID, occurred_at: datetime, organization: UUID | None = None) -> UUID:
    return insert_returning_id(
        conn,
        "INSERT INTO interactions (contact_id, organization_id, occurred_at) VALUES (%s, %s, %s) RETURNING id",
        [contact, organization, occurred_at],
    )


def contact_stats(conn: Conn, contact: UUID) -> tuple[datetime | None, int]:
    """The contact's last interaction and count of interactions, as kept by the triggers."""
    return row_values(conn, "SELECT last_interaction_at, interaction_count FROM contacts WHERE id = %s", [contact])


def contact_truth(conn: Conn, contact: UUID) -> tuple[datetime | None, int]:
    """The contact's last interaction and count of interactions, counted from the interactions."""
    sql = "SELECT max(occurred_at), count(*)::integer FROM interactions WHERE contact_id = %s"
    return row_values(conn, sql, [contact])


def org_last(conn: Conn, organization: UUID) -> datetime | None:
    row = one(conn, "SELECT last_interaction_at FROM organizations WHERE id = %s", [organization])
    last: datetime | None = row["last_interaction_at"]
    return last


def test_interactions_keep_contact_and_organization_last_interaction(conn: Conn) -> None:
    """Inserts raise the count and move last_interaction_at to the newest occurred_at."""
    contact = insert_contact(conn, "Ada")
    org = insert_organization(conn, "Acme")
    assert contact_stats(conn, contact) == (None, 0)

    add_interaction(conn, contact, T0, org)
    assert contact_stats(conn, contact) == (T0, 1)
    assert org_last(conn, org) == T0

    add_interaction(conn, contact, T0 + HOUR, org)
    assert contact_stats(conn, contact) == (T0 + HOUR, 2)
    assert org_last(conn, org) == T0 + HOUR


def test_backdated_interaction_counts_but_does_not_move_last_interaction(conn: Conn) -> None:
    """An insert or an update dated in the past keeps last_interaction_at at the true maximum."""
    contact = insert_contact(conn, "Ada")
    org = insert_organization(conn, "Acme")
    add_interaction(conn, contact, T0, org)
    latest = add_interaction(conn, contact, T0 + HOUR, org)

    add_interaction(conn, contact, T0 - 24 * HOUR, org)
    assert contact_stats(conn, contact) == (T0 + HOUR, 3)
    assert org_last(conn, org) == T0 + HOUR

    conn.execute("UPDATE interactions SET occurred_at = %s WHERE id = %s", [T0 - 48 * HOUR, latest])
    assert contact_stats(conn, contact) == (T0, 3)
    assert org_last(conn, org) == T0


def test_moving_an_interaction_to_another_contact_updates_both(conn: Conn) -> None:
    """Changing contact_id / organization_id recomputes the old and the new owner."""
    ada, bob = insert_contact(conn, "Ada"), insert_contact(conn, "Bob")
    acme, initech = insert_organization(conn, "Acme"), insert_organization(conn, "Initech")
    add_interaction(conn, ada, T0, acme)
    moved = add_interaction(conn, ada, T0 + HOUR, acme)
    add_interaction(conn, bob, T0 - HOUR, initech)

    conn.execute(
        "UPDATE interactions SET contact_id = %s, organization_id = %s WHERE id = %s",
        [bob, initech, moved],
    )

    assert contact_stats(conn, ada) == (T0, 1)
    assert contact_stats(conn, bob) == (T0 + HOUR, 2)
    assert org_last(conn, acme) == T0
    assert org_last(conn, initech) == T0 + HOUR

    conn.execute("UPDATE interactions SET organization_id = NULL WHERE id = %s", [moved])
    assert org_last(conn, initech) == T0 - HOUR


def test_deleting_interactions_recomputes_contact_and_organization(conn: Conn) -> None:
    """Deletes lower the count and fall back to the newest remaining interaction, or NULL."""
    contact = insert_contact(conn, "Ada")
    org = insert_organization(conn, "Acme")
    older = add_interaction(conn, contact, T0, org)
    newer = add_interaction(conn, contact, T0 + HOUR, org)

    conn.execute("DELETE FROM interactions WHERE id = %s", [newer])
    assert contact_stats(conn, contact) == (T0, 1)
    assert org_last(conn, org) == T0

    conn.execute("DELETE FROM interactions WHERE id = %s", [older])
    assert contact_stats(conn, contact) == (None, 0)
    assert org_last(conn, org) is None


def test_deleting_an_organization_or_contact_with_interactions(conn: Conn) -> None:
    """Deleting an organization detaches its interactions; deleting a contact removes them."""
    ada, bob = insert_contact(conn, "Ada"), insert_contact(conn, "Bob")
    org = insert_organization(conn, "Acme")
    add_interaction(conn, ada, T0, org)
    add_interaction(conn, bob, T0 + HOUR, org)

    conn.execute("DELETE FROM organizations WHERE id = %s", [org])
    assert scalar(conn, "SELECT count(*) AS n FROM interactions WHERE organization_id IS NULL") == 2
    assert contact_stats(conn, ada) == (T0, 1)

    conn.execute("DELETE FROM contacts WHERE id = %s", [ada])
    assert scalar(conn, "SELECT count(*) AS n FROM interactions") == 1
    assert contact_stats(conn, bob) == (T0 + HOUR, 1)


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_concurrent_interactions_keep_counts_right(conn: Conn, connect: Connect, isolation: str) -> None:
    """Two overlapping transactions add interactions for one contact and one organization.

    Whatever commits, the contact's count and last_interaction_at and the organization's
    last_interaction_at match the interactions table: no update is lost.
    """
    ada, bob = insert_contact(conn, "Ada"), insert_contact(conn, "Bob")
    org = insert_organization(conn, "Acme")
    first, second = connect(), connect()
    first.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    second.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    second.execute("SELECT count(*) FROM interactions")
    add_interaction(first, ada, T0 + HOUR, org)
    add_interaction(first, bob, T0 + 2 * HOUR, org)

    pending = commit_in_thread(second, lambda: add_interaction(second, ada, T0, org))
    wait_until_blocked(conn, second.info.backend_pid)
    first.execute("COMMIT")
    try:
        pending.result(timeout=10)
    except errors.SerializationFailure:
        assert isolation != "READ COMMITTED"

    for contact in (ada, bob):
        assert contact_stats(conn, contact) == contact_truth(conn, contact)
    assert org_last(conn, org) == T0 + 2 * HOUR
    if isolation == "READ COMMITTED":
        assert contact_stats(conn, ada) == (T0 + HOUR, 2)
