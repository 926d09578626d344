"""The ONNX query embedder with the real model: the torch model's vectors, one export reused
by later starts (and by concurrent ones), a query cache callers cannot corrupt, and the
torch fallback. Exports go to temporary directories only; no database is needed."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embeddings.onnx as onnx_module
from embeddings import query_settings
from embeddings.model import SentenceTransformerEmbedder, packaged_model_dir
from embeddings.onnx import (
    CachedQueryEmbedder,
    OnnxEmbedder,
    export_onnx,
    load_query_embedder,
    report_searches_in_flight,
)

pytestmark = pytest.mark.slow

WORDS = [
    "incident",
    "escalation",
    "refund",
    "invoice",
    "schedule",
    "rotation",
    "deploy",
    "rollback",
    "customer",
    "latency",
    "database",
    "replica",
    "backup",
    "restore",
    "agent",
    "prompt",
    "budget",
    "quota",
    "policy",
]


def _passage(words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(str(w) for w in rng.choice(WORDS, size=words)) + "."


TEXTS = [
    "how do I rotate the on-call schedule?",
    "refund policy for annual plans",
    "What is our SLA for Sev 1 incidents",
    "postgres replica lag",
    "who approves budget increases over $5,000?",
    "deploy",
    "OKR Q3 2025",
    "agent boot bundle tags",
    "Where are the SOPs for onboarding a new customer workspace?",
    "reset password 2FA",
    "HNSW vs IVFFlat index recall",
    "",
    "   ",
    "Überprüfung der Rückerstattungsrichtlinie für Jahrespläne",
    "politique de remboursement : délai de préavis et résiliation",
    "оповещение о сбое базы данных",  # noqa: RUF001 - Cyrillic, on purpose
    "日本語のテキストを検索する方法",
    "数据库备份和恢复流程",
    "سياسة الاسترداد للعملاء",
    "🚀 launch checklist ✅ done",
    "def rotate(schedule: list[str]) -> list[str]:\n    return schedule[1:] + schedule[:1]",
    "| plan | price |\n|------|------:|\n| team | 49 € |",
    "# Incident response\n\nWhen an alert fires, the on-call engineer acknowledges it.",
    _passage(60, 1),
    _passage(180, 2),
    _passage(240, 3),  # near the window: 240 words, each one word piece, plus [CLS]/[SEP]
    _passage(252, 4),
    _passage(254, 5),  # exactly 256 with [CLS]/[SEP]
    _passage(400, 6),  # truncated, as the torch model truncates it
    (
        "Microstructural development of human newborn cerebral white matter assessed in vivo "
        "by diffusion tensor magnetic resonance imaging. "
    )
    * 12,
    "the the the the the",
    "1234567890 3.14159 2025-11-25T12:00:00Z",
]


@pytest.fixture(scope="module")
def exports() -> Iterator[list[Path]]:
    """Every export_onnx call of this module, by output path."""
    calls: list[Path] = []
    real = onnx_module.export_onnx

    def counting(model_dir: str | Path, out_path: str | Path, **kwargs: Any) -> Path:
        calls.append(Path(out_path))
        return real(model_dir, out_path, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_module, "export_onnx", counting)
        yield calls


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx(cache_dir: Path, exports: list[Path]) -> OnnxEmbedder:
    embedder = OnnxEmbedder(cache_dir=cache_dir)
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def torch_model() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


def test_onnx_vectors_match_the_torch_model(onnx: OnnxEmbedder, torch_model: SentenceTransformerEmbedder) -> None:
    assert len(TEXTS) >= 30
    assert max(onnx.count_tokens(t) for t in TEXTS) > 256  # some are truncated
    expected = torch_model.embed(TEXTS)
    batched = onnx.embed(TEXTS)  # one padded batch of mixed lengths
    one_by_one = np.stack([onnx.embed([t])[0] for t in TEXTS])
    for got in (batched, one_by_one):
        cosines = np.sum(got * expected, axis=1)
        worst = int(np.argmin(cosines))
        assert cosines[worst] >= 0.999, f"cosine {cosines[worst]:.5f} for {TEXTS[worst][:60]!r}"


def test_related_texts_rank_above_unrelated(onnx: OnnxEmbedder) -> None:
    query = onnx.embed_query("how do I get my money back?")
    passages = onnx.embed(
        [
            "Refunds are paid to the original card within 5 days.",
            "The on-call engineer acknowledges alerts within five minutes.",
        ]
    )
    assert passages[0] @ query > passages[1] @ query


def test_shapes_dtype_and_norms(onnx: OnnxEmbedder) -> None:
    batch = onnx.embed(TEXTS[:5])
    assert batch.shape == (5, 384) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    query = onnx.embed_query("shape check")
    assert query.shape == (384,) and query.dtype == np.float32
    assert abs(float(np.linalg.norm(query)) - 1.0) < 1e-5
    assert onnx.embed([]).shape == (0, 384)
    assert (onnx.name, onnx.dims, onnx.max_tokens, onnx.provider) == ("all-MiniLM-L6-v2", 384, 254, "onnx")


def test_the_export_is_reused_by_the_next_start(onnx: OnnxEmbedder, cache_dir: Path, exports: list[Path]) -> None:
    path = onnx.onnx_path
    assert path.parent == cache_dir and path.is_file()
    assert re.fullmatch(r"all-MiniLM-L6-v2-[0-9a-f]{12}-fused\.onnx", path.name), path.name
    import onnx as onnx_lib  # the export carries ONNX Runtime's BERT fusions

    ops = {node.op_type for node in onnx_lib.load(str(path), load_external_data=False).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops, ops
    assert exports.count(path) == 1
    mtime = path.stat().st_mtime_ns

    again = OnnxEmbedder(cache_dir=cache_dir)
    again.load()
    np.testing.assert_array_equal(again.embed(TEXTS[:3]), onnx.embed(TEXTS[:3]))
    assert exports.count(path) == 1
    assert path.stat().st_mtime_ns == mtime
    assert not [p for p in cache_dir.iterdir() if p.suffix == ".tmp"]


def test_concurrent_starts_export_once(tmp_path: Path, exports: list[Path]) -> None:
    embedders = [OnnxEmbedder(cache_dir=tmp_path) for _ in range(3)]
    errors: list[BaseException] = []

    def start(e: OnnxEmbedder) -> None:
        try:
            e.load()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in embedders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert exports.count(embedders[0].onnx_path) == 1
    vectors = [e.embed(["concurrent start"]) for e in embedders]
    for v in vectors[1:]:
        np.testing.assert_array_equal(v, vectors[0])


def _record_embedded(embedder: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts `embedder.embed` is called with from now on, in order, as they come."""
    texts_seen: list[str] = []
    real = embedder.embed

    def recording(texts: Sequence[str]) -> np.ndarray[Any, Any]:
        texts_seen.extend(texts)
        return real(texts)

    monkeypatch.setattr(embedder, "embed", recording)
    return texts_seen


