"""Errors of the shared runtime. A user mistake is reported in one line, never a traceback."""

__all__ = ["EhbError", "ConfigurationError", "ServiceUnavailable"]


class EhbError(Exception):
    """Base of the project's own errors; the CLI prints its message and exits non-zero."""


class ConfigurationError(EhbError):
    """A setting is missing or wrong."""


class ServiceUnavailable(EhbError):
    """A broker, database or registry cannot be reached or started."""
