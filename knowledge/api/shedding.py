"""The door of GET /search: a search refused before any work is spent on it, or its query
embedded while the framework parses the rest."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from knowledge.api.security import refuse
from knowledge.errors import InvalidInput, Overloaded
from knowledge.search import SearchQuery
from knowledge.search.admission import Admission
from knowledge.search.setup import embed_ahead

log = logging.getLogger("hq_knowledge.api")

__all__ = ["Shedding"]


class Shedding:
    """ASGI middleware: GET /search answers 503 with Retry-After at once while every slot and
    waiting place of the service's admission control is taken, before its parameters are
    parsed and validated (a refusal then costs little of the CPU the admitted searches need).
    The route still takes its slot, and may still be refused there. Inside the Gate: a caller
    it turns away never learns the load. `admission` returns the app's Admission.

    A search that arrives while no other is in flight gets its query embedded at once, on
    the query embedder's own thread (query_models.embed_ahead): routing, checking its 17
    parameters and the hop to a worker thread (~3 ms) then overlap the embedding instead of
    preceding it. Under load nothing is started early: the cores are busy anyway."""

    def __init__(self, app: ASGIApp, *, admission: Callable[[], Admission]) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/search" and scope.get("method") == "GET":
            admission = self.admission()
            try:
                admission.refuse_if_full()
            except Overloaded as e:
                await refuse(send, e)
                return
            if admission.in_flight == 0:
                _ahead(scope)
        await self.app(scope, receive, send)


def _ahead(scope: Scope) -> None:
    """Embed the query of this GET /search ahead if its mode embeds one and `q` would pass
    validation (an invalid search is answered 422 without it)."""
    params = QueryParams(scope.get("query_string", b""))
    try:  # the search's own check of `q` and `mode`
        query = SearchQuery(q=params.get("q") or "", mode=params.get("mode", "hybrid")).validated()
    except InvalidInput:
        return
    if query.mode == "keyword":
        return
    try:
        embed_ahead(query.q)
    except Exception:  # the search embeds its query itself and reports any error
        log.debug("could not embed a query ahead", exc_info=True)
