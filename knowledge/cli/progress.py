"""Progress for long commands: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["Advance", "progress"]


class Advance(Protocol):
    def __call__(self, note: str, n: int = 1) -> None: ...


@contextmanager
def progress(
    total: int | None, label: str, *, unit: str = "item", every: float = 5.0, initial: int = 0
) -> Iterator[Advance]:
    """Yield `advance(note, n=1)`, to call as items finish. On a terminal (stderr) this
    draws a tqdm bar with rate and ETA; otherwise it prints a line (done, rate, ETA) at
    most every `every` seconds and one at the end, so logs stay readable. `initial`: items
    already done before this run (a resumed job), counted in the bar but not the rate."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True, initial=initial) as bar:

            def advance(note: str, n: int = 1) -> None:
                bar.set_postfix_str(note[-40:], refresh=False)
                bar.update(n)

            yield advance
        return
    done = 0
    start = last = time.monotonic()

    def advance_plain(note: str, n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every:
            last = now
            print(f"{label}: {_line(done, initial, total, now - start, unit)}", file=sys.stderr, flush=True)

    yield advance_plain
    elapsed = time.monotonic() - start
    print(f"{label}: {done} {unit}s in {elapsed:.1f}s", file=sys.stderr, flush=True)


def _line(done: int, initial: int, total: int | None, seconds: float, unit: str) -> str:
    rate = done / max(seconds, 1e-9)
    text = f"{initial + done}/{total} {unit}s" if total else f"{done} {unit}s"
    text += f", {rate:.1f}/s"
    if total and rate > 0:
        left = max(total - initial - done, 0) / rate
        text += f", ETA {_clock(left)}"
    return text


def _clock(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
