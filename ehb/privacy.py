"""Pseudonymous citizen keys and masking of personal data.

Downstream topics (referrals, appointments), metrics and logs never need the raw citizen ID:
they carry ``citizen_key`` = HMAC-SHA256(secret, citizen ID), hex. The secret comes from
``EHB_CITIZEN_KEY_SECRET``; in development, when it is unset, a random secret is generated
once under ``EHB_DATA_DIR`` (never in the repository) so that every process of the machine
derives the same keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from ehb.exceptions import ConfigurationError
from ehb.settings import Environment, Settings

__all__ = ["CitizenKeyer", "mask", "PERSONAL_FIELDS", "EMBEDDED_PERSONAL_FIELDS"]

#: Fields that identify a person: masked by `ehb tail` unless asked, never logged.
PERSONAL_FIELDS = frozenset(
    {"ho_ten", "so_cccd", "ma_the_bhyt", "ngay_sinh", "ma_bn", "matinh_cu_tru", "dien_thoai"}
)

#: Bytes fields that embed a whole input event, and so its personal data (DeadLetter.original).
EMBEDDED_PERSONAL_FIELDS = frozenset({"original"})

_SECRET_FILE = "citizen-key.secret"  # noqa: S105 - a file name, not a secret


def _development_secret(data_dir: Path) -> bytes:
    path = data_dir / _SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    # O_EXCL: if two processes race, the loser reads the winner's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    return secret


class CitizenKeyer:
    """Derives the pseudonymous citizen key. Cheap enough to call per event."""

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigurationError(
                "the citizen-key secret (EHB_CITIZEN_KEY_SECRET) must be at least 16 bytes"
            )
        self._key = secret

    @classmethod
    def from_settings(cls, settings: Settings) -> CitizenKeyer:
        if settings.citizen_key_secret is not None:
            return cls(settings.citizen_key_secret.get_secret_value().encode())
        if settings.env is Environment.PRODUCTION:  # also refused by the settings model
            raise ConfigurationError("EHB_CITIZEN_KEY_SECRET is required in production")
        return cls(_development_secret(settings.state_dir))

    def __call__(self, citizen_id: str) -> str:
        return hmac.new(self._key, citizen_id.encode(), hashlib.sha256).hexdigest()[:32]


def mask(value: object) -> str:
    """Mask a personal value, keeping only its length class (for `ehb tail`)."""
    if value is None:
        return "null"
    text = str(value)
    return "*" * min(len(text), 12)
