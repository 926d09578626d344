"""The error of text extraction, in a module of its own so that `embeddings.tiptap` and
`embeddings.extract` (which re-exports it) can both raise it without importing each other."""

from __future__ import annotations

__all__ = ["ExtractError"]


class ExtractError(ValueError):
    """Content that cannot be turned into text; the message says where and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
