"""Request bodies: refused over MAX_BODY_BYTES before they are parsed, and refused when they
are not UTF-8, with our errors (413, 422) rather than a bare 400.

Routers that take bodies use `route_class=CheckedBodyRoute`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.types import Message

from knowledge.errors import InvalidInput, TooLarge
from knowledge.store.validation import MAX_CONTENT_BYTES

__all__ = ["MAX_BODY_BYTES", "CheckedBodyRoute"]

MAX_BODY_BYTES = 2 * MAX_CONTENT_BYTES
"""Twice the content limit: JSON escaping (quotes, newlines, \\uXXXX) makes the body of a
document larger than its content, and a document at the limit must still fit."""


def _too_large(size: int | str) -> TooLarge:
    return TooLarge(
        f"request body is {size} bytes; the limit is {MAX_BODY_BYTES} bytes "
        f"({MAX_BODY_BYTES // (1024 * 1024)} MiB; a document's content may be at most "
        f"{MAX_CONTENT_BYTES // (1024 * 1024)} MiB)"
    )


def _printable(value: Any) -> Any:
    """`value` with what a JSON response cannot carry (lone surrogates, NaN, infinities)
    replaced by a readable escape."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


class CheckedBodyRoute(APIRoute):
    """An APIRoute that reads the body itself first: a Content-Length over MAX_BODY_BYTES is
    refused unread, a body that grows past it is refused as soon as it does, and a JSON body
    that is not UTF-8 is refused with the offset of the first bad byte. Its 422 validation
    errors echo the input made printable: FastAPI's handler would fail with a 500 rendering a
    lone surrogate (JSON `"\\ud800"`) or a NaN."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            try:
                return await read_checked(request)
            except RequestValidationError as e:
                raise RequestValidationError(_printable(e.errors())) from e

        async def read_checked(request: Request) -> Response:
            if request.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
                return await handler(request)
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                raise _too_large(int(length))
            received = 0
            source = request.receive

            async def receive() -> Message:
                nonlocal received
                message = await source()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > MAX_BODY_BYTES:
                        raise _too_large(f"over {MAX_BODY_BYTES}")
                return message

            limited = Request(request.scope, receive)
            body = await limited.body()
            if "json" in request.headers.get("content-type", ""):
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InvalidInput(
                        f"request body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset "
                        f"{e.start}): send JSON encoded as UTF-8, text fields as JSON strings"
                    ) from e
            return await handler(limited)

        return checked
