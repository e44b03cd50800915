"""Regenerate the documentation's generated tables (``make docs``): in the page ``PAGES`` names
for each table, the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` is replaced
by the generator's output, so the tables cannot drift from the code
(tests/commands/test_docs.py checks it)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: generated table -> the page that holds it, relative to the repository
PAGES = {
    "settings": "docs/settings.md",
    "reasons": "docs/reference.md",
    "gateway-reasons": "docs/gateway.md",
}


def generators() -> dict[str, Callable[[], str]]:
    from ehb.commands.cli import settings_markdown
    from schemas.reasons import gateway_reasons_markdown, reasons_markdown

    return {
        "settings": settings_markdown,
        "gateway-reasons": gateway_reasons_markdown,
        "reasons": reasons_markdown,
    }


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:begin -->\n)(.*?)(<!-- {name}:end -->)", re.S)


def marked(text: str, name: str) -> bool:
    """Whether ``text`` has the begin and end markers of the generated table ``name``."""
    return _pattern(name).search(text) is not None


def _filled(match: re.Match[str], table: str) -> str:
    return match.group(1) + table + "\n" + match.group(3)


def render(text: str, names: Iterable[str] | None = None) -> str:
    """``text`` with the generated tables ``names`` (default: all) rewritten from the code."""
    found = generators()
    for name in found if names is None else names:
        generate = found[name]
        text = _pattern(name).sub(partial(_filled, table=generate().strip()), text)
    return text


def main() -> int:
    for page in sorted(set(PAGES.values())):
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        names = [name for name, where in PAGES.items() if where == page]
        missing = [name for name in names if not marked(text, name)]
        if missing:
            print(f"{page} lacks the markers of {', '.join(missing)}", file=sys.stderr)
            return 1
        updated = render(text, names)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            print(f"{page} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
