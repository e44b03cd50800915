"""A user mistake reaches the ``ehb`` command line as one line on stderr and a non-zero exit,
never a traceback. No broker or database is needed: every case fails before using one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import producers.jsonl
from ehb.commands.cli import main, one_line
from ehb.commands.errors import UnknownTopic, WaitTimeout
from ehb.exceptions import ConfigurationError, FaultInjected, ServiceUnavailable
from producers.errors import BatchTooLarge, DossierRejected, GatewayError, OutboxBusy
from schemas.errors import (
    DecodeError,
    EhbError,
    EncodeError,
    RegistryFileError,
    Rejected,
    SchemaCatalogError,
)
from schemas.registry import RegistryError
from streams.errors import OutputError
from streams.validation import Rejection


def run_ehb(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EHB_")}
    clean.update({"EHB_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [sys.executable, "-m", "ehb", *args],
        capture_output=True,
        text=True,
        env=clean,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        # click's usage errors, in one line with a pointer to --help
        (["publish", "missing.jsonl"], {}, ["missing.jsonl", "does not exist", "publish --help"]),
        (["registry", "load", "missing.csv"], {}, ["missing.csv", "does not exist"]),
        (["tail"], {}, ["Missing argument"]),
        (["reasons", "--no-such-option"], {}, ["--no-such-option"]),
        # EhbError; the user's text is not read as markup (a MarkupError traceback before)
        (["tail", "examinations", "--from-time", "[/x] yesterday"], {}, ["[/x] yesterday"]),
        (["tail", "examinations", "--from-beginning", "--from-offset", "3"], {}, ["at most one"]),
        (["tail", "examinations"], {"EHB_KAFKA_PARTITIONS": "many"}, ["EHB_KAFKA_PARTITIONS"]),
    ],
)
def test_a_user_mistake_is_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: list[str]
) -> None:
    assert_one_line_error(run_ehb(tmp_path, *args, **env), *expected)


def test_a_bad_jsonl_line_is_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad line in one line, as written (a field named like markup printed verbatim)."""
    data = tmp_path / "events.jsonl"
    data.write_text('{"[/x]": 1}\nnot json\n')
    monkeypatch.setenv("EHB_DATA_DIR", str(tmp_path / "data"))

    def fake_publish(settings: object, path: Path, **_: object) -> producers.jsonl.JsonlReport:
        report = producers.jsonl.JsonlReport()
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            try:
                producers.jsonl.event_from_json(line, producers.jsonl.AvroCodec())
            except ValueError as exc:
                report.bad_lines.append((line_no, str(exc)))
        return report

    monkeypatch.setattr(producers.jsonl, "publish_jsonl", fake_publish)
    with pytest.raises(SystemExit) as exit_info:
        main(["publish", str(data)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{data}:1: unknown fields: [/x]",
        f"{data}:2: not JSON (Expecting value at column 1)",
    ], err


def test_an_error_message_of_several_lines_is_printed_in_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ehb.commands.tail

    def broken(*_: object, **__: object) -> int:
        raise ServiceUnavailable("broker did not start; log:\n  line one\n\n  [bold]line two")

    monkeypatch.setattr(ehb.commands.tail, "tail", broken)
    with pytest.raises(SystemExit) as exit_info:
        main(["tail", "examinations"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: broker did not start; log: | line one | [bold]line two\n"
    )
    assert one_line("a\r\nb\n") == "a | b"


def test_every_error_of_the_project_derives_from_ehb_error() -> None:
    for error in (
        ConfigurationError,
        ServiceUnavailable,
        FaultInjected,
        SchemaCatalogError,
        RegistryError,
        EncodeError,
        DecodeError,
        Rejected,
        BatchTooLarge,
        DossierRejected,
        GatewayError,
        OutboxBusy,
        OutputError,
        UnknownTopic,
        WaitTimeout,
        RegistryFileError,
    ):
        assert issubclass(error, EhbError), error
    # one shape for an input refused with a reason: ``reason`` and ``message``
    for rejected in (
        DecodeError("truncated_header", "only 3 bytes", schema_id=None),
        DossierRejected("xml1_missing", "file.xml: no XML1 (TONG_HOP)"),
        Rejection("date_order", "expected NGAY_SINH <= NGAY_VAO <= NGAY_RA"),
    ):
        assert isinstance(rejected, Rejected)
        assert str(rejected) == f"{rejected.reason}: {rejected.message}"
    assert issubclass(DecodeError, ValueError) and issubclass(EncodeError, ValueError)
