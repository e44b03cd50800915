"""``ehb publish FILE``: examination events from a JSON Lines file.

Each line is one event whose keys are the schema's field names (schemas/avro/
examination_event.*.avsc). Optional fields may be left out. ``event_id``, when missing, is
derived from the facility, MA_LK and the content (``schemas.episodes``: the same for a
re-send, another for a corrected version of the episode). A line that
is not JSON, not an object, or does not fit the schema is reported with its number and
reason; the good lines are still published. A line with ``"withdraw": true`` withdraws an
episode sent by mistake (``ma_cskcb``, ``ma_lk``, ``so_cccd``, optional ``ly_do``;
docs/corrections.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehb.settings import Settings
from producers.publisher import ExaminationPublisher
from schemas import SUBJECTS, AvroCodec, EncodeError
from schemas.episodes import derived_event_id
from schemas.registry import codec_for

__all__ = ["JsonlReport", "publish_jsonl", "event_from_json"]


@dataclass
class JsonlReport:
    published: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


#: a line with ``"withdraw": true`` is an ExaminationWithdrawal (ma_cskcb, ma_lk, so_cccd,
#: ly_do), not an event
WITHDRAW = "withdraw"


def event_from_json(line: str, codec: AvroCodec) -> dict[str, Any]:
    """Parse and check one line; ValueError with a one-line reason when it is not an event."""
    return _record(_object(line), codec, SUBJECTS.EXAMINATION_EVENT)


def line_from_json(line: str, codec: AvroCodec) -> tuple[str, dict[str, Any]]:
    """(subject, record) of one line: an event, or a withdrawal (``"withdraw": true``)."""
    obj = _object(line)
    if obj.pop(WITHDRAW, False) is True:
        return SUBJECTS.EXAMINATION_WITHDRAWAL, _record(obj, codec, SUBJECTS.EXAMINATION_WITHDRAWAL)
    return SUBJECTS.EXAMINATION_EVENT, _record(obj, codec, SUBJECTS.EXAMINATION_EVENT)


def _object(line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _record(record: dict[str, Any], codec: AvroCodec, subject: str) -> dict[str, Any]:
    """``record`` checked against the newest schema of ``subject``, defaults filled in and,
    when missing, its event id derived (``schemas.episodes``)."""
    entry = codec.catalog.latest(subject)
    known = set(entry.field_names())
    unknown = sorted(set(record) - known)
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(unknown)}")
    derive = not record.get("event_id")
    if derive:
        record["event_id"] = ""  # derived below, from the content with its defaults
    for name in entry.field_names():
        if name not in record:
            spec = next(f for f in entry.raw["fields"] if f["name"] == name)
            if "default" not in spec:
                raise ValueError(f"missing required field {name}")
            record[name] = spec["default"]
    if derive and isinstance(record.get("ma_cskcb"), str) and isinstance(record.get("ma_lk"), str):
        record["event_id"] = (
            derived_event_id(record)
            if subject == SUBJECTS.EXAMINATION_EVENT
            else derived_event_id({**record, "withdrawn": True})
        )
    try:
        codec.encode(subject, record)
    except EncodeError as exc:
        raise ValueError(f"does not fit the schema: {exc}") from None
    return record


def publish_jsonl(settings: Settings, path: Path, *, batch_size: int = 100) -> JsonlReport:
    codec = codec_for(settings)
    publisher = ExaminationPublisher(
        settings, codec=codec, batch_size=batch_size, linger_s=5, identity="publish"
    )
    report = JsonlReport()
    try:
        _publish_lines(path, publisher, codec, report)
        publisher.flush()
    finally:
        publisher.close()
    report.published = publisher.events_delivered
    return report


def _publish_lines(
    path: Path, publisher: ExaminationPublisher, codec: AvroCodec, report: JsonlReport
) -> None:
    with open(path, "rb") as src:
        for line_no, raw in enumerate(src, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.bad_lines.append((line_no, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
            if not line.strip():
                continue
            try:
                subject, record = line_from_json(line, codec)
            except ValueError as exc:
                report.bad_lines.append((line_no, str(exc)))
                continue
            if subject == SUBJECTS.EXAMINATION_WITHDRAWAL:
                publisher.withdraw(
                    record["ma_cskcb"],
                    record["ma_lk"],
                    record["so_cccd"],
                    record["ly_do"],
                    event_id=record["event_id"],
                    version=record["version"],
                )
            else:
                publisher.add(record)
