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
