"""Admission control for searches: a bound on searches in flight, a short queue, then 503.

Every search holds one of `limit` slots while it embeds its query and runs its statement.
Past the limit a search waits in a queue of at most `queue` places, for at most `max_wait`
seconds; a search that finds the queue full, or waits longer, is refused at once with
`Overloaded` (HTTP 503 with Retry-After; a tool error saying to retry for MCP). On two cores
more searches at a time only share the same CPU: latency grows with every one admitted, and
without a bound a burst piles up requests that all finish late. With it, the p99 of admitted
searches stays near (1 + queue/limit) times a search's own time, and throughput stays at what
the machine does.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from knowledge.errors import Overloaded

__all__ = ["Admission", "Overloaded", "admission_for", "default_limit", "default_queue"]


def default_limit(cores: int | None = None) -> int:
    """Searches in flight by default: two per core (a search waits on PostgreSQL part of its
    time, so one per core would leave a core idle), at least 2."""
    return max(2, 2 * (cores or os.cpu_count() or 1))


def default_queue(limit: int) -> int:
    """Waiting places by default: two per slot, so a burst of agents booting together waits
    its turn instead of being refused, and a search that waits is answered within a few
    searches' time (at 100k passages, 32 clients: p99 0.50 s against 0.74 s with four per
    slot at the same throughput; benchmarks/load.py)."""
    return 2 * limit


def admission_for(limit: int | None = None, queue: int | None = None) -> Admission:
    """The service's admission control: `limit` searches in flight (default_limit() when
    None) and `queue` waiting places (default_queue(limit) when None)."""
    limit = limit if limit is not None else default_limit()
    return Admission(limit, queue if queue is not None else default_queue(limit))


@dataclass
class AdmissionStats:
    """Searches since start: given a slot at once (admitted), made to wait for one (queued),
    turned away with 503 because the queue was full (refused) or after `max_wait` (timed_out)."""

    admitted: int = 0
    queued: int = 0
    refused: int = 0
    timed_out: int = 0


class Admission:
    """At most `limit` holders of `slot()` at a time, `queue` more waiting, served first come
    first served: a slot given back goes straight to the longest waiter, so a search arriving
    later cannot take it first. Thread-safe."""

    def __init__(self, limit: int, queue: int, max_wait: float = 5.0) -> None:
        if limit < 1 or queue < 0:
            raise ValueError(f"limit must be at least 1 and queue 0 or more, got limit={limit}, queue={queue}")
        self.limit = limit
        self.queue = queue
        self.max_wait = max_wait
        self._running = 0
        self._waiters: deque[threading.Event] = deque()
        self._lock = threading.Lock()
        self.stats = AdmissionStats()

    @property
    def in_flight(self) -> int:
        """Searches holding a slot or waiting for one."""
        return self._running + len(self._waiters)

    def refuse_if_full(self) -> None:
        """Raise Overloaded now when every slot and waiting place is taken: a cheap check
        before a request is handed to a worker thread (`slot()` still decides)."""
        if self._running >= self.limit and len(self._waiters) >= self.queue:
            with self._lock:
                self.stats.refused += 1
            raise Overloaded(self._busy_message())

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the body. Raises Overloaded when the queue is full or the wait
        exceeds `max_wait`."""
        with self._lock:
            if self._running < self.limit and not self._waiters:
                self._running += 1
                self.stats.admitted += 1
                turn = None
            elif len(self._waiters) >= self.queue:
                self.stats.refused += 1
                raise Overloaded(self._busy_message())
            else:
                turn = threading.Event()
                self._waiters.append(turn)
                self.stats.queued += 1
        if turn is not None and not turn.wait(self.max_wait):
            with self._lock:
                if not turn.is_set():  # not handed a slot meanwhile
                    self._waiters.remove(turn)
                    self.stats.timed_out += 1
                    raise Overloaded(self._busy_message())
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # the slot passes on: _running stays
                self.stats.admitted += 1
            else:
                self._running -= 1

    def _busy_message(self) -> str:
        return (
            f"the service is busy: {self._running} searches running and {len(self._waiters)} waiting "
            f"(HQ_SEARCH_CONCURRENCY {self.limit}, HQ_SEARCH_QUEUE {self.queue}); retry in "
            f"{Overloaded.retry_after} s"
        )
