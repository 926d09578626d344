"""A model switch with real weights: all-MiniLM-L6-v2 (PyTorch) to the same weights exported
to ONNX with int8 weights, registered as a second model, through the command a user runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import psycopg
import pytest

from embeddings.model import SentenceTransformerEmbedder
from knowledge.api import create_app
from knowledge.ingest.embedding_models import list_models
from knowledge.ingest.worker import Worker
from knowledge.search.setup import forget_setup
from knowledge.store.importer import import_folder, sample_dir

from .apiclient import local_client

Conn = psycopg.Connection[dict[str, Any]]
QUERY = "how do I get my money back on a yearly subscription?"


def vectors(conn: Conn, model: str) -> dict[int, np.ndarray[Any, Any]]:
    rows = conn.execute("SELECT chunk_id, embedding::text AS v FROM chunk_embeddings WHERE model = %s", [model])
    return {r["chunk_id"]: np.array(json.loads(r["v"]), dtype=np.float32) for r in rows}


@pytest.mark.slow
def test_switch_to_the_int8_export(conn: Conn, db_url: str) -> None:
    import_folder(conn, sample_dir() / "Policies")
    Worker(db_url, SentenceTransformerEmbedder()).run(once=True)
    forget_setup()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")} | {"HQ_DATABASE_URL": db_url}
    done = subprocess.run(
        [sys.executable, "-m", "knowledge", "reembed", "--model", "all-MiniLM-L6-v2-int8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "search now uses all-MiniLM-L6-v2-int8" in done.stdout
    active = [m for m in list_models(conn) if m.is_active]
    assert [(m.name, m.complete) for m in active] == [("all-MiniLM-L6-v2-int8", True)]
    # The same weights, quantized: close to the float vectors, not equal (hence a model of its own).
    float_vectors, int8_vectors = vectors(conn, "all-MiniLM-L6-v2"), vectors(conn, "all-MiniLM-L6-v2-int8")
    assert float_vectors.keys() == int8_vectors.keys() and len(float_vectors) > 20
    cosines = np.array([float(np.dot(float_vectors[i], int8_vectors[i])) for i in float_vectors])
    print(f"int8 vs float: cosine mean {cosines.mean():.4f}, min {cosines.min():.4f} over {len(cosines)} passages")
    assert cosines.min() > 0.97 and cosines.mean() > 0.985 and cosines.max() < 0.99999
    with local_client(create_app(db_url)) as client:
        body = client.get("/search", params={"q": QUERY, "mode": "semantic"}).json()
    assert body["model"] == "all-MiniLM-L6-v2-int8"
    assert body["hits"][0]["title"] == "Refund policy"
