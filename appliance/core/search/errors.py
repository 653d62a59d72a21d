"""The one error of the search language, shared by the lexer, the parser and sort."""

from __future__ import annotations


class QueryError(ValueError):
    """A malformed query (or sort); ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
