"""Errors of the stream worker; all derive from ``EhbError``."""

from __future__ import annotations

from schemas.errors import EhbError

__all__ = ["OutputError"]


class OutputError(EhbError):
    """Messages could not be delivered; the batch must not be acknowledged."""
