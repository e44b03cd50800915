"""The project's errors that every package may import: the base ``EhbError`` and the errors of
the schema contract. Library errors are re-raised as these, with a reason code; a user mistake
is reported in one line, never a traceback."""

__all__ = ["EhbError", "SchemaCatalogError", "EncodeError", "DecodeError"]


class EhbError(Exception):
    """Base of the project's own errors; the CLI prints its message and exits non-zero."""


class SchemaCatalogError(Exception):
    """The catalog or a schema file is inconsistent."""


class EncodeError(ValueError):
    """A record does not fit its schema."""


class DecodeError(ValueError):
    """Bytes that are not a valid message of ours. ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str, schema_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.schema_id = schema_id
