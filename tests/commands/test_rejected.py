"""``ehb rejected --facility CODE``: a facility's own dead letters of a day (Vietnam time), with
the reasons in Vietnamese and English, never a name, a citizen ID or the original bytes.

The arguments, the day window and the output formats are pure and tested without services;
one integration test runs the command against the real PostgreSQL of the test session."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

import ehb.commands.rejected as rejected
from ehb.commands.cli import app, main
from ehb.commands.local import Deployment, DeploymentFactory
from ehb.commands.rejected import (
    COLUMNS,
    Period,
    RejectedEpisode,
    check_facility,
    fields,
    parse_day,
    period,
    rejected_csv,
    rejected_json,
    rejected_table,
    today_in_vietnam,
)
from schemas.reasons import REASON_CODES
from schemas.time import VN_TZ

pytestmark = pytest.mark.usefixtures("wide_cli")

TODAY = date(2026, 11, 30)
DAY = date(2026, 11, 29)
#: what a dead letter may hold of the input and must never be printed
NAME = "Nguyễn Thị Ánh Tuyết"
CCCD = "079185000123"


def _episode(**overrides: Any) -> RejectedEpisode:
    values: dict[str, Any] = {
        "failed_at": datetime(2026, 11, 29, 3, 4, 5, tzinfo=UTC),
        "reason": "citizen_id_format",
        "stage": "validate",
        "source_topic": "examinations",
        "source_partition": 2,
        "source_offset": 1234,
        "event_index": 5,
        "event_id": "6f1c2a8e-0000-5000-8000-000000000001",
    }
    return RejectedEpisode(**(values | overrides))


# -- the arguments --------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["79001", " 79001 ", "01001", "97001", "98010"])
def test_a_facility_code_is_accepted(code: str) -> None:
    assert check_facility(code) == code.strip()


@pytest.mark.parametrize(
    "code", ["", "7900", "790011", "99001", "00001", "７９００１", "79O01", "79001;", "'79001'"]
)
def test_a_bad_facility_code_is_refused(code: str) -> None:
    with pytest.raises(ValueError, match="is not a facility code"):
        check_facility(code)


def test_days() -> None:
    assert parse_day("2026-11-29", TODAY) == DAY
    assert parse_day(" Today ", TODAY) == TODAY
    assert parse_day("yesterday", TODAY) == DAY
    for text in ("20261129", "2026-W48-7", "29/11/2026", "2026-11-29T00:00", "２０２６-11-29", ""):
        with pytest.raises(ValueError, match="--since .* is not a day: expected YYYY-MM-DD"):
            parse_day(text, TODAY, "--since")
    with pytest.raises(ValueError, match="--day '2026-02-30' is not a day of the calendar"):
        parse_day("2026-02-30", TODAY)


def test_periods() -> None:
    assert period(None, None, None, TODAY) == Period(TODAY, TODAY)
    assert period("2026-11-29", None, None, TODAY) == Period(DAY, DAY)
    assert period(None, "2026-11-01", None, TODAY) == Period(date(2026, 11, 1), TODAY)
    assert period(None, "2026-11-01", "2026-11-15", TODAY) == Period(
        date(2026, 11, 1), date(2026, 11, 15)
    )
    for args, problem in [
        (("2026-11-29", "2026-11-01", None), "either --day or --since/--until"),
        (("2026-11-29", None, "2026-11-30"), "either --day or --since/--until"),
        ((None, None, "2026-11-01"), "--until needs --since"),
        ((None, "2026-11-02", "2026-11-01"), "is before --since"),
    ]:
        with pytest.raises(ValueError, match=problem):
            period(*args, TODAY)


def test_a_day_is_a_day_of_vietnam_time() -> None:
    days = Period(DAY, DAY)
    assert days.start == datetime(2026, 11, 28, 17, tzinfo=UTC)
    assert days.end == datetime(2026, 11, 29, 17, tzinfo=UTC)
    assert str(days) == "2026-11-29"
    assert str(Period(date(2026, 11, 1), DAY)) == "2026-11-01 .. 2026-11-29"
    # 17:30 UTC is already tomorrow in Ho Chi Minh City
    assert today_in_vietnam(datetime(2026, 11, 29, 17, 30, tzinfo=UTC)) == TODAY
    assert today_in_vietnam(datetime(2026, 11, 29, 16, 59, tzinfo=UTC)) == DAY


def test_the_error_of_a_bad_argument_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for args, expected in [
        (["--facility", "7900"], "error: Invalid value for '--facility': '7900' is not a facility"),
        (["-f", "79001", "--day", "29/11/2026"], "error: --day '29/11/2026' is not a day"),
        (["-f", "79001", "--day", "today", "--since", "today"], "error: give either --day"),
        (["-f", "79001", "--format", "xml"], "error: Invalid value for '--format'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["rejected", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err


# -- the output ------------------------------------------------------------------------------
def test_never_reads_the_message_or_the_original() -> None:
    assert "message" not in COLUMNS and "original" not in COLUMNS
    assert not {c for c in COLUMNS if c.startswith("original")}
    assert "message" not in rejected._query(True) and "original" not in rejected._query(True)
    assert "LIMIT" not in rejected._query(False)


def test_source_position() -> None:
    assert _episode().source == "examinations:2:1234#5"
    assert _episode(event_index=None).source == "examinations:2:1234"


def test_csv_and_json_rows() -> None:
    episodes = [_episode(), _episode(reason="a_code_from_the_future", event_id=None)]
    reason = REASON_CODES["citizen_id_format"]
    rows = list(csv.DictReader(io.StringIO(rejected_csv(episodes, ("vi", "en")))))
    assert list(rows[0]) == fields(("vi", "en"))
    assert rows[0] == {
        "failed_at": "2026-11-29T10:04:05+07:00",
        "reason": "citizen_id_format",
        "stage": "validate",
        "meaning_vi": reason.meaning_vi,
        "fix_vi": reason.fix_vi,
        "meaning_en": reason.meaning,
        "fix_en": reason.fix,
        "source_topic": "examinations",
        "source_partition": "2",
        "source_offset": "1234",
        "event_index": "5",
        "event_id": "6f1c2a8e-0000-5000-8000-000000000001",
        "ma_lk": "",
        "superseded_at": "",
    }
    assert rows[1]["meaning_en"] == "a reason code this version does not know"
    assert rows[1]["event_id"] == ""
    documents = json.loads(rejected_json(episodes, ("vi",)))
    assert list(documents[0]) == fields(("vi",)) and "meaning_en" not in documents[0]
    assert documents[0]["meaning_vi"] == reason.meaning_vi
    assert documents[1]["event_id"] is None and documents[0]["source_partition"] == 2
    assert reason.meaning_vi in rejected_json(episodes, ("vi",))  # not \\u-escaped
    # nothing found: the CSV header alone, an empty JSON array
    assert rejected_csv([], ("en",)).splitlines() == [",".join(fields(("en",)))]
    assert json.loads(rejected_json([], ("en",))) == []


def _render(episodes: list[RejectedEpisode], languages: tuple[Any, ...]) -> str:
    console = Console(width=400, record=True, file=io.StringIO())
    console.print(rejected_table(episodes, languages, "Hồ sơ bị từ chối"))
    return console.export_text()


def test_the_table_prints_the_facilitys_text_verbatim() -> None:
    text = _render([_episode(event_id="[bold]x[/bold]")], ("vi", "en"))
    reason = REASON_CODES["citizen_id_format"]
    assert "[bold]x[/bold]" in text  # an event id is never read as markup
    assert "2026-11-29 10:04:05" in text and "examinations:2:1234#5" in text
    assert text.index(reason.meaning_vi) < text.index(reason.meaning)
    assert "thời điểm (UTC+7)" in text and "đã có bản sửa" not in text
    english = _render([_episode()], ("en",))
    assert "failed at (UTC+7)" in english and reason.meaning_vi not in english


def test_a_superseded_dead_letter_says_so() -> None:
    """An episode dead-lettered, then corrected (docs/corrections.md): its dead letter's
    ``superseded_at`` is selected and shown in every format."""
    assert "superseded_at, count(*) OVER ()" in rejected._query(True)
    corrected = _episode(superseded_at=datetime(2026, 11, 29, 5, tzinfo=UTC))
    assert fields(("en",))[-1] == "superseded_at"
    assert corrected.as_dict(("en",))["superseded_at"] == "2026-11-29T12:00:00+07:00"
    assert _episode().as_dict(("en",))["superseded_at"] is None
    table = _render([corrected, _episode()], ("vi",))
    assert "đã có bản sửa" in table and "2026-11-29 12:00:00" in table


# -- against the real PostgreSQL -----------------------------------------------------------
def _dead_letter(
    d: Deployment,
    failed_at: datetime,
    reason: str,
    *,
    facility: str = "79001",
    offset: int,
    event_index: int | None = None,
    event_id: str | None = None,
) -> None:
    """A dead letter as the sink writes it, its message and original full of personal data."""
    stage = REASON_CODES[reason].stage if reason in REASON_CODES else "validate"
    d.query(
        "INSERT INTO dead_letters (dead_letter_id, reason, message, stage, source_topic, "
        "source_partition, source_offset, event_index, event_id, ma_cskcb, original, "
        "published_at, failed_at) VALUES (%s, %s, %s, %s, %s, 0, %s, %s, %s, %s, %s, %s, %s) "
        "RETURNING 1",
        f"t:{facility}:{offset}:{event_index}",
        reason,
        f"SO_CCCD {CCCD} of {NAME} has 13 characters",
        stage,
        d.settings.topic("examinations"),
        offset,
        event_index,
        event_id,
        facility,
        f'{{"ho_ten": "{NAME}", "so_cccd": "{CCCD}", "ma_benh_chinh": "F32.1"}}'.encode(),
        failed_at - timedelta(seconds=1),
        failed_at,
    )


def _vn(*args: int) -> datetime:
    return datetime(*args, tzinfo=VN_TZ)


@pytest.mark.integration
def test_a_facility_lists_its_rejected_episodes_of_a_day(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False, partitions=1)
    topic = d.settings.topic("examinations")
    _dead_letter(d, _vn(2026, 11, 29, 0, 0, 0), "citizen_id_format", offset=10, event_id="e-10")
    _dead_letter(d, _vn(2026, 11, 29, 9, 30), "hi_card_format", offset=11, event_index=3)
    _dead_letter(d, _vn(2026, 11, 29, 23, 59, 59), "a_code_from_the_future", offset=12)
    # not 79001's 29 November in Vietnam time (the two first are on 29 November in UTC)
    _dead_letter(d, _vn(2026, 11, 30, 0, 0, 0), "date_order", offset=13, event_id="e-13")
    _dead_letter(d, _vn(2026, 11, 28, 23, 59, 59), "date_order", offset=14, event_id="e-14")
    _dead_letter(d, _vn(2026, 11, 29, 12), "date_order", facility="79002", offset=15)
    assert d.settings.database_url is not None
    env = {
        "EHB_DATABASE_URL": d.settings.database_url.get_secret_value(),
        "EHB_DATA_DIR": str(d.tmp),
        "COLUMNS": "400",
    }

    def ehb_rejected(*args: str) -> Any:
        result = CliRunner().invoke(app, ["rejected", "--facility", "79001", *args], env=env)
        assert result.exit_code == 0, result.output
        for secret in (NAME, CCCD, "F32.1", "13 characters"):
            assert secret not in result.output, secret
        return result

    rows = json.loads(ehb_rejected("--day", "2026-11-29", "--format", "json").stdout)
    assert [(r["failed_at"], r["reason"], r["source_offset"]) for r in rows] == [
        ("2026-11-29T00:00:00+07:00", "citizen_id_format", 10),
        ("2026-11-29T09:30:00+07:00", "hi_card_format", 11),
        ("2026-11-29T23:59:59+07:00", "a_code_from_the_future", 12),
    ]
    hi_card = REASON_CODES["hi_card_format"]
    assert rows[1] | {"failed_at": "-"} == {
        "failed_at": "-",
        "reason": "hi_card_format",
        "stage": "validate",
        "meaning_vi": hi_card.meaning_vi,
        "fix_vi": hi_card.fix_vi,
        "meaning_en": hi_card.meaning,
        "fix_en": hi_card.fix,
        "source_topic": topic,
        "source_partition": 0,
        "source_offset": 11,
        "event_index": 3,
        "event_id": None,
        "ma_lk": None,
        "superseded_at": None,
    }
    assert rows[0]["event_id"] == "e-10"

    table = ehb_rejected("--day", "2026-11-29", "--lang", "vi").stdout
    assert f"{topic}:0:11#3" in table and "e-10" in table
    assert hi_card.meaning_vi in table and hi_card.meaning not in table
    assert "3 hồ sơ bị từ chối của cơ sở KCB 79001, 2026-11-29 (UTC+7)" in table

    days = ehb_rejected("--since", "2026-11-28", "--until", "2026-11-30", "--format", "csv")
    offsets = [r["source_offset"] for r in csv.DictReader(io.StringIO(days.stdout))]
    assert offsets == ["14", "10", "11", "12", "13"]

    limited = ehb_rejected(
        "--since", "2026-11-28", "--until", "2026-11-30", "--limit", "2", "--lang", "en"
    )
    assert "2 / 5: --limit 0 to list them all" in limited.stderr
    assert "5 dead letters of facility 79001, 2026-11-28 .." in limited.stdout

    nothing = ehb_rejected("--day", "2026-11-27")
    assert "0 hồ sơ bị từ chối" in nothing.stdout and "0 dead letters" in nothing.stdout
    assert ehb_rejected("--day", "2026-11-27", "--format", "json").stdout.strip() == "[]"
