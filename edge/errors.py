"""Errors the edge answers itself, rendered in the client's dialect (never a bare 500).

``EdgeError`` is one branch of the gateway's error tree (``schemas/errors.py``), where the
rendering lives; ``render`` is that rendering with the edge's default dialect."""

from __future__ import annotations

from schemas.errors import GatewayError, error_body

__all__ = ["EdgeError", "render"]


class EdgeError(GatewayError):
    """An error the edge answers itself. ``code`` is stable and lands in the event log."""

    def __init__(self, status: int, message: str, code: str, *,
                 retryable: bool | None = None) -> None:
        super().__init__(message, status=status, code=code, retryable=retryable)


def render(dialect: str, status: int, message: str, *, code: str | None = None,
           request_id: str | None = None) -> bytes:
    return error_body(dialect or "openai-chat", status, message, code=code,
                      request_id=request_id)
