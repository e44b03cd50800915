"""Regenerate the README's generated sections (``make docs``): text between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` is replaced by the generator's output, so the
tables cannot drift from the code (tests/test_docs.py checks it)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def generators() -> dict[str, Callable[[], str]]:
    from ehb.commands.cli import settings_markdown
    from schemas.reasons import gateway_reasons_markdown, reasons_markdown

    return {"settings": settings_markdown, "gateway-reasons": gateway_reasons_markdown,
            "reasons": reasons_markdown}


def render(text: str) -> str:
    for name, generate in generators().items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n)(.*?)(<!-- {name}:end -->)", re.S)
        text = pattern.sub(lambda m, g=generate: m.group(1) + g().strip() + "\n" + m.group(3),
                           text)
    return text


def main() -> int:
    text = README.read_text(encoding="utf-8")
    updated = render(text)
    if updated != text:
        README.write_text(updated, encoding="utf-8")
        print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
