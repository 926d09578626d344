"""Query embedding through ONNX Runtime: all-MiniLM-L6-v2 with the vectors of the torch model
(cosine >= 0.999) at a fraction of its per-query latency, and an LRU cache of query vectors.

The packaged model's BERT body is exported to ONNX once, on first use, into a cache
directory, and reused by every later start. Nothing is loaded at import time.
`load_query_embedder` hands out one query embedder per process and falls back to the torch
model when ONNX Runtime is missing or the export fails.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .batching import QueryBatcher
from .model import DEFAULT_MODEL, Embedder, Vectors, load_embedder, packaged_model_dir
from .onnx_export import OUTPUT, export_onnx, file_lock, weights_digest
from .query_settings import CACHE_SIZE, configured_query_embedders, default_cache_dir

__all__ = ["CachedQueryEmbedder", "OnnxEmbedder", "QueryEmbedder", "export_onnx", "load_query_embedder"]

log = logging.getLogger("hq_knowledge.onnx")

# Two intra-op threads (capped at the core count) for a query embedded alone: on the 2-core
# development machine a short query takes 2.8 ms p50 against 4.4 ms with one thread, for
# 1.25x the CPU time (benchmarks/query_embedding.py). While other searches are in flight
# the cores are busy anyway, and two threads cost more: they spin within a run, so a query
# took 15.6 ms of CPU against 9.9 ms with one thread (two callers at once, 99 against 105
# queries/s). A run then takes a single-threaded session of its own.
DEFAULT_THREADS = 2
# Longer texts are embedded but not cached: 2048 keys hold at most ~8M characters.
CACHEABLE_CHARS = 4096
# Queries embedded ahead of their search and kept until it asks (a search that fails its
# validation never does): the oldest is dropped past this many.
AHEAD_KEPT = 8


class QueryEmbedder(Embedder, Protocol):
    """An embedder with a cached single-query path."""

    def embed_query(self, text: str) -> NDArray[np.float32]: ...

    def embed_ahead(self, text: str) -> None: ...


class _QueryCache:
    """A thread-safe LRU of query vectors by exact text. Stored arrays are read-only and
    callers get copies, so nothing a caller does reaches the cache. `ahead` starts embedding
    a query before its search asks for it; the next `get` of that text takes the result."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._ahead: OrderedDict[str, Future[NDArray[np.float32]]] = OrderedDict()
        self._runner: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def get(self, text: str, embed: Callable[[Sequence[str]], Vectors]) -> NDArray[np.float32]:
        with self._lock:
            hit = self._entries.get(text)
            if hit is not None:
                self._entries.move_to_end(text)
                return hit.copy()
            started = self._ahead.pop(text, None)
        vector = None
        if started is not None:
            try:
                vector = started.result()
            except Exception:
                vector = None
        if vector is None:
            vector = np.array(embed([text])[0], dtype=np.float32)
        if self.size > 0 and len(text) <= CACHEABLE_CHARS:
            stored = vector.copy()
            stored.setflags(write=False)
            with self._lock:
                self._entries[text] = stored
                self._entries.move_to_end(text)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return vector

    def ahead(self, text: str, embed: Callable[[Sequence[str]], Vectors]) -> None:
        """Embed `text` on a thread of the cache's own, unless it is cached or under way."""
        with self._lock:
            if text in self._entries or text in self._ahead:
                return
            if self._runner is None:
                self._runner = ThreadPoolExecutor(1, thread_name_prefix="hq-query-ahead")
            future = self._runner.submit(lambda: np.array(embed([text])[0], dtype=np.float32))
            self._ahead[text] = future
            while len(self._ahead) > AHEAD_KEPT:  # started for searches that never came
                self._ahead.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class OnnxEmbedder:
    """all-MiniLM-L6-v2 (or another BERT sentence-transformers directory with mean pooling)
    through ONNX Runtime on the CPU, with the vectors of `SentenceTransformerEmbedder`.

    Texts are cut at `max_seq_length` word pieces including [CLS]/[SEP]: passages from the
    chunker always fit, a longer query is truncated. The first `load()` (or first embed)
    exports the model into `cache_dir` as `<name>-<weights sha256[:12]>.onnx` unless that
    file exists; concurrent processes export it once, under a file lock. Thread-safe."""

    provider = "onnx"

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        name: str = DEFAULT_MODEL,
        dims: int = 384,
        max_seq_length: int = 256,
        batch_size: int = 32,
        threads: int = DEFAULT_THREADS,
        cache_dir: str | Path | None = None,
        cache_size: int = CACHE_SIZE,
        quantized: bool = False,
        query_batch: int = 0,
    ) -> None:
        """`quantized`: weights as int8 (dynamic quantization of the exported model):
        faster, and close to the float model's vectors but not equal to them, so it is
        registered as a model of its own. `query_batch`: at most this many concurrent queries
        embedded in one run (embeddings.batching); 0: each query in a run of its own, runs
        concurrent."""
        self.model_dir = model_dir
        self.quantized = quantized
        self.name = name
        self.dims = dims
        self.max_seq_length = max_seq_length
        self.max_tokens = max_seq_length - 2  # [CLS] and [SEP]
        self.batch_size = batch_size
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._queries = _QueryCache(cache_size)
        # Through self.embed at each miss (not bound now), so that a replaced embed is used.
        self.batcher, self._miss = _query_misses(lambda texts: self.embed(texts), query_batch)
        self._onnx_path: Path | None = None
        self._session: Any = None
        self._single: Any = None  # one intra-op thread: for runs while the cores are busy
        self._runs = 0  # runs in progress
        self._runs_lock = threading.Lock()
        self._tokenizer: Any = None
        self._pad_id = 0
        self._count: Callable[[str], int] | None = None
        self._lock = threading.Lock()

    @property
    def onnx_path(self) -> Path:
        """Where the exported model is (or will be) cached. Hashes the weights on first call."""
        if self._onnx_path is None:
            model_dir = self.model_dir or packaged_model_dir()
            digest = weights_digest(model_dir)[:12]
            directory = self.cache_dir or default_cache_dir()
            # "-fused": exports before the BERT fusions were added are left alone.
            kind = "int8-per-channel" if self.quantized else "fused"
            self._onnx_path = directory / f"{self.name.replace('/', '_')}-{digest}-{kind}.onnx"
        return self._onnx_path

    def load(self) -> None:
        """Export the model if its cached file is missing, then open it. Idempotent.
        Raises ImportError without onnxruntime or the export's dependencies, ValueError
        when the model's width is not `dims`, and whatever the export raises."""
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            model_dir = self.model_dir or packaged_model_dir()
            path = self.onnx_path
            threads = max(1, min(self.threads, os.cpu_count() or 1))

            def open_session(threads: int) -> Any:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                # ONNX Runtime's threads spin-wait between runs by default: on a small machine
                # they then take the cores from the PostgreSQL backend that runs the search
                # statement next. They still spin within a run (waking them for each of the
                # ~100 parallel kernels of a query would cost more).
                options.add_session_config_entry("session.force_spinning_stop", "1")
                return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

            if not path.is_file():
                self._export(model_dir, path, replace=False)
            try:
                session = open_session(threads)
            except Exception as e:
                log.warning("cannot open %s (%s); exporting it again", path, e)
                self._export(model_dir, path, replace=True)
                session = open_session(threads)
            self._single = open_session(1) if threads > 1 else session
            width = session.get_outputs()[0].shape[-1]
            if width != self.dims:
                raise ValueError(f"model {self.name} gives {width} dimensions, expected {self.dims}")
            tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            tokenizer.no_padding()  # padded per batch below, to its longest text
            tokenizer.enable_truncation(max_length=self.max_seq_length)
            pad = tokenizer.token_to_id("[PAD]")
            self._pad_id = 0 if pad is None else pad
            self._tokenizer = tokenizer
            self._session = session

    def _export(self, model_dir: Path, path: Path, *, replace: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock")):
            if replace or not path.is_file():  # another process may have exported meanwhile
                log.info("exporting %s to %s", self.name, path)
                if not self.quantized:
                    export_onnx(model_dir, path)
                    return
                from onnxruntime.quantization import QuantType, quantize_dynamic

                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    plain = export_onnx(model_dir, Path(tmp) / "model.onnx", fuse=False)
                    # Per-channel scales: cosine to the float model's vectors 0.991 on average
                    # against 0.958 with one scale per tensor (30 passages of the sample).
                    root = logging.getLogger()
                    level = root.level
                    root.setLevel(logging.ERROR)  # it advises pre-processing on the root logger
                    try:
                        quantize_dynamic(
                            str(plain), str(Path(tmp) / "int8.onnx"), weight_type=QuantType.QInt8, per_channel=True
                        )
                    finally:
                        root.setLevel(level)
                    os.replace(Path(tmp) / "int8.onnx", path)

    def embed(self, texts: Sequence[str]) -> Vectors:
        """float32 (len(texts), dims), rows L2-normalised, in the order given. Not cached."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        self.load()
        texts = list(texts)
        encodings = [self._tokenizer.encode(texts[0])] if len(texts) == 1 else self._tokenizer.encode_batch(texts)
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        # Longest first, as sentence-transformers does: each batch pads to similar lengths.
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._run([encodings[i].ids for i in rows])
        return out

    def _run(self, batch: list[list[int]]) -> Vectors:
        longest = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        with self._runs_lock:
            # Alone (no other run, no other search in flight): all the threads; else one.
            alone = self._runs == 0 and searches_in_flight() <= 1
            self._runs += 1
        try:
            hidden = (self._session if alone else self._single).run([OUTPUT], feed)[0]
        finally:
            with self._runs_lock:
                self._runs -= 1
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=np.float32)

    def embed_query(self, text: str) -> NDArray[np.float32]:
        """float32 (dims,), L2-normalised; from the LRU cache when this exact text was
        embedded recently. The array is the caller's to keep or change."""
        return self._queries.get(text, self._miss)

    def embed_ahead(self, text: str) -> None:
        """Start embedding `text` on a thread of its own; the next `embed_query(text)` takes
        the vector (waiting for it if need be). For a search that is sure to follow."""
        self._queries.ahead(text, self._miss)

    def count_tokens(self, text: str) -> int:
        if self._count is None:
            from .tokens import load_tokenizer_counter

            self._count = load_tokenizer_counter(self.model_dir or packaged_model_dir())
        return int(self._count(text))


def _query_misses(
    embed: Callable[[Sequence[str]], Vectors], query_batch: int
) -> tuple[QueryBatcher | None, Callable[[Sequence[str]], Vectors]]:
    """How a query-cache miss is embedded: by `embed` directly (query_batch 0: concurrent
    queries run concurrently), or through a QueryBatcher that embeds up to `query_batch`
    concurrent queries in one run (one run at a time). Returns the batcher, if any, and the
    function a miss calls."""
    if query_batch <= 0:
        return None, embed
    batcher = QueryBatcher(embed, max_batch=query_batch, busy=searches_in_flight)
    return batcher, batcher.embed


class CachedQueryEmbedder:
    """Any `Embedder` with the cached `embed_query` of `OnnxEmbedder`: the fallback when
    ONNX is unavailable, and the query side of the fake embedder."""

    def __init__(self, inner: Embedder, cache_size: int = CACHE_SIZE, query_batch: int = 0) -> None:
        self.inner = inner
        self.name = inner.name
        self.dims = inner.dims
        self.max_tokens = inner.max_tokens
        self.provider = inner.provider
        self._queries = _QueryCache(cache_size)
        self.batcher, self._miss = _query_misses(lambda texts: self.inner.embed(texts), query_batch)

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self.inner.embed(texts)

    def embed_query(self, text: str) -> NDArray[np.float32]:
        return self._queries.get(text, self._miss)

    def embed_ahead(self, text: str) -> None:
        self._queries.ahead(text, self._miss)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


_load: list[Callable[[], int]] = []


def report_searches_in_flight(count: Callable[[], int]) -> None:
    """Tell the query embedders of this process how many searches are in flight (the service's
    admission control does): a batch waits for more queries only while others are coming, and
    a run takes all its threads only while its search is the only one."""
    _load[:] = [count]


def searches_in_flight() -> int:
    """What `report_searches_in_flight` was given says, else 0 (no batch waits, every run
    alone takes all its threads)."""
    return _load[0]() if _load else 0


_query_embedders: dict[tuple[str, Path | None], QueryEmbedder] = {}
_query_embedders_lock = threading.Lock()


def load_query_embedder(name: str = DEFAULT_MODEL, cache_dir: str | Path | None = None) -> QueryEmbedder:
    """The process-wide query embedder for `name`. For all-MiniLM-L6-v2: an `OnnxEmbedder`,
    loaded (exported on the first start) before it is returned; if ONNX Runtime is missing
    or the export fails, a warning is logged and the torch model of `load_embedder` is
    returned instead, wrapped with the same query cache. Other names ('fake') get their
    `load_embedder` embedder wrapped; an unknown name raises ValueError."""
    key = (name, Path(cache_dir) if cache_dir is not None else None)
    with _query_embedders_lock:
        if key not in _query_embedders:
            _query_embedders[key] = _make_query_embedder(name, key[1])
        return _query_embedders[key]


def query_batch_sizes() -> dict[int, int]:
    """Model runs of this process's query embedders by the number of queries they embedded."""
    with _query_embedders_lock:
        embedders = list(_query_embedders.values())
    sizes: Counter[int] = Counter()
    for embedder in embedders:
        batcher = getattr(embedder, "batcher", None)
        if isinstance(batcher, QueryBatcher):
            sizes.update(batcher.batch_sizes)
    return dict(sorted(sizes.items()))


def _make_query_embedder(name: str, cache_dir: Path | None) -> QueryEmbedder:
    settings = configured_query_embedders()
    size, batch = settings.cache_size, settings.batch
    if name != DEFAULT_MODEL:
        return CachedQueryEmbedder(load_embedder(name), cache_size=size, query_batch=batch)
    # Queries stay fp32: int8 query vectors against the fp32 passages cost 0.0057 nDCG@10 in
    # semantic search on Cranfield (0.3729 -> 0.3672; SciFact 0.0011), past the 0.002 allowed,
    # for 1.1-1.4x faster embedding on AVX2 (benchmarks/query_quality.py --int8).
    embedder = OnnxEmbedder(name=name, cache_dir=cache_dir, cache_size=size, query_batch=batch)
    try:
        embedder.load()
    except Exception as e:
        log.warning("ONNX query embedding unavailable (%s: %s); using the torch model instead", type(e).__name__, e)
        return CachedQueryEmbedder(load_embedder(name), cache_size=size, query_batch=batch)
    return embedder
