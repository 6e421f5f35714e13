"""Errors the edge answers itself, rendered in the client's dialect (never a bare 500)."""

from __future__ import annotations

from workers.translator.errors import error_body

__all__ = ["EdgeError", "render"]


class EdgeError(Exception):
    """An error the edge answers itself. ``code`` is stable and lands in the event log."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def render(dialect: str, status: int, message: str, *, code: str | None = None,
           request_id: str | None = None) -> bytes:
    return error_body(dialect or "openai-chat", status, message, code=code,
                      request_id=request_id)
