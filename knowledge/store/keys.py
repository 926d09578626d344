"""API keys: created once and shown once, stored as a SHA-256, checked on every request that
carries one.

A key is `hqk_` and 43 characters of URL-safe base64 (256 random bits). Its scope says what
its caller may do: `read` searches and reads, `write` also creates and updates, `admin` also
archives and deletes, re-embeds, switches models and manages keys. A key bound to an agent
makes that agent who its caller is.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args
from uuid import UUID

import psycopg
from psycopg.rows import class_row, tuple_row

from knowledge.errors import InvalidInput, NotFound
from knowledge.store.validation import check_name, check_slug

__all__ = [
    "CALLER_KEY",
    "KEY_PREFIX",
    "SCOPES",
    "ApiKey",
    "Caller",
    "NewKey",
    "Scope",
    "active_key_count",
    "allows",
    "caller_of",
    "check_scope",
    "create_key",
    "identify",
    "list_keys",
    "revoke_key",
]

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
KEY_PREFIX = "hqk_"
_SHOWN = 12  # characters of a key kept in clear (its prefix), enough to tell keys apart in a list
_LAST_USED_EVERY = "1 minute"  # last_used_at is written at most this often per key
CALLER_KEY = "hq_caller"  # where the API's gate leaves the Caller in a request's ASGI scope


@dataclass(frozen=True)
class ApiKey:
    id: UUID
    name: str
    prefix: str
    scope: str
    agent_slug: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewKey:
    """A key just created: `secret` is the key itself, shown this once and never stored."""

    key: ApiKey
    secret: str


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's scope and agent, or (key None) the local operator of a
    loopback service without keys, who may do everything."""

    scope: Scope
    agent: str | None = None
    key: str | None = None  # the key's name, for messages and logs

    def describe(self) -> str:
        return f"the key {self.key!r} (scope {self.scope})" if self.key else f"this caller (scope {self.scope})"


def caller_of(request: Any) -> Caller | None:
    """The Caller that the API's gate (knowledge.api.security.Gate) left in this request's
    ASGI scope (a Starlette request or the scope itself); None where no gate ran: stdio,
    the command line, tests calling functions directly."""
    values = getattr(request, "scope", request)
    found = values.get(CALLER_KEY) if isinstance(values, dict) else None
    return found if isinstance(found, Caller) else None


def allows(granted: str, needed: Scope) -> bool:
    """Whether a key of scope `granted` may do what needs `needed`."""
    return granted in SCOPES and SCOPES.index(granted) >= SCOPES.index(needed)


def check_scope(scope: str) -> Scope:
    """The scope, unchanged. Raises InvalidInput unless it is read, write or admin."""
    if scope not in SCOPES:
        raise InvalidInput(f"scope is {scope!r}; give one of {', '.join(SCOPES)}")
    return scope


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


_COLUMNS = "id, name, prefix, scope, agent_slug, created_at, last_used_at, revoked_at"


def create_key(
    conn: psycopg.Connection[Any], *, scope: str, name: str | None = None, agent: str | None = None
) -> NewKey:
    """A new key of `scope`, bound to `agent` (an existing agent's slug) when given. The caller
    must show `secret` to the user now: only its hash is stored. Raises InvalidInput for a bad
    scope or name, or an agent that does not exist."""
    scope = check_scope(scope)
    if agent is not None:
        check_slug(agent)
        if conn.execute("SELECT 1 FROM agents WHERE slug = %s", (agent,)).fetchone() is None:
            known = [r[0] for r in conn.execute("SELECT slug FROM agents ORDER BY slug LIMIT 20")]
            raise NotFound(
                f"agent: no agent has the slug {agent!r} (agents: {', '.join(known) or 'none'})", field="agent"
            )
    label = check_name("name", name, max_chars=100) if name else f"{agent or scope} key"
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        row = cur.execute(
            f"INSERT INTO api_keys (name, prefix, key_hash, scope, agent_slug) VALUES (%s, %s, %s, %s, %s) "
            f"RETURNING {_COLUMNS}",
            (label, secret[:_SHOWN], _digest(secret), scope, agent),
        ).fetchone()
    assert row is not None
    return NewKey(key=row, secret=secret)


def list_keys(conn: psycopg.Connection[Any], *, include_revoked: bool = False) -> list[ApiKey]:
    """Keys, oldest first; revoked ones only with `include_revoked`."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, id").fetchall()


def revoke_key(conn: psycopg.Connection[Any], ref: str) -> ApiKey:
    """Revoke the key whose id, name or prefix is `ref` (at once: its next request gets 401).
    Raises NotFound when no live key matches, InvalidInput when several do."""
    try:
        by_id: UUID | None = UUID(ref)
    except ValueError:
        by_id = None
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        matches = cur.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE revoked_at IS NULL "
            "AND (id = %s OR name = %s OR prefix = %s OR (length(%s) >= 8 AND starts_with(prefix, %s)))",
            (by_id, ref, ref, ref, ref),
        ).fetchall()
        if not matches:
            raise NotFound(f"no live key has the id, name or prefix {ref!r}; `hq-knowledge keys list` shows them")
        if len(matches) > 1:
            raise InvalidInput(
                f"{len(matches)} keys match {ref!r}; give the id of one ({', '.join(str(k.id) for k in matches)})"
            )
        row = cur.execute(
            f"UPDATE api_keys SET revoked_at = now() WHERE id = %s RETURNING {_COLUMNS}", (matches[0].id,)
        ).fetchone()
    assert row is not None
    return row


def identify(conn: psycopg.Connection[Any], secret: str) -> Caller | None:
    """The caller a key stands for, or None when it is no live key. Notes when it was used."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT name, scope, agent_slug, last_used_at IS NULL OR "
            f"last_used_at < now() - interval '{_LAST_USED_EVERY}' FROM api_keys "
            "WHERE key_hash = %s AND revoked_at IS NULL",
            (_digest(secret),),
        ).fetchone()
        if row is not None and row[3]:
            cur.execute("UPDATE api_keys SET last_used_at = now() WHERE key_hash = %s", (_digest(secret),))
    if row is None:
        return None
    return Caller(scope=check_scope(row[1]), agent=row[2], key=row[0])


def active_key_count(conn: psycopg.Connection[Any]) -> int:
    """Keys that are not revoked; 0 when the api_keys table does not exist yet."""
    with conn.cursor(row_factory=tuple_row) as cur:
        exists = cur.execute("SELECT to_regclass('api_keys') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0
        row = cur.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()
    return int(row[0]) if row else 0
