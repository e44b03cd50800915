"""Time in the contract. The standard's dates (``yyyymmddHHMM``, or ``yyyymmdd``) are Vietnam
time; event times (``NGAY_VAO``) travel as epoch milliseconds."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone

__all__ = ["DAY_MS", "HOUR_MS", "NEVER", "VN_TZ", "event_time_ms", "parse_datetime"]

#: Vietnam time: UTC+7, no daylight saving time
VN_TZ = timezone(timedelta(hours=7), "ICT")
HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
#: an event time before every real one: nothing seen yet
NEVER = -(2**62)


@functools.lru_cache(maxsize=1 << 14)
def parse_datetime(value: str) -> datetime:
    """yyyymmddHHMM (or yyyymmdd) in Vietnam time -> aware datetime; ValueError if invalid.

    Cached: card validity dates, admission minutes and birth dates repeat across events."""
    if not (value.isascii() and value.isdigit()) or len(value) not in (8, 12):
        raise ValueError(value)
    if len(value) == 8:
        value += "0000"
    return datetime(
        int(value[0:4]),
        int(value[4:6]),
        int(value[6:8]),
        int(value[8:10]),
        int(value[10:12]),
        tzinfo=VN_TZ,
    )


@functools.lru_cache(maxsize=1 << 14)
def event_time_ms(value: str) -> int:
    """A yyyymmddHHMM (Vietnam time) value as epoch milliseconds."""
    return int(parse_datetime(value).timestamp() * 1000)
