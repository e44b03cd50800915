"""``ehb reasons``: every dead-letter reason code with its meaning and fix in Vietnamese,
English or both (no broker or database needed)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ehb.commands.cli import app
from ehb.commands.reasons import Lang, explanation, explanation_cells, reason_headers
from schemas.reasons import REASON_CODES, REASONS, reasons_markdown

pytestmark = pytest.mark.usefixtures("wide_cli")

WIDE = {"COLUMNS": "400"}  # one table row a line: nothing wrapped


def _reasons(*args: str) -> str:
    result = CliRunner().invoke(app, ["reasons", *args], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_both_languages_by_default_vietnamese_first() -> None:
    output = _reasons()
    assert "ý nghĩa / what it means" in output
    for code in REASONS:
        reason = REASON_CODES[code]
        assert code in output
        vi, en = output.index(reason.meaning_vi), output.index(reason.meaning)
        assert vi < en, code
        assert reason.fix_vi in output and reason.fix in output
    assert "file_too_large" not in output  # a gateway code: its texts are in NAME.reason.txt


@pytest.mark.parametrize(("lang", "shown", "hidden"), [("vi", "vi", "en"), ("en", "en", "vi")])
def test_one_language(lang: str, shown: str, hidden: str) -> None:
    output = _reasons("--lang", lang)
    for code in REASONS:
        reason = REASON_CODES[code]
        assert reason.text(shown)[0] in output  # type: ignore[arg-type]
        assert reason.text(hidden)[0] not in output, code  # type: ignore[arg-type]


def test_markdown_is_the_generated_table() -> None:
    assert _reasons("--markdown") == reasons_markdown()


def test_a_bad_language_is_refused() -> None:
    result = CliRunner().invoke(app, ["reasons", "--lang", "fr"])
    assert result.exit_code == 2
    assert "'fr' is not one of 'vi', 'en', 'both'" in result.output


def test_cells_and_headers() -> None:
    assert Lang.both.languages == ("vi", "en")
    assert Lang.vi.languages == ("vi",) and Lang.en.languages == ("en",)
    assert reason_headers(("vi",)) == ("ý nghĩa", "cách khắc phục")
    meaning, fix = explanation_cells("date_order", ("vi", "en"))
    reason = REASON_CODES["date_order"]
    assert meaning.plain == f"{reason.meaning_vi}\n{reason.meaning}"
    assert fix.plain == f"{reason.fix_vi}\n{reason.fix}"
    # a dead letter written by a newer version, with a code this one does not know
    assert explanation("a_code_from_the_future", "en") == (
        "a reason code this version does not know",
        "-",
    )
