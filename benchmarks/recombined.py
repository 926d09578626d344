"""Vectors of real text recombined, for the vector-index benchmark's sizes beyond the real passages.

Embedding a million passages takes ~3 hours on this machine's 2 cores, so the larger sizes
are built from real pieces of text instead:

- `pieces()`: every document of the collections in ../shared/datasets/ cut into pieces
  (sentences; pieces under 8 words joined to the next, pieces over 48 words cut), each
  embedded with the real model (the ONNX export of all-MiniLM-L6-v2's weights, which gives
  torch's vectors). Cached under benchmarks/.data/vector_index/.
- `compose()`: a synthetic passage is 2-4 pieces of one document, or of that document and
  one of its 5 nearest documents (half of the draws), in document order; no two passages
  have the same pieces. Its vector is
  the mean of the pieces' vectors weighted by their word-piece counts, renormalised: what
  a mean-pooling model gives for the concatenated text, up to the context between pieces.
- `fidelity()`: embeds the concatenated texts of a sample of composed passages with the
  real model and compares: how far the composed vectors are from real embeddings.

A piece whose text repeats (boilerplate sentences) is kept once. Documents are drawn in
proportion to their pieces, so the composed passages crowd around SciFact's long abstracts:
benchmarks/data_check.py finds them a little harder for HNSW than real embeddings.

Unlike Gaussian noise around real vectors (locally 384-dimensional: the exact top-10 turns
into near-ties among noisy copies), the composed vectors lie where embeddings of real text lie.
"""

from __future__ import annotations

import json
import random
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
            out.append(" ".join(carry[start : start + MAX_WORDS]))
        carry = []
    if carry:
        if out and len(carry) < MIN_WORDS:
            out[-1] += " " + " ".join(carry)
        else:
            out.append(" ".join(carry))
    return out


class Pieces:
    """The pieces of every document: texts, unit vectors, word-piece counts, document index."""

    def __init__(
        self, texts: list[str], vectors: Vectors, tokens: np.ndarray[Any, Any], doc: np.ndarray[Any, Any]
    ) -> None:
        self.texts, self.vectors, self.tokens, self.doc = texts, vectors, tokens, doc
        starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
        self.start = dict(zip(doc[starts].tolist(), starts.tolist(), strict=True))
        self.count = dict(zip(doc[starts].tolist(), np.diff(np.r_[starts, len(doc)]).tolist(), strict=True))
        self.docs = np.array(sorted(self.start))


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
            return _first_of_each(texts, saved["vectors"].astype(np.float32), tokens, np.array(doc))
    if embedder is None:
        from embeddings.onnx import OnnxEmbedder

        embedder = OnnxEmbedder()
    vectors = np.empty((len(texts), 384), dtype=np.float32)
    started, step = time.perf_counter(), 2048
    for at in range(0, len(texts), step):
        vectors[at : at + step] = embedder.embed(texts[at : at + step])
        done = min(at + step, len(texts))
        rate = done / (time.perf_counter() - started)
        print(
            f"  embedded {done}/{len(texts)} pieces, {rate:.0f}/s, ETA {(len(texts) - done) / rate:.0f} s", flush=True
        )
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors)
    return _first_of_each(texts, vectors, tokens, np.array(doc))


def _first_of_each(
    texts: list[str], vectors: Vectors, tokens: np.ndarray[Any, Any], doc: np.ndarray[Any, Any]
) -> Pieces:
    """The pieces without repeats of a text (boilerplate sentences): one vector per text."""
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    keep = np.array(sorted(first.values()))
    return Pieces([texts[i] for i in keep], vectors[keep], tokens[keep], doc[keep])


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
        scores = vectors[at : at + 4096] @ vectors.T
        scores[np.arange(len(scores)), np.arange(at, at + len(scores))] = -2
        out[at : at + len(scores)] = np.argpartition(-scores, k, axis=1)[:, :k]
    return out


def compose(p: Pieces, n: int, seed: int, *, with_texts: bool = False) -> tuple[Vectors, list[list[int]]]:
    """`n` composed passages, no two of the same pieces: their unit vectors and (when
    `with_texts`) their pieces' indexes. A document is drawn in proportion to its pieces
    (longer documents give more passages); one whose combinations are used up (one piece and
    five neighbours give five) is passed over."""
    rnd = random.Random(seed)
    near = neighbours(p).tolist()
    row_of = np.searchsorted(p.docs, p.doc).tolist()
    spans = [(p.start[int(d)], p.count[int(d)]) for d in p.docs]
    seen: set[tuple[int, ...]] = set()
    chosen: list[tuple[int, ...]] = []
    for i in range(n):
        for _ in range(10_000):
            row = row_of[rnd.randrange(len(row_of))]
            start, count = spans[row]
            pool = list(range(start, start + count))
            if rnd.random() < 0.5:
                start, count = spans[near[row][rnd.randrange(len(near[row]))]]
                pool += range(start, start + count)
            if len(pool) < 2:
                continue
            idx = tuple(sorted(rnd.sample(pool, rnd.randint(2, min(4, len(pool))))))
            if idx not in seen:
                break
        else:
            raise RuntimeError(f"no new combination of pieces after {i} passages")
        seen.add(idx)
        chosen.append(idx)
    out = np.empty((n, p.vectors.shape[1]), dtype=np.float32)
    weights = p.tokens.astype(np.float32)
    for size in (2, 3, 4):  # the weighted means, by number of pieces, 100k passages at a time
        rows = np.array([i for i, idx in enumerate(chosen) if len(idx) == size], dtype=np.int64)
        for at in range(0, len(rows), 100_000):
            part = rows[at : at + 100_000]
            members = np.array([chosen[i] for i in part], dtype=np.int64)
            out[part] = _unit(np.einsum("ns,nsd->nd", weights[members], p.vectors[members]))
    return out, [list(idx) for idx in chosen] if with_texts else []


def fidelity(p: Pieces, embedder: Any, n: int = 500, seed: int = 3) -> dict[str, float]:
    """Cosine between composed vectors and the real model's embedding of the same texts."""
    vectors, chosen = compose(p, n, seed, with_texts=True)
    real = np.asarray(embedder.embed([" ".join(p.texts[j] for j in idx) for idx in chosen]), dtype=np.float32)
    cos = np.sum(vectors * real, axis=1)
    return {
        "passages": n,
        "cosine_mean": round(float(cos.mean()), 4),
        "cosine_p5": round(float(np.percentile(cos, 5)), 4),
        "cosine_min": round(float(cos.min()), 4),
    }