def test_query_cache_returns_equal_vectors_the_caller_cannot_change(
    onnx: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = onnx.embed
    embedded = _record_embedded(onnx, monkeypatch)
    first = onnx.embed_query("which runbook covers database failover?")
    kept = first.copy()
    first[:] = 0.0  # the caller's array is writable and its own
    second = onnx.embed_query("which runbook covers database failover?")
    np.testing.assert_array_equal(second, kept)
    np.testing.assert_array_equal(second, real(["which runbook covers database failover?"])[0])
    second[:] = 1.0  # a hit is the caller's own array too
    np.testing.assert_array_equal(onnx.embed_query("which runbook covers database failover?"), kept)
    assert embedded == ["which runbook covers database failover?"]  # later calls were hits
    onnx.embed_query("Which runbook covers database failover?")  # exact text: a new key
    assert len(embedded) == 2


def test_query_cache_evicts_the_least_recently_used(onnx: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    small = OnnxEmbedder(cache_dir=onnx.onnx_path.parent, cache_size=2)
    seen = _record_embedded(small, monkeypatch)
    for q in ["a", "b", "a", "c", "a", "b"]:
        small.embed_query(q)
    assert seen == ["a", "b", "c", "b"]  # "a" stayed recent; "b" was evicted by "c"


def test_export_onnx_writes_a_whole_model_into_any_directory(tmp_path: Path) -> None:
    import onnx

    out = export_onnx(packaged_model_dir(), tmp_path / "nested" / "body.onnx")
    assert out == tmp_path / "nested" / "body.onnx"
    assert sorted(p.name for p in out.parent.iterdir()) == ["body.onnx"]  # no temp file left
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]


def test_default_cache_dir_follows_hq_data_dir(tmp_path: Path) -> None:
    from knowledge.cli.main import apply_settings
    from knowledge.config import Settings

    assert query_settings.default_cache_dir().name == "hq-knowledge"
    settings = Settings.from_env({"HQ_DATA_DIR": str(tmp_path)})
    assert settings.models_dir == tmp_path / "models" and Settings.from_env({}).models_dir is None
    apply_settings(settings)
    try:
        assert query_settings.default_cache_dir() == tmp_path / "models"
        assert OnnxEmbedder().onnx_path.parent == tmp_path / "models"  # hashes, exports nothing
        assert not (tmp_path / "models").exists()
    finally:
        apply_settings(Settings.from_env({}))
    assert query_settings.default_cache_dir().name == "hq-knowledge"


def _fallback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, cache_dir: Path
) -> CachedQueryEmbedder:
    monkeypatch.setattr(onnx_module, "_query_embedders", {})
    with caplog.at_level(logging.WARNING, logger="hq_knowledge.onnx"):
        embedder = load_query_embedder(cache_dir=cache_dir)
    assert isinstance(embedder, CachedQueryEmbedder)
    assert embedder.provider == "sentence-transformers" and embedder.name == "all-MiniLM-L6-v2"
    assert "using the torch model instead" in caplog.text
    assert load_query_embedder(cache_dir=cache_dir) is embedder  # decided once per process
    return embedder


