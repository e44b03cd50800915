"""Errors of the schema contract. Library errors are re-raised as these, with a reason code."""

__all__ = ["SchemaCatalogError", "EncodeError", "DecodeError"]


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
