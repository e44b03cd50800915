"""Errors of the shared runtime (their base, ``EhbError``, lives in ``schemas.errors``)."""

from schemas.errors import EhbError

__all__ = ["ConfigurationError", "ServiceUnavailable"]


class ConfigurationError(EhbError):
    """A setting is missing or wrong."""


class ServiceUnavailable(EhbError):
    """A broker, database or registry cannot be reached or started."""
