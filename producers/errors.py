"""Errors of the producers (publisher, outbox, dossier gateway); all derive from ``EhbError``."""

from __future__ import annotations

from schemas.errors import EhbError, Rejected
from schemas.reasons import GATEWAY_REASONS

__all__ = ["BatchTooLarge", "DossierRejected", "GatewayError", "OutboxBusy"]


class BatchTooLarge(EhbError):
    """An encoded batch exceeds the largest message allowed; nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded batch is {size} bytes, more than {limit}")
        self.size = size
        self.limit = limit


class DossierRejected(Rejected):
    """The file cannot become events; ``reason`` is a code of
    ``schemas.reasons.GATEWAY_REASONS``, ``message`` names the table and field."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in GATEWAY_REASONS, reason
        super().__init__(reason, message)


class GatewayError(EhbError):
    """The gateway cannot go on (directory in use, broker refused a message ...)."""


class OutboxBusy(EhbError):
    """Another live process holds this outbox."""
