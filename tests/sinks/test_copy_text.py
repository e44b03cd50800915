"""The COPY text of the entries' staging rows: the fast form must write what the plain
per-field escaping writes, for any text (tabs, newlines, backslashes, NUL, non-ASCII)."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.postgres import _copy_text

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def reference(rows: list[tuple[Any, ...]]) -> str:
    lines = []
    for row in rows:
        fields = []
        for value in row:
            if value is None:
                fields.append("\\N")
            elif value is True:
                fields.append("t")
            elif value is False:
                fields.append("f")
            elif isinstance(value, str):
                fields.append(value.translate(_ESCAPES))
            else:
                fields.append(str(value))
        lines.append("\t".join(fields))
    lines.append("")
    return "\n".join(lines)


values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.sampled_from(["\\N", "a\\b", "\t", "\r\n", "\x00", "Nguyễn\u2028", "0", "1"])
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(values, values, values, values), max_size=5))
def test_copy_text_is_the_per_field_escaping(rows: list[tuple[Any, ...]]) -> None:
    text = _copy_text(rows)
    assert isinstance(text, io.StringIO)
    assert text.getvalue() == reference(rows)
