"""Load shedding at the door: a search refused before any work is spent on it."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from ..admission import Admission
from ..errors import Overloaded
from .security import refuse

__all__ = ["Shedding"]


class Shedding:
    """ASGI middleware: GET /search answers 503 with Retry-After at once while every slot and
    waiting place of the service's admission control is taken, before its parameters are
    parsed and validated (a refusal then costs little of the CPU the admitted searches need).
    The route still takes its slot, and may still be refused there. Inside the Gate: a caller
    it turns away never learns the load. `admission` returns the app's Admission."""

    def __init__(self, app: ASGIApp, *, admission: Callable[[], Admission]) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/search" and scope.get("method") == "GET":
            try:
                self.admission().refuse_if_full()
            except Overloaded as e:
                await refuse(send, e)
                return
        await self.app(scope, receive, send)
