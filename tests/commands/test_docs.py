"""The documentation: generated tables match the code they document, the README stays a
five-minute read, and every relative link points to a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ehb.commands.cli import settings_markdown
from ehb.commands.docs import PAGES, marked, render

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES_WITH_LINKS = [
    README,
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]


def test_settings_table_is_the_generated_one() -> None:
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", text, re.S)
    assert match, "docs/settings.md lacks the settings markers"
    assert match.group(1).strip() == settings_markdown().strip(), (
        "docs/settings.md is stale: run `make docs`"
    )


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_sections_are_up_to_date(name: str) -> None:
    text = (ROOT / PAGES[name]).read_text(encoding="utf-8")
    assert marked(text, name), f"{PAGES[name]} lacks the {name} markers"
    assert render(text, [name]) == text, (
        f"{PAGES[name]}: the {name} table is stale: run `make docs`"
    )


def test_readme_quickstart_shows_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quickstart and "make test" in quickstart


def test_readme_is_a_five_minute_read() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md has {lines} lines: move the details to docs/"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, re.M)
    }


@pytest.mark.parametrize("page", PAGES_WITH_LINKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"
