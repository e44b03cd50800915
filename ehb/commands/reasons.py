"""The reason codes on the terminal (``ehb reasons``, ``ehb rejected``): what a code means and
what the facility should fix, in Vietnamese, English or both (Vietnamese first: the people
who fix the data at a facility read it). The texts are ``schemas.reasons``'; this module only
lays them out."""

from __future__ import annotations

from enum import StrEnum

from rich.table import Column, Table
from rich.text import Text

from schemas.reasons import LANGUAGES, REASON_CODES, REASONS, Language

__all__ = ["Lang", "explanation", "explanation_cells", "reason_headers", "reasons_table"]

#: column headers of the meaning and the fix, per language
_HEADERS: dict[Language, tuple[str, str]] = {
    "vi": ("ý nghĩa", "cách khắc phục"),
    "en": ("what it means", "what the facility should fix"),
}
#: what an unknown code (one newer than this program) shows
_UNKNOWN: dict[Language, tuple[str, str]] = {
    "vi": ("mã lý do chưa có trong danh mục của phiên bản này", "-"),
    "en": ("a reason code this version does not know", "-"),
}


class Lang(StrEnum):
    """``--lang``: the language(s) of the reason texts."""

    vi = "vi"
    en = "en"
    both = "both"

    @property
    def languages(self) -> tuple[Language, ...]:
        """The languages shown, Vietnamese first."""
        if self is Lang.vi:
            return ("vi",)
        if self is Lang.en:
            return ("en",)
        return LANGUAGES


def explanation(code: str, language: Language) -> tuple[str, str]:
    """(what ``code`` means, what to fix) in ``language``; a placeholder for a code this
    version does not know (a dead letter written by a newer one)."""
    reason = REASON_CODES.get(code)
    return reason.text(language) if reason is not None else _UNKNOWN[language]


def reason_headers(languages: tuple[Language, ...]) -> tuple[str, str]:
    """The headers of the meaning and fix columns, e.g. ``ý nghĩa / what it means``."""
    return (
        " / ".join(_HEADERS[language][0] for language in languages),
        " / ".join(_HEADERS[language][1] for language in languages),
    )


def explanation_cells(code: str, languages: tuple[Language, ...]) -> tuple[Text, Text]:
    """The meaning and fix cells of ``code``: one line per language, the second one dimmed.
    Text, never markup."""
    meaning, fix = Text(), Text()
    for i, language in enumerate(languages):
        style = "dim" if i else ""
        text_meaning, text_fix = explanation(code, language)
        if i:
            meaning.append("\n")
            fix.append("\n")
        meaning.append(text_meaning, style)
        fix.append(text_fix, style)
    return meaning, fix


def reasons_table(lang: Lang) -> Table:
    """``ehb reasons``: every dead-letter reason code with its stage, meaning and fix."""
    code_column = Column("code", overflow="fold")  # a code folds, never loses its end
    table = Table(code_column, "stage", *reason_headers(lang.languages), show_lines=True)
    for code in REASONS:
        table.add_row(code, REASON_CODES[code].stage, *explanation_cells(code, lang.languages))
    return table
