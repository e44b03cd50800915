"""The project's errors that every package may import: the base ``EhbError``, ``Rejected`` (an
input refused with a stable reason code) and the errors of the schema contract. Library errors
are re-raised as these, with a reason code; a user mistake is reported in one line, never a
traceback.

Every error the project raises derives from :class:`EhbError`; each package keeps its own
in ``<package>/errors.py`` (the runtime core's in ``ehb/exceptions.py``)."""

__all__ = [
    "EhbError",
    "Rejected",
    "SchemaCatalogError",
    "EncodeError",
    "DecodeError",
    "RegistryFileError",
]


class EhbError(Exception):
    """Base of the project's own errors; the CLI prints its message and exits non-zero."""


class Rejected(EhbError):
    """An input refused with a reason: ``reason`` is a stable code (never renamed, never
    reused; each stage documents its table), ``message`` says what is wrong in one line and
    contains no personal data. Raised by the decoder and the dossier parser, returned by the
    validator."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class SchemaCatalogError(EhbError):
    """The catalog or a schema file is inconsistent."""


class EncodeError(EhbError, ValueError):
    """A record does not fit its schema (also a ValueError, as before)."""


class DecodeError(Rejected, ValueError):
    """Bytes that are not a valid message of ours (also a ValueError, as before)."""

    def __init__(self, reason: str, message: str, schema_id: int | None = None) -> None:
        super().__init__(reason, message)
        self.schema_id = schema_id


class RegistryFileError(EhbError):
    """A facility registry CSV is not usable; the message names the file and line."""
