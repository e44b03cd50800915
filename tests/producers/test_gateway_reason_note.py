"""``NAME.reason.txt``, the note beside a file the gateway rejected: Vietnamese first, then
English, one ``key: value`` a line (no broker needed: the note is a pure function)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from producers.gateway import reason_note
from schemas.reasons import GATEWAY_REASONS, REASON_CODES

REJECTED_AT = datetime(2024, 1, 11, 10, 5, 12, tzinfo=UTC)


@pytest.mark.parametrize("code", sorted(GATEWAY_REASONS))
def test_the_note_gives_both_languages_vietnamese_first(code: str) -> None:
    reason = REASON_CODES[code]
    note = reason_note("20240111_79001_003.xml", code, "HOSO 2: no XML1", "ab" * 32, REJECTED_AT)
    assert note.endswith("\n")
    assert note.splitlines() == [
        "file: 20240111_79001_003.xml",
        f"reason: {code}",
        f"ý nghĩa: {reason.meaning_vi}",
        f"cách khắc phục: {reason.fix_vi}",
        f"meaning: {reason.meaning}",
        f"fix: {reason.fix}",
        "detail: HOSO 2: no XML1",
        f"sha256: {'ab' * 32}",
        "rejected_at: 2024-01-11T17:05:12+07:00",  # Vietnam time
    ]


def test_a_file_that_could_not_be_hashed_has_no_sha256() -> None:
    note = reason_note("x.xml", "file_unreadable", "gone", None, REJECTED_AT)
    assert "sha256: -\n" in note
