"""The content digest is stored with every entry: its fast path (orjson) must give exactly
the digest of its definition (``json.dumps`` sorted, compact, not ASCII-escaped)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.episodes import _NOT_CONTENT, episode_digest


def reference_digest(event: dict[str, Any]) -> str:
    content = {k: v for k, v in event.items() if k not in _NOT_CONTENT and v is not None}
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from([0.0, -0.0, 1e-4, 9.99e-5, 1e16, 9999999999999998.0, 1e-5, 65.5])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
events = st.dictionaries(st.text(), values, max_size=12)


@settings(max_examples=2000, deadline=None)
@given(events)
def test_digest_is_the_json_definition(event: dict[str, Any]) -> None:
    try:
        expected = reference_digest(event)
    except UnicodeEncodeError:  # a lone surrogate: neither form hashes it
        try:
            episode_digest(event)
        except UnicodeEncodeError:
            return
        raise AssertionError("a lone surrogate was hashed") from None
    assert episode_digest(event) == expected


def test_digest_of_an_examination() -> None:
    event = {
        "event_id": "e-1",
        "version": 3,
        "ma_cskcb": "79001",
        "ma_lk": "LK1",
        "ho_ten": "Nguyễn Văn A\t\n\x01\u2028",
        "can_nang": 65.5,
        "ma_benh_kt": None,
        "referral": {"ma_noi_di": "79001", "so_chuyentuyen": "7"},
    }
    assert episode_digest(event) == reference_digest(event)
    # the event id and the version are not content; a null field counts as absent
    assert episode_digest({**event, "event_id": "e-2", "version": None, "x": None}) == (
        episode_digest(event)
    )
    for weight in (1e-5, 1e16, math.nan, math.inf, 2**64):
        assert episode_digest({**event, "can_nang": weight}) == reference_digest(
            {**event, "can_nang": weight}
        )
