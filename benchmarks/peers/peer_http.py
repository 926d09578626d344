"""What the peer apps share: their command line and the HTTP endpoints load.py measures.

GET /search?q=TEXT&limit=10 answers {"ids": [corpus id of each hit, best first]}; GET /healthz
answers 200. Runs in the peers' own virtualenv (requirements.txt), next to the apps.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI


def parse_args(doc: str) -> argparse.Namespace:
    """--data, a folder written by export.py, and --port to serve on; the description is the
    first paragraph of `doc`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder written by export.py")
    parser.add_argument("--port", type=int, required=True)
    return parser.parse_args()


def serve(hits: Callable[[str, int], list[str]], port: int) -> None:
    """Serve GET /search, answering `hits(q, limit)` as its ids, and GET /healthz on 127.0.0.1:`port`."""
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/search")
    def search(q: str, limit: int = 10) -> dict[str, list[str]]:
        return {"ids": hits(q, limit)}

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False)
