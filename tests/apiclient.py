"""The in-process test client, addressed as the service's default bind (127.0.0.1:8765):
the API answers only Host headers of the address it listens on."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

__all__ = ["LOCAL", "local_client"]

LOCAL = "http://127.0.0.1:8765"


def local_client(app: FastAPI, **kwargs: Any) -> TestClient:
    """A TestClient on `app` sending `Host: 127.0.0.1:8765` (create_app's default bind)."""
    return TestClient(app, base_url=LOCAL, **kwargs)


def rows_snapshot(conn: Any, tables: tuple[str, ...]) -> dict[str, Any]:
    """Row count and a hash of every row of `tables` (each with an `id`), to show that a
    refused request changed nothing."""
    return {
        t: conn.execute(
            f"SELECT count(*) AS n, md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) AS h FROM {t} x"
        ).fetchone()
        for t in tables
    }


def error_message(response: Any) -> str:
    """The error message, FastAPI's validation list flattened to 'loc: msg' lines."""
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return detail
    return "\n".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in detail)
