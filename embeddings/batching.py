"""Dynamic batching of query embeddings: concurrent queries embedded in one model run.

A search thread that needs a query vector hands its text to `QueryBatcher.embed_one` and
waits. One thread of the batcher runs the model: it takes the first text waiting, then every
other text that arrives within `window` seconds (or until `max_batch` are collected), embeds
them in a single call (one padded batch) and hands each vector back to its caller. A query
that arrives alone waits for no one: the window is only waited out while other searches are
in flight (`busy`), since only they can send a text to share the batch with.

It pays where a model run has a large fixed cost next to its per-token work (an accelerator,
a wide CPU). On the 2-core CPUs measured it does not: a batch costs what its queries cost one
by one, more once padded to its longest, and one run at a time leaves the second core to
PostgreSQL but makes queries wait for each other. The service therefore turns it on only when
asked (HQ_QUERY_BATCH; embeddings.onnx).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_WINDOW", "QueryBatcher"]

DEFAULT_MAX_BATCH = 16
"""At most this many queries per model run (batches of short queries stay in cache)."""
DEFAULT_WINDOW = 0.0015
"""Seconds a run waits for more queries once it has one, while other searches are in flight."""


@dataclass
class _Request:
    text: str
    done: threading.Event = field(default_factory=threading.Event)
    vector: NDArray[np.float32] | None = None
    error: BaseException | None = None


class QueryBatcher:
    """Embeds single texts with `embed` (texts -> float32 rows), batching concurrent calls.
    Thread-safe. `busy()` says how many searches are in flight (the caller included): the
    window is waited out only when it is more than the batch collected so far. The thread
    starts on the first call and stops with `close()`."""

    def __init__(
        self,
        embed: Callable[[Sequence[str]], NDArray[np.float32]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        window: float = DEFAULT_WINDOW,
        busy: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window < 0:
            raise ValueError(f"window must be 0 or more seconds, got {window}")
        self._embed = embed
        self.max_batch = max_batch
        self.window = window
        self._busy = busy
        self._queue: SimpleQueue[_Request | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batch_sizes: Counter[int] = Counter()
        """How many model runs embedded each number of queries, since the start."""

    def embed_one(self, text: str) -> NDArray[np.float32]:
        """float32 (dims,): `text` embedded, in a batch with whatever queries arrive with it.
        Raises what `embed` raised for that batch, and RuntimeError once closed."""
        request = _Request(text)
        with self._lock:
            if self._closed:
                raise RuntimeError("the query batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="hq-query-batcher", daemon=True)
                self._thread.start()
            self._queue.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.vector is not None
        return request.vector

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """The `embed` signature, for one text through the batcher (a query cache's miss);
        several texts go straight to the model, as one batch of their own."""
        if len(texts) == 1:
            return self.embed_one(texts[0])[None, :]
        return self._embed(texts)

    def close(self) -> None:
        """Stop the thread once the queries already handed in are embedded."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """`first` and the texts that join it; True when `close()` was met meanwhile."""
        batch = [first]
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._busy is None or self._busy() <= len(batch):
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except Empty:
                    break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            vectors = np.asarray(self._embed([r.text for r in batch]), dtype=np.float32)
        except BaseException as e:
            for request in batch:
                request.error = e
                request.done.set()
            return
        self.batch_sizes[len(batch)] += 1
        for request, vector in zip(batch, vectors, strict=True):
            request.vector = np.array(vector, dtype=np.float32)  # the caller's own copy
            request.done.set()
