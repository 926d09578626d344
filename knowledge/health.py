"""The state of a process's long-running parts (the ingestion worker, the LISTEN connection,
the re-embed runners, the embedded server's watchdog), as readiness and `status` report it.

A component is set to a state when it changes (`set`), and beats (`beat`) each time its loop
goes round, so that a loop stuck or dead shows as a beat that is too old. Thread-safe: the
components run in their own threads and the API reads from its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

__all__ = ["Component", "Health", "State"]

State = str
"""'ok', 'starting', 'recovering' (a transient fault, retrying), 'stopped' or 'failed'."""


@dataclass(frozen=True)
class Component:
    name: str
    state: State
    since: datetime
    """When it entered this state."""
    detail: str = ""
    last_beat: float | None = None
    """time.monotonic() of its last loop, None before the first."""
    stale_after: float | None = None
    """Seconds without a beat after which the component counts as stuck (None: no beat expected)."""

    def beat_age(self, now: float | None = None) -> float | None:
        if self.last_beat is None:
            return None
        return (time.monotonic() if now is None else now) - self.last_beat

    @property
    def stuck(self) -> bool:
        age = self.beat_age()
        return self.stale_after is not None and self.state == "ok" and age is not None and age > self.stale_after


class Health:
    """The components of one process, by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._components: dict[str, Component] = {}

    def set(self, name: str, state: State, detail: str = "", *, stale_after: float | None = None) -> None:
        """Record `name`'s state; `since` moves only when the state changes."""
        with self._lock:
            old = self._components.get(name)
            if old is not None and old.state == state:
                self._components[name] = replace(
                    old, detail=detail, stale_after=(stale_after if stale_after is not None else old.stale_after)
                )
                return
            self._components[name] = Component(
                name,
                state,
                datetime.now(UTC),
                detail,
                last_beat=old.last_beat if old else None,
                stale_after=stale_after if stale_after is not None else (old.stale_after if old else None),
            )

    def beat(self, name: str) -> None:
        """`name`'s loop went round (it is alive and not stuck)."""
        with self._lock:
            old = self._components.get(name)
            if old is not None:
                self._components[name] = replace(old, last_beat=time.monotonic())

    def get(self, name: str) -> Component | None:
        with self._lock:
            return self._components.get(name)

    def components(self) -> list[Component]:
        with self._lock:
            return sorted(self._components.values(), key=lambda c: c.name)
