"""The reason table speaks the facilities' language: every code of every stage has its meaning
and its fix in Vietnamese and in English, and the generated tables carry both."""

from __future__ import annotations

import unicodedata

import pytest

from schemas.reasons import (
    GATEWAY_REASONS,
    LANGUAGES,
    REASON_CODES,
    REASONS,
    STAGES,
    gateway_reasons_markdown,
    reasons_markdown,
)


def _has_vietnamese_letters(text: str) -> bool:
    """A Latin letter with a diacritic (ă, â, đ, ê, ô, ơ, ư, a tone mark...): English has none."""
    return any(
        not char.isascii() and unicodedata.name(char, "").startswith("LATIN") for char in text
    )


@pytest.mark.parametrize("code", sorted(REASON_CODES))
def test_every_code_has_both_languages(code: str) -> None:
    reason = REASON_CODES[code]
    assert reason.stage in STAGES
    vi, en = reason.text("vi"), reason.text("en")
    assert en == (reason.meaning, reason.fix)
    assert vi == (reason.meaning_vi, reason.fix_vi)
    for text in (*vi, *en):
        assert text.strip() == text and text, (code, text)
    assert reason.meaning_vi != reason.meaning and reason.fix_vi != reason.fix, code
    assert _has_vietnamese_letters(reason.meaning_vi), (code, reason.meaning_vi)
    assert _has_vietnamese_letters(reason.fix_vi), (code, reason.fix_vi)
    assert all(text.isascii() or "QĐ" in text for text in en), (code, en)


def test_every_stage_has_codes_and_vietnamese_comes_first() -> None:
    assert {reason.stage for reason in REASON_CODES.values()} == set(STAGES)
    assert LANGUAGES == ("vi", "en")
    with pytest.raises(ValueError, match="unknown language"):
        REASON_CODES["date_invalid"].text("fr")  # type: ignore[arg-type]


def test_the_english_views_keep_their_shape() -> None:
    """REASONS and GATEWAY_REASONS stay (meaning, fix) in English for their users."""
    assert set(REASONS) | set(GATEWAY_REASONS) == set(REASON_CODES)
    assert not set(REASONS) & set(GATEWAY_REASONS)
    assert REASONS["citizen_id_format"] == (
        REASON_CODES["citizen_id_format"].meaning,
        REASON_CODES["citizen_id_format"].fix,
    )


def test_the_generated_tables_have_both_languages() -> None:
    for markdown, codes in (
        (reasons_markdown(), REASONS),
        (gateway_reasons_markdown(), GATEWAY_REASONS),
    ):
        header, rule, *rows = markdown.splitlines()
        assert header.endswith("| ý nghĩa | cách khắc phục |"), header
        assert rule.count("---") == header.count("|") - 1
        assert len(rows) == len(codes)
        for code, row in zip(codes, rows, strict=True):
            reason = REASON_CODES[code]
            assert row.startswith(f"| `{code}` |")
            assert row.endswith(f"| {reason.meaning_vi} | {reason.fix_vi} |"), row
