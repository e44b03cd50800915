"""Errors of the shared runtime (their base, ``EhbError``, lives in ``schemas.errors``)."""

from schemas.errors import EhbError

__all__ = ["ConfigurationError", "FaultInjected", "ServiceUnavailable"]


class ConfigurationError(EhbError):
    """A setting is missing or wrong."""


class ServiceUnavailable(EhbError):
    """A broker, database or registry cannot be reached or started."""


class FaultInjected(EhbError):
    """Raised at a crash point named in ``EHB_FAULT_RAISE`` (``ehb.faultpoints``; tests only)."""
