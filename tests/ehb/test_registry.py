"""The facility registry is updated in PostgreSQL (``ehb registry load``) and the running
workers pick it up at their next refresh (a Faust timer), without a restart."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehb.commands.cli import app
from ehb.commands.local import Deployment, DeploymentFactory, scrape, wait_until
from schemas.errors import RegistryFileError
from schemas.reference import REFERENCE_DIR, load_facilities, read_registry_csv
from tests.support import factories as f

NEW_CODE = "79901"
NEW_ROW = {
    "code": NEW_CODE,
    "name": "Phòng khám Đa khoa Sài Gòn Mới",
    "level": "private",
    "district": "Thủ Đức",
}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, ["code", "name", "level", "district"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _reference_rows() -> list[dict[str, str]]:
    with open(REFERENCE_DIR / "facilities.csv", encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


# -- the file format ------------------------------------------------------------------------
def test_reference_file_reads_back() -> None:
    assert read_registry_csv(REFERENCE_DIR / "facilities.csv") == load_facilities()


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"code": "7990", "name": "X", "level": "private", "district": ""}, "5-digit"),
        ({"code": "99001", "name": "X", "level": "private", "district": ""}, "5-digit"),
        ({"code": "７９９０１", "name": "X", "level": "private", "district": ""}, "5-digit"),
        ({"code": "79901", "name": " ", "level": "private", "district": ""}, "no name"),
        ({"code": "79901", "name": "X", "level": "clinic", "district": ""}, "level"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, row: dict[str, str], problem: str) -> None:
    path = _write_csv(tmp_path / "registry.csv", [NEW_ROW | {"code": "79902"}, row])
    with pytest.raises(RegistryFileError, match=rf"registry.csv:3: .*{problem}"):
        read_registry_csv(path)


def test_duplicates_and_missing_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryFileError, match="listed twice"):
        read_registry_csv(_write_csv(tmp_path / "dup.csv", [NEW_ROW, NEW_ROW]))
    (tmp_path / "cols.csv").write_text("code,name\n79901,X\n", encoding="utf-8")
    with pytest.raises(RegistryFileError, match="missing column"):
        read_registry_csv(tmp_path / "cols.csv")


# -- live update ----------------------------------------------------------------------------
def _ehb(d: Deployment, *args: str) -> str:
    assert d.settings.database_url is not None
    result = CliRunner().invoke(
        app,
        list(args),
        env={
            "EHB_DATABASE_URL": d.settings.database_url.get_secret_value(),
            "EHB_DATA_DIR": str(d.tmp),
        },
    )
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.integration
def test_registry_update_applies_without_restarting_the_worker(
    deploy: DeploymentFactory, tmp_path: Path
) -> None:
    d = deploy(registry_refresh_s=1)
    worker = d.workers[0]
    pid = worker.proc.pid
    reference = _reference_rows()

    def registry_size() -> float:
        return scrape(worker.metrics_port).get("ehb_worker_registry_facilities", 0)

    # the refresh timer runs: the gauge is only set by it
    wait_until(lambda: registry_size() == len(reference), 30, message="a registry refresh")

    d.publish([f.exam(701, facility=NEW_CODE)])
    wait_until(lambda: d.count("dead_letters") == 1, 60, message="the first event dead-lettered")
    assert d.scalar("SELECT reason FROM dead_letters") == "facility_unknown"

    output = _ehb(d, "registry", "load", str(_write_csv(tmp_path / "add.csv", [NEW_ROW])))
    assert "1 facilities loaded" in output
    wait_until(
        lambda: registry_size() == len(reference) + 1,
        30,
        message="the worker's registry to include the new facility",
    )
    d.publish([f.exam(702, facility=NEW_CODE)])
    wait_until(
        lambda: d.count("health_book_entries", f"ma_cskcb = '{NEW_CODE}'") == 1,
        60,
        message="the second event accepted",
    )

    # deactivate one facility by leaving it out of a full file
    kept = [r for r in reference if r["code"] != "79005"] + [NEW_ROW]
    output = _ehb(
        d, "registry", "load", "--deactivate-missing", str(_write_csv(tmp_path / "full.csv", kept))
    )
    assert "1 deactivated" in output
    wait_until(lambda: registry_size() == len(reference), 30, message="79005 leaves the registry")
    d.publish([f.exam(703, facility="79005")])
    wait_until(
        lambda: d.count("dead_letters", "ma_cskcb = '79005'") == 1,
        60,
        message="79005's event dead-lettered",
    )
    assert (
        d.scalar("SELECT reason FROM dead_letters WHERE ma_cskcb = '79005'") == "facility_unknown"
    )

    listed = _ehb(d, "registry", "list")
    assert NEW_CODE in listed and "79005" not in listed
    assert "79005" in _ehb(d, "registry", "list", "--all")
    assert worker.proc.poll() is None and worker.proc.pid == pid  # never restarted
