"""Progress for long commands: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress"]


@contextmanager
def progress(total: int | None, label: str, *, unit: str = "item",
             every: float = 5.0) -> Iterator[Callable[[str], None]]:
    """Yield `advance(note)`, to call once per finished item. On a terminal (stderr) this
    draws a tqdm bar with rate and ETA; otherwise it prints a line at most every `every`
    seconds and one at the end, so logs stay readable."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True) as bar:
            def advance(note: str) -> None:
                bar.set_postfix_str(note[-40:], refresh=False)
                bar.update(1)

            yield advance
        return
    done = 0
    start = last = time.monotonic()

    def advance_plain(note: str) -> None:
        nonlocal done, last
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            rate = done / max(now - start, 1e-9)
            of = f"/{total}" if total else ""
            print(f"{label}: {done}{of} {unit}s, {rate:.1f}/s", file=sys.stderr, flush=True)

    yield advance_plain
    elapsed = time.monotonic() - start
    print(f"{label}: {done} {unit}s in {elapsed:.1f}s", file=sys.stderr, flush=True)
