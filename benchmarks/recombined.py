"""Vectors of real text recombined, for the vector-index benchmark's sizes beyond the real passages.

Embedding a million passages takes ~3 hours on this machine's 2 cores, so the larger sizes
are built from real pieces of text instead:

- `pieces()`: every document of the collections in ../shared/datasets/ cut into pieces
  (sentences; pieces under 8 words joined to the next, pieces over 48 words cut), each
  embedded with the real model (the ONNX export of all-MiniLM-L6-v2's weights, which gives
  torch's vectors). Cached under benchmarks/.data/vector_index/.
- `compose()`: a synthetic passage is 2-4 pieces of one document, or of that document and
  one of its 5 nearest documents (half of the passages), in document order. Its vector is
  the mean of the pieces' vectors weighted by their word-piece counts, renormalised: what
  a mean-pooling model gives for the concatenated text, up to the context between pieces.
- `fidelity()`: embeds the concatenated texts of a sample of composed passages with the
  real model and compares: how far the composed vectors are from real embeddings.

Unlike Gaussian noise around real vectors (locally 384-dimensional: the exact top-10 turns
into near-ties among noisy copies), the composed vectors lie where embeddings of real text lie.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import DATASETS

Vectors = np.ndarray[Any, np.dtype[np.float32]]
MIN_WORDS, MAX_WORDS = 8, 48
COLLECTIONS = ("scifact", "npl", "cranfield")


def split(text: str) -> list[str]:
    """Sentences of `text`, short ones joined to the next, long ones cut at MAX_WORDS words."""
    out: list[str] = []
    carry: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        carry += sentence.split()
        if len(carry) < MIN_WORDS:
            continue
        for start in range(0, len(carry), MAX_WORDS):
            out.append(" ".join(carry[start:start + MAX_WORDS]))
        carry = []
    if carry:
        if out and len(carry) < MIN_WORDS:
            out[-1] += " " + " ".join(carry)
        else:
            out.append(" ".join(carry))
    return out


class Pieces:
    """The pieces of every document: texts, unit vectors, word-piece counts, document index."""

    def __init__(self, texts: list[str], vectors: Vectors, tokens: np.ndarray[Any, Any],
                 doc: np.ndarray[Any, Any]) -> None:
        self.texts, self.vectors, self.tokens, self.doc = texts, vectors, tokens, doc
        starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
        self.start = dict(zip(doc[starts].tolist(), starts.tolist(), strict=True))
        self.count = dict(zip(doc[starts].tolist(), np.diff(np.r_[starts, len(doc)]).tolist(), strict=True))
        self.docs = np.array(sorted(self.start))

    def of(self, d: int) -> range:
        return range(self.start[d], self.start[d] + self.count[d])


def pieces(work: Path, embedder: Any = None) -> Pieces:
    """The pieces of the collections and their vectors (embedded once, then read from `work`)."""
    cache = work / "pieces.npz"
    texts: list[str] = []
    doc: list[int] = []
    d = 0
    for collection in COLLECTIONS:
        with (DATASETS / collection / "corpus.jsonl").open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                d += 1
                for piece in split(f"{row.get('title') or ''}. {row.get('text') or ''}".lstrip(". ")):
                    texts.append(piece)
                    doc.append(d)
    tokens = np.array([len(e.ids) - 2 for e in _tokenizer().encode_batch(texts)])
    if cache.exists():
        saved = np.load(cache)
        if len(saved["vectors"]) == len(texts):
            return Pieces(texts, saved["vectors"].astype(np.float32), tokens, np.array(doc))
    if embedder is None:
        from embeddings.onnx import OnnxEmbedder

        embedder = OnnxEmbedder()
    vectors = np.empty((len(texts), 384), dtype=np.float32)
    started, step = time.perf_counter(), 2048
    for at in range(0, len(texts), step):
        vectors[at:at + step] = embedder.embed(texts[at:at + step])
        done = min(at + step, len(texts))
        rate = done / (time.perf_counter() - started)
        print(f"  embedded {done}/{len(texts)} pieces, {rate:.0f}/s, ETA {(len(texts) - done) / rate:.0f} s", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors)
    return Pieces(texts, vectors, tokens, np.array(doc))


def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    from embeddings.model import packaged_model_dir

    tokenizer = Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128: count each text's own word pieces
    tokenizer.enable_truncation(max_length=256)
    return tokenizer


def _unit(v: np.ndarray[Any, Any]) -> Vectors:
    return np.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True), dtype=np.float32)


def document_vectors(p: Pieces) -> Vectors:
    """Each document's vector as the weighted mean of its pieces (for finding neighbours)."""
    sums = np.zeros((len(p.docs), p.vectors.shape[1]), dtype=np.float32)
    np.add.at(sums, np.searchsorted(p.docs, p.doc), p.vectors * p.tokens[:, None].astype(np.float32))
    return _unit(sums)


def neighbours(p: Pieces, k: int = 5) -> np.ndarray[Any, Any]:
    """The `k` nearest documents of each document (rows of p.docs), by cosine."""
    vectors = document_vectors(p)
    out = np.empty((len(vectors), k), dtype=np.int64)
    for at in range(0, len(vectors), 4096):
        scores = vectors[at:at + 4096] @ vectors.T
        scores[np.arange(len(scores)), np.arange(at, at + len(scores))] = -2
        out[at:at + len(scores)] = np.argpartition(-scores, k, axis=1)[:, :k]
    return out


def compose(p: Pieces, n: int, seed: int, *, with_texts: bool = False) -> tuple[Vectors, list[list[int]]]:
    """`n` composed passages: their unit vectors and (when `with_texts`) their pieces' indexes."""
    rng = np.random.default_rng(seed)
    near = neighbours(p)
    out = np.empty((n, p.vectors.shape[1]), dtype=np.float32)
    chosen: list[list[int]] = []
    weights = p.tokens.astype(np.float32)
    for i in range(n):
        while True:
            row = int(rng.integers(len(p.docs)))
            pool = list(p.of(int(p.docs[row])))
            if rng.random() < 0.5:
                pool += list(p.of(int(p.docs[near[row, rng.integers(near.shape[1])]])))
            if len(pool) >= 2:
                break
        size = int(rng.integers(2, min(4, len(pool)) + 1))
        picked = sorted(rng.choice(len(pool), size, replace=False).tolist())
        idx = [pool[j] for j in picked]
        out[i] = _unit(weights[idx] @ p.vectors[idx])
        if with_texts:
            chosen.append(idx)
    return out, chosen


def fidelity(p: Pieces, embedder: Any, n: int = 500, seed: int = 3) -> dict[str, float]:
    """Cosine between composed vectors and the real model's embedding of the same texts."""
    vectors, chosen = compose(p, n, seed, with_texts=True)
    real = np.asarray(embedder.embed([" ".join(p.texts[j] for j in idx) for idx in chosen]), dtype=np.float32)
    cos = np.sum(vectors * real, axis=1)
    return {"passages": n, "cosine_mean": round(float(cos.mean()), 4), "cosine_p5": round(float(np.percentile(cos, 5)), 4),
            "cosine_min": round(float(cos.min()), 4)}
