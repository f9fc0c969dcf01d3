"""The one client-error type of the serving side: a one-line message and the Triton status it maps to."""
from __future__ import annotations

INVALID_ARG = "INVALID_ARG"
NOT_FOUND = "NOT_FOUND"


class RequestError(ValueError):
    """What the client sent is wrong (or names something that is not there)."""

    def __init__(self, message: str, code: str = INVALID_ARG):
        super().__init__(message)
        self.code = code
