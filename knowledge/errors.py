"""The package's error hierarchy; `status` is the HTTP status the API answers with."""

from __future__ import annotations

__all__ = [
    "Conflict",
    "DatabaseUnavailable",
    "Forbidden",
    "InsufficientStorage",
    "InvalidInput",
    "KnowledgeError",
    "MigrationError",
    "NotFound",
    "Overloaded",
    "PreconditionFailed",
    "ServiceUnavailable",
    "TooLarge",
    "Unauthorized",
    "first_line",
]


class KnowledgeError(Exception):
    """Base of every error this package raises on purpose; the message is shown to the user."""

    status: int = 500
    retry_after: int | None = None
    """Seconds after which the same request may succeed (a Retry-After header), if known."""

    field: str | None
    """The input the error concerns, by the name the service gives it (a query parameter, a
    body field: `q`, `max_tokens`, `id`), when it concerns one: the API answers it beside the
    message, the MCP server names the tool's argument from it, the client raises it again."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(KnowledgeError):
    status = 404


class Conflict(KnowledgeError):
    status = 409


class InvalidInput(KnowledgeError):
    status = 422


class Unauthorized(KnowledgeError):
    """No key where one is needed, or a key that is unknown or revoked."""

    status = 401


class Forbidden(KnowledgeError):
    """The caller may not do this: a key without the scope it needs, or a request from a
    host or origin the service does not answer (DNS rebinding, cross-site requests)."""

    status = 403


class PreconditionFailed(KnowledgeError):
    """The item changed since the version the caller names (an If-Match that no longer holds):
    nothing was written; the caller must read the item again and reapply its change."""

    status = 412


class TooLarge(KnowledgeError):
    """A request body or a document's content is over a size limit; the message names it."""

    status = 413


class DatabaseUnavailable(KnowledgeError):
    """The database cannot be reached or used: wrong URL, password, missing extension, or a
    server that is down or restarting (then a retry after `retry_after` seconds may succeed)."""

    status = 503
    retry_after = 2


class InsufficientStorage(KnowledgeError):
    """The database's disk is full: nothing was written; reads still work. A write may succeed
    once space is freed."""

    status = 507
    retry_after = 30


class ServiceUnavailable(KnowledgeError):
    """The knowledge service cannot be reached over HTTP (raised by `knowledge.client`): it is
    not running, or the base URL is wrong. Nothing was sent, or no answer came back."""

    status = 503


class Overloaded(KnowledgeError):
    """Too many searches at once (knowledge.search.admission): nothing was done; the same request
    may succeed after `retry_after` seconds."""

    status = 503
    retry_after = 1


class MigrationError(KnowledgeError):
    """A migration failed, or a migration file changed after it was applied."""

    status = 500


def first_line(e: BaseException) -> str:
    """The first line of `e`'s message (a KnowledgeError's message too), or its type's name
    when it has none: for one-line logs, health details and error messages."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
