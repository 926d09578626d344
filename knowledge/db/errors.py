"""Driver errors sorted by what the caller should do about them.

- a *conflict* (deadlock, serialization failure, lock not available): the transaction lost a
  race and may simply run again; after a few tries it is the user's 409;
- *disk full*: nothing was written; reads still work; 507 until space is freed;
- *unavailable* (connection lost, server shutting down or starting, too many connections):
  the database will probably be back; 503 with Retry-After;
- anything else is a bug or bad SQL, and is not translated.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg import errors as pg

from knowledge.errors import Conflict, DatabaseUnavailable, InsufficientStorage, KnowledgeError, first_line

__all__ = ["is_conflict", "is_transient", "retry_conflicts", "translate"]

log = logging.getLogger("hq_knowledge.db")
T = TypeVar("T")

# SQLSTATE classes: 08 connection exception, 57P admin/crash shutdown, cannot connect now,
# 53 insufficient resources (53100 disk full, 53300 too many connections).
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "57P04", "53300", "53400")


def is_conflict(e: BaseException) -> bool:
    """A lost race: running the same transaction again may succeed."""
    return isinstance(e, pg.DeadlockDetected | pg.SerializationFailure | pg.LockNotAvailable)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, pg.DiskFull) or (isinstance(e, psycopg.Error) and "No space left on device" in str(e))


def is_unavailable(e: BaseException) -> bool:
    """The server or the connection went away, or is refusing work for now."""
    if not isinstance(e, psycopg.Error):
        return False
    state = e.sqlstate or ""
    if state.startswith("08") or state in _UNAVAILABLE_STATES:
        return True
    # A broken connection raises OperationalError without SQLSTATE ("server closed the
    # connection unexpectedly", "consuming input failed").
    return isinstance(e, psycopg.OperationalError) and not state


def is_transient(e: BaseException) -> bool:
    """Worth retrying after a pause, for a worker: unavailable, disk full, or a conflict."""
    return is_unavailable(e) or is_disk_full(e) or is_conflict(e)


def translate(e: psycopg.Error) -> KnowledgeError | None:
    """Ours for a driver error the user should see as 409, 503 or 507; None for the rest."""
    first = first_line(e)
    if is_conflict(e):
        return Conflict(
            f"the change conflicted with a concurrent change ({first}): "
            "nothing was written; read the items again and retry"
        )
    if is_disk_full(e):
        return InsufficientStorage(
            f"disk full: the database could not write ({first}); nothing was written; free space on the database's disk"
        )
    if is_unavailable(e):
        return DatabaseUnavailable(f"the database is unavailable: {first}")
    return None


def retry_conflicts(run: Callable[[], T], *, attempts: int = 4, what: str = "the change") -> T:
    """`run()` again (after a short random pause) while it loses races; then the 409.

    `run` must be one whole transaction (its effects rolled back when it raises), so that
    running it again is safe.
    """
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except psycopg.Error as e:
            if not is_conflict(e):
                raise
            if attempt == attempts:
                error = translate(e)
                assert error is not None
                raise error from e
            log.info("%s lost a race (%s): running it again", what, type(e).__name__)
            time.sleep(random.uniform(0.005, 0.02) * 2**attempt)
    raise AssertionError("unreachable")
