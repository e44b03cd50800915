"""The README's generated parts match the code they document."""

from __future__ import annotations

import re
from pathlib import Path

from ehb.commands.cli import settings_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", text, re.S)
    assert match, "README.md lacks the settings markers"
    assert match.group(1).strip() == settings_markdown().strip(), (
        "README settings table is stale: run `ehb settings --markdown` and paste it")


def test_readme_quickstart_shows_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quickstart and "make test" in quickstart
