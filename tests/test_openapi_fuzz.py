"""The OpenAPI document tells the truth: schemathesis generates requests from it (examples,
boundary and malformed values, random valid data) against the running service with the
sample workspace, and checks every answer: no 5xx, only documented statuses, bodies and
headers as documented, 405 with the right Allow for a method a path does not take, 401
without the key the document requires."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from knowledge.store.importer import import_folder, import_sample_agents, sample_dir
from knowledge.store.keys import create_key

from .mcp_clients import http_service

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")


def fuzz(base: str, key: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    report = tmp_path / "report"
    assert SCHEMATHESIS is not None, "schemathesis comes with the test extra: pip install -e '.[test]'"
    return subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(CONFIG),
            "run",
            f"{base}/openapi.json",
            "--url",
            base,
            "--phases",
            "examples,coverage,fuzzing",
            "--checks",
            "all",
            "--max-examples",
            "10",
            "--seed",
            "42",
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {key}",
            "--report",
            "junit",
            "--report-dir",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        # In the test's directory: schemathesis keeps a cache of past runs in its working
        # directory, and replays its failures first; each run starts from the seed alone.
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


@pytest.mark.slow
def test_every_answer_is_what_the_openapi_document_says(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        import_sample_agents(conn)
        import_folder(conn, sample_dir())
        key = create_key(conn, scope="admin", name="fuzz").secret
    with http_service(db_url, require_keys=True) as base:
        run = fuzz(base, key, tmp_path)
    summary = [line.strip() for line in run.stdout.splitlines() if "generated" in line]
    print("schemathesis:", summary[-1:] or run.stdout[-500:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert " passed" in run.stdout and "generated" in run.stdout
