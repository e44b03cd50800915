"""``ehb tail``: decoded JSON Lines from the real broker, personal data masked, clear errors."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from ehb.commands.tail import Start, tail, to_json_line
from ehb.privacy import PERSONAL_FIELDS
from ehb.settings import Settings
from schemas import SUBJECTS
from schemas.topics import EXAMINATIONS, HEALTH_BOOK
from tests.support import factories as f

pytestmark = pytest.mark.integration


def run_ehb(
    d: Deployment | None, *args: str, settings: Settings | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = d.children.env() if d is not None else {}
    if settings is not None:
        env = {
            **env,
            "EHB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
            "EHB_DATA_DIR": str(settings.state_dir),
        }
    return subprocess.run(
        [sys.executable, "-m", "ehb", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _lines(d: Deployment, topic: str, start: Start, **kwargs: object) -> list[dict]:
    out = io.StringIO()
    tail(d.settings, topic, out, start=start, follow=False, **kwargs)  # type: ignore[arg-type]
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_tail_health_book_prints_masked_json_lines(deploy: DeploymentFactory) -> None:
    d = deploy(sink=False)
    events = [f.exam(400 + i, name="Trần Thị Bích") for i in range(4)]
    events.append(f.exam(499, facility="79999"))  # dead-lettered: facility_unknown
    d.publish(events)
    # 4 EXAMINATION + 4 BOOK_INTEGRATED records
    wait_until(
        lambda: len(_lines(d, "health-book", Start("beginning"), idle_s=0.2)) >= 8,
        90,
        message="8 health-book records",
    )

    result = run_ehb(d, "tail", "--from-beginning", "--count", "5", "health-book")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    for line in lines:
        entry = json.loads(line)
        assert entry["topic"] == d.settings.topic(HEALTH_BOOK)
        assert entry["format"] == "avro" and entry["subject"] == "vn.ehb.HealthBookRecord"
        value = entry["value"]
        for name in PERSONAL_FIELDS & value.keys():
            assert set(value[name]) == {"*"}, (name, value[name])
        assert value["record_type"] in ("EXAMINATION", "BOOK_INTEGRATED")
        assert value["ma_cskcb"] == "79001"  # not personal: in clear
        assert entry["key"] == value["citizen_key"]
        datetime.fromisoformat(entry["timestamp"])  # ISO 8601
        datetime.fromisoformat(value["published_at"])
    assert "Trần Thị Bích" not in result.stdout
    assert all(e["so_cccd"] not in result.stdout for e in events)

    # --show-personal-data: in clear, verbatim Vietnamese
    result = run_ehb(
        d, "tail", "--from-beginning", "-n", "1", "--show-personal-data", "health-book"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["value"]["ho_ten"] == "Trần Thị Bích"

    # the dead letter: its original bytes (which embed the event) are masked, base64 if shown
    dead = _lines(d, "dead-letter", Start("beginning"))
    assert len(dead) == 1 and dead[0]["value"]["reason"] == "facility_unknown"
    assert dead[0]["value"]["original"].endswith("bytes masked>")
    shown = _lines(d, "dead-letter", Start("beginning"), show_personal_data=True)
    decoded = d.codec.decode(base64.b64decode(shown[0]["value"]["original"]))
    assert decoded.record["event_id"] == events[-1]["event_id"]


def test_tail_start_positions(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False, partitions=2)

    def publish(events: list[dict]) -> None:  # one event a message, spread by key
        for event in events:
            d.produce_raw(
                "examinations",
                [d.codec.encode(SUBJECTS.EXAMINATION_EVENT, event)],
                key=event["event_id"].encode(),
            )

    first = [f.exam(500 + i) for i in range(6)]
    publish(first)
    newest = max(
        datetime.fromisoformat(e["timestamp"])
        for e in _lines(d, "examinations", Start("beginning"))
    )
    between = newest + timedelta(milliseconds=1)
    second = [f.exam(600 + i) for i in range(3)]
    publish(second)

    everything = _lines(d, "examinations", Start("beginning"))
    assert len(everything) == 9
    assert {e["value"]["event_id"] for e in everything} == {e["event_id"] for e in first + second}
    since = _lines(d, "examinations", Start("time", time=between))
    assert {e["value"]["event_id"] for e in since} == {e["event_id"] for e in second}
    from_offset = _lines(d, "examinations", Start("offset", offset=2))
    per_partition = {p: sum(1 for e in everything if e["partition"] == p) for p in (0, 1)}
    assert len(from_offset) == sum(max(0, n - 2) for n in per_partition.values())
    assert all(e["offset"] >= 2 for e in from_offset)
    one = _lines(d, "examinations", Start("beginning"), partition=1)
    assert {e["partition"] for e in one} <= {1} and len(one) == per_partition[1]
    # the full topic name works as well, and "end" prints nothing old
    assert len(_lines(d, d.settings.topic(EXAMINATIONS), Start("beginning"))) == 9
    assert _lines(d, "examinations", Start("end")) == []
    # something undecodable is reported, not fatal
    d.produce_raw("examinations", [b"not avro"], key=b"79001")
    raw = [e for e in _lines(d, "examinations", Start("beginning")) if e["format"] != "avro"]
    assert raw == [
        {
            **raw[0],
            "format": "undecodable",
            "error": {
                "reason": "bad_magic_byte",
                "message": "neither the Confluent wire format nor JSON",
            },
        }
    ]
    assert "value_base64" not in raw[0]


def test_tail_errors_are_one_line(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False, partitions=1)
    result = run_ehb(d, "tail", "no-such-topic")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "unknown topic 'no-such-topic'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr

    unreachable = d.settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    result = run_ehb(d, "tail", "--timeout", "1", "health-book", settings=unreachable)
    assert result.returncode == 2
    assert "unreachable" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    result = run_ehb(d, "tail", "--from-beginning", "--from-offset", "3", "health-book")
    assert result.returncode == 2 and "at most one" in result.stderr


def test_json_line_of_a_changelog_style_message() -> None:
    """JSON values (the Faust changelog) are parsed, keys kept as text."""

    class Message:
        def key(self) -> bytes:
            return b'"abc"'

        def value(self) -> bytes:
            return b'{"i": 1}'

        def topic(self) -> str:
            return "ehb-worker-citizens-changelog"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return 7

        def timestamp(self) -> tuple[int, int]:
            return (1, 1_700_000_000_123)

    from schemas import AvroCodec

    entry = json.loads(to_json_line(Message(), AvroCodec()))  # type: ignore[arg-type]
    assert entry == {
        "topic": "ehb-worker-citizens-changelog",
        "partition": 0,
        "offset": 7,
        "timestamp": "2023-11-14T22:13:20.123Z",
        "key": '"abc"',
        "format": "json",
        "value": {"i": 1},
    }
    # a binary key of the citizens table (streams.state_codec) is shown as the citizen's key
    Message.key = lambda self: b"\x01" + bytes.fromhex("ab" * 16)  # type: ignore[method-assign]
    entry = json.loads(to_json_line(Message(), AvroCodec()))  # type: ignore[arg-type]
    assert entry["key"] == "ab" * 16 and "key_base64" not in entry
