"""Riding out a database outage: a growing pause between attempts, one log line when the
outage begins and one when it ends."""

from __future__ import annotations

import logging
import random
import time

__all__ = ["Outage", "describe"]


def describe(e: BaseException) -> str:
    """`Type: first line of the message`, for a log line or a health detail."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


class Outage:
    """The transient failures in a row of one loop (the ingestion worker, a re-embed runner).

    Call `failed(e)` after each transient failure and wait the seconds it returns (0.5 s
    doubling up to 15 s, with jitter, so that workers restarted together do not reconnect in
    step) before trying again; it logs the first failure of an outage only. Call `recovered()`
    after an attempt that worked: it logs, once per outage, that the loop is back.
    """

    def __init__(self, what: str, log: logging.Logger, *, base: float = 0.5, cap: float = 15.0) -> None:
        self.what = what
        self.log = log
        self.base = base
        self.cap = cap
        self.failures = 0
        self.started: float | None = None

    @property
    def ongoing(self) -> bool:
        return self.started is not None

    def failed(self, e: BaseException) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        if self.started is None:
            self.started = time.monotonic()
            self.log.warning("%s: %s; trying again until the database is back", self.what, describe(e))
        else:
            self.log.debug("%s: still failing: %s", self.what, describe(e))
        delay = min(self.cap, self.base * 2.0 ** min(self.failures, 16))
        self.failures += 1
        return delay / 2 + random.uniform(0, delay / 2)

    def recovered(self) -> None:
        """An attempt worked: the outage (if any) is over."""
        if self.started is None:
            return
        self.log.info(
            "%s: the database is back after %.1f s (%d failed attempt(s)); going on",
            self.what,
            time.monotonic() - self.started,
            self.failures,
        )
        self.started = None
        self.failures = 0
