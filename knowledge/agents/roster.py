"""The agents the knowledge service knows of, as the operator's page lists them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

__all__ = ["AgentSummary", "list_agents"]


@dataclass(frozen=True)
class AgentSummary:
    slug: str
    name: str


def list_agents(conn: psycopg.Connection[Any]) -> list[AgentSummary]:
    """Every agent's slug and name, ordered by slug."""
    with conn.cursor(row_factory=class_row(AgentSummary)) as cur:
        return cur.execute("SELECT slug, name FROM agents ORDER BY slug").fetchall()