def test_falls_back_to_torch_when_the_export_fails(
    tmp_path: Path, onnx: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_module, "export_onnx", broken)
    embedder = _fallback(monkeypatch, caplog, tmp_path)
    assert "exporter exploded" in caplog.text
    query = "how do I rotate the on-call schedule?"
    vector = embedder.embed_query(query)
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert float(vector @ onnx.embed_query(query)) >= 0.999
    vector[:] = 0.0
    assert abs(float(np.linalg.norm(embedder.embed_query(query))) - 1.0) < 1e-5


def test_falls_back_to_torch_without_onnxruntime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    _fallback(monkeypatch, caplog, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing exported for a runtime that is missing


def test_load_query_embedder_is_process_wide(
    cache_dir: Path, onnx: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_module, "_query_embedders", {})
    first = load_query_embedder(cache_dir=cache_dir)
    assert isinstance(first, OnnxEmbedder)
    assert load_query_embedder(cache_dir=cache_dir) is first
    fake = load_query_embedder("fake")
    assert fake.provider == "fake" and fake.embed_query("x").shape == (fake.dims,)
    with pytest.raises(ValueError, match="unknown embedding model 'nope'"):
        load_query_embedder("nope")


def test_queries_embedded_together_equal_each_embedded_alone(onnx: OnnxEmbedder) -> None:
    """Concurrent queries share one padded run of the real model (embeddings.batching); each
    caller's vector equals its query embedded alone, whatever the others' lengths."""
    batched = OnnxEmbedder(cache_dir=onnx.onnx_path.parent, cache_size=0, query_batch=8)
    texts = [t[:300] for t in TEXTS[:8]] + ["refund policy", "how do I rotate the API keys of an agent?"]
    release = threading.Barrier(len(texts))
    got: dict[str, np.ndarray[Any, Any]] = {}

    def one(text: str) -> None:
        release.wait()
        got[text] = batched.embed_query(text)

    slow = batched.embed

    def slower(texts: Sequence[str]) -> np.ndarray[Any, Any]:  # so that queries queue up meanwhile
        time.sleep(0.05)
        return slow(texts)

    batched.embed = slower  # type: ignore[method-assign]
    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert batched.batcher is not None and sum(batched.batcher.batch_sizes.values()) < len(texts)
    assert max(batched.batcher.batch_sizes) > 1
    for text in texts:
        alone = onnx.embed([text])[0]
        assert float(np.dot(got[text], alone)) > 0.99999, text
        np.testing.assert_allclose(got[text], alone, atol=2e-5)
    batched.batcher.close()


def test_runs_while_other_searches_are_in_flight_take_one_thread(onnx: OnnxEmbedder) -> None:
    """A query embedded alone runs on all the session's threads; while other searches are in
    flight (the service's admission control reports them) it runs single-threaded, as
    spinning threads would take the cores from the other searches. Same vector either way."""
    assert onnx._session.get_session_options().intra_op_num_threads == min(2, os.cpu_count() or 1)
    assert onnx._single.get_session_options().intra_op_num_threads == 1
    runs: list[str] = []

    class Counted:
        def __init__(self, session: Any, name: str) -> None:
            self.session, self.name = session, name

        def run(self, *args: Any) -> Any:
            runs.append(self.name)
            return self.session.run(*args)

    session, single, reported = onnx._session, onnx._single, list(onnx_module._load)
    onnx._session, onnx._single = Counted(session, "all"), Counted(single, "one")
    try:
        alone = onnx.embed(["refund policy for agents"])[0]
        report_searches_in_flight(lambda: 3)
        busy = onnx.embed(["refund policy for agents"])[0]
        report_searches_in_flight(lambda: 1)  # this search only
        again = onnx.embed(["refund policy for agents"])[0]
    finally:
        onnx._session, onnx._single = session, single
        onnx_module._load[:] = reported
    assert runs == (["all", "one", "all"] if single is not session else ["all", "all", "all"])
    np.testing.assert_allclose(busy, alone, atol=1e-5)
    np.testing.assert_allclose(again, alone, atol=1e-5)


RACE = """
import os, sys, threading
from pathlib import Path
from embeddings.model import SentenceTransformerEmbedder
from embeddings.onnx import export_onnx
from embeddings.model import packaged_model_dir

errors = []

def worker():  # as serve's worker thread: at nice 10, loading sentence-transformers
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    try:
        SentenceTransformerEmbedder().embed(["a passage"])
    except Exception as e:
        errors.append(repr(e))

def query_side():  # as serve's warm-up: exporting the query model meanwhile
    try:
        export_onnx(packaged_model_dir(), Path(sys.argv[1]))
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=worker), threading.Thread(target=query_side)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors or "ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_the_worker_and_the_query_export_import_transformers_at_the_same_time(tmp_path: Path) -> None:
    """In a fresh process, as `serve` starts: the worker thread (nice 10) loads
    sentence-transformers while the query embedder exports its ONNX model. Without one lock
    on the imports, `from transformers import AutoModel` failed every time."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", RACE, str(tmp_path / "model.onnx")],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.stdout.strip().splitlines()[-1:] == ["ok"], result.stdout + result.stderr
    assert (tmp_path / "model.onnx").is_file()
