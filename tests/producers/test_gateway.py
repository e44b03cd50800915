"""The XML dossier gateway on the real broker and PostgreSQL: simulated hospital dossiers end
up as exactly their episodes in the database; corrupt files are moved aside with a reason while
the good ones are published; nothing is published twice, across restarts and a crash between
the broker's acknowledgement and the ledger; a watched directory picks up dropped files."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from ehb.commands.xml_export import export_simulation, write_dossier
from producers.dossier import Limits, encode_dossier, parse_dossier
from producers.gateway import HASH_HEADER, Gateway, GatewayReport, Ledger
from schemas.reasons import REASON_CODES
from schemas.topics import EXAMINATIONS
from simulation.simulator import CitySimulator, SimulationConfig
from tests.support import factories as f

pytestmark = pytest.mark.integration


def _episodes(files: list[Path]) -> tuple[set[tuple[str, str]], int, int]:
    """(facility, MA_LK) of every episode in ``files``, and their referral/appointment counts."""
    keys: set[tuple[str, str]] = set()
    referrals = appointments = 0
    for path in files:
        for event in parse_dossier(path.read_bytes()).events:
            keys.add((event["ma_cskcb"], event["ma_lk"]))
            referrals += event["referral"] is not None
            appointments += event["appointment"] is not None
    return keys, referrals, appointments


def _run(d: Deployment, drop: Path, **options: object) -> GatewayReport:
    with Gateway(d.settings, **options) as gateway:  # type: ignore[arg-type]
        return gateway.run(drop, settle_s=0)


def _hashes_on_topic(d: Deployment) -> list[str]:
    return [dict(m.headers() or [])[HASH_HEADER].decode() for m in d.read_topic(EXAMINATIONS)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dossiers_become_exactly_their_episodes_and_a_restart_publishes_nothing_twice(
    deploy: DeploymentFactory,
) -> None:
    d = deploy()
    drop = d.tmp / "drop"
    exported = export_simulation(SimulationConfig(events=300, invalid_share=0, seed=11), drop)
    files = sorted(drop.glob("*.xml"))
    keys, referrals, appointments = _episodes(files)
    assert len(keys) == exported["episodes"] == 300 and referrals + appointments > 0

    report = _run(d, drop)
    assert report.count("published") == len(files) and report.episodes == 300
    assert not list(drop.glob("*.xml"))
    assert sorted(p.name for p in (drop / "done").glob("*.xml")) == [p.name for p in files]

    wait_until(lambda: d.count("health_book_entries") == 300, 120, message="300 episodes")
    assert set(d.query("SELECT ma_cskcb, ma_lk FROM health_book_entries")) == keys
    wait_until(
        lambda: (d.count("referrals"), d.count("appointments")) == (referrals, appointments),
        60,
        message="referrals and appointments",
    )
    assert d.count("dead_letters") == 0
    names = {row[0] for row in d.query("SELECT ho_ten FROM health_book_entries")}
    assert any(any(ch in name for ch in "ĐđƯưẮắỆệ") for name in names)  # UTF-8 kept

    # restart over the same directory, after the HIS dropped every file again (one renamed)
    for path in sorted((drop / "done").glob("*.xml")):
        shutil.copy(path, drop / path.name)
    shutil.copy(drop / files[0].name, drop / "resent-under-another-name.xml")
    again = _run(d, drop)
    assert again.count("published") == 0 and again.count("skipped") == len(files) + 1
    hashes = _hashes_on_topic(d)
    assert len(hashes) == len(set(hashes)) == len(files)
    assert d.count("health_book_entries") == 300


def test_corrupt_dossiers_are_moved_aside_with_a_reason_and_the_good_ones_published(
    deploy: DeploymentFactory,
) -> None:
    d = deploy(workers=0, sink=False)
    drop = d.tmp / "drop"
    export_simulation(SimulationConfig(events=60, invalid_share=0, seed=3), drop)
    good = sorted(drop.glob("*.xml"))
    sample = good[0].read_bytes()
    start = sample.index(b"<NOIDUNGFILE>") + len(b"<NOIDUNGFILE>")
    corrupt = {
        "20240111_79001_900.xml": (sample[:start] + b"%%%" + sample[start + 3 :], "base64_invalid"),
        "20240111_79001_901.xml": (sample[: len(sample) // 2], "xml_malformed"),
        "20240111_79001_902.xml": (
            sample.replace(b"?>", b"?>" + f.BOMB.encode(), 1).replace(
                b"<NGAYLAP>", b"<NGAYLAP>&d;"
            ),
            "xml_forbidden",
        ),
        "20240111_79001_903.xml": (
            sample.replace(b"<SOLUONGHOSO>", b"<SOLUONGHOSO>9"),
            "count_mismatch",
        ),
        "20240111_79001_904.xml": (
            encode_dossier("79002", [f.exam(1, facility="79001")]),
            "facility_mismatch",
        ),
        "20240111_79001_905.xml": (
            encode_dossier("79001", [f.exam(i) for i in range(200)]),
            "dossier_too_large",
        ),
    }
    for name, (content, _) in corrupt.items():
        (drop / name).write_bytes(content)

    report = _run(d, drop, max_message_bytes=30_000)
    rejected = {o.file: o.reason for o in report.outcomes if o.status == "rejected"}
    assert rejected == {name: reason for name, (_, reason) in corrupt.items()}
    assert report.count("published") == len(good)
    for name, (content, reason) in corrupt.items():
        assert (drop / "rejected" / name).read_bytes() == content  # moved, never deleted
        text = (drop / "rejected" / f"{name}.reason.txt").read_text(encoding="utf-8")
        assert f"reason: {reason}\n" in text and f"file: {name}\n" in text
        # Vietnamese first: the people who fix the data at the facility read it
        vi, en = REASON_CODES[reason].text("vi"), REASON_CODES[reason].text("en")
        assert text.index(f"ý nghĩa: {vi[0]}\n") < text.index(f"meaning: {en[0]}\n")
        assert f"cách khắc phục: {vi[1]}\n" in text and f"fix: {en[1]}\n" in text
    assert sorted(_hashes_on_topic(d)) == sorted(_sha(drop / "done" / p.name) for p in good)

    with Gateway(d.settings) as gateway:  # a file that vanished before it could be read
        outcome = gateway.publish_file(drop / "gone.xml", move=False)
    assert (outcome.status, outcome.reason) == ("rejected", "file_unreadable")
    with Gateway(d.settings, limits=Limits(max_file_bytes=100)) as gateway:
        outcome = gateway.publish_file(drop / "done" / good[0].name, move=False)
    assert (outcome.status, outcome.reason) == ("rejected", "file_too_large")


class _Crash(Exception):
    pass


class _CrashAfterAck(Gateway):
    """Dies after the broker acknowledged ``victim`` and before the ledger says done."""

    victim = ""

    def _after_ack(self, name: str, *args: object) -> None:
        super()._after_ack(name, *args)  # type: ignore[arg-type]
        if name == self.victim:
            raise _Crash(name)


def test_a_crash_between_acknowledgement_and_ledger_publishes_nothing_twice(
    deploy: DeploymentFactory,
) -> None:
    d = deploy(workers=0, sink=False)
    drop = d.tmp / "drop"
    export_simulation(SimulationConfig(events=80, invalid_share=0, seed=5), drop)
    files = sorted(drop.glob("*.xml"))
    victim, unsent = files[2], files[3]
    with _CrashAfterAck(d.settings) as gateway:
        gateway.victim = victim.name
        with pytest.raises(_Crash):
            gateway.run(drop, settle_s=0)
        # and a gateway that died after writing `pending` but before producing the next file
        facility = parse_dossier(unsent.read_bytes()).facility
        partition = gateway._probe.partition_of(facility)
        gateway.ledger.begin(
            gateway.topic,
            _sha(unsent),
            unsent.name,
            facility=facility,
            episodes=1,
            partition=partition,
            scan_from=gateway._probe.next_offset_bound(partition),
        )
    assert victim.exists() and unsent.exists()
    assert len(d.read_topic(EXAMINATIONS)) == 3

    report = _run(d, drop)
    assert report.recovered == 1
    statuses = {o.file: o.status for o in report.outcomes}
    assert statuses[victim.name] == "skipped" and statuses[unsent.name] == "published"
    hashes = _hashes_on_topic(d)
    assert len(hashes) == len(set(hashes)) == len(files)
    assert not Ledger.for_settings(d.settings).pending(d.settings.topic(EXAMINATIONS))


def test_watch_picks_up_dropped_files_but_not_partial_ones(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False)
    drop = d.tmp / "drop"
    drop.mkdir()
    stop = threading.Event()
    reports: list[GatewayReport] = []

    def watch() -> None:
        with Gateway(d.settings) as gateway:
            reports.append(gateway.run(drop, watch=True, interval=0.1, settle_s=0.3, stop=stop))

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        events = list(CitySimulator(SimulationConfig(events=20, invalid_share=0)).events())
        (drop / "partial.xml.part").write_bytes(encode_dossier("79001", [])[:40])
        write_dossier(drop, "a.xml", encode_dossier(events[0]["ma_cskcb"], events[:1]))
        wait_until(lambda: (drop / "done" / "a.xml").exists(), 30, message="a.xml done")
        write_dossier(drop, "b.xml", encode_dossier(events[1]["ma_cskcb"], events[1:2]))
        wait_until(lambda: (drop / "done" / "b.xml").exists(), 30, message="b.xml done")
    finally:
        stop.set()
        thread.join(30)
    assert (drop / "partial.xml.part").exists()
    assert [o.status for o in reports[0].outcomes] == ["published", "published"]
    assert len(d.read_topic(EXAMINATIONS)) == 2


def test_cli_simulate_xml_out_gateway_and_publish_xml(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False)
    drop = d.tmp / "drop"
    env = d.children.env()

    def ehb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ehb", *args],
            env=env,
            text=True,
            capture_output=True,
            timeout=120,
        )

    made = ehb("simulate", "--events", "40", "--invalid-share", "0", "--xml-out", str(drop))
    assert made.returncode == 0, made.stderr
    files = sorted(drop.glob("*.xml"))
    assert files and '"episodes": 40' in made.stdout
    run = ehb("gateway", str(drop), "--settle", "0")
    assert run.returncode == 0, run.stderr
    assert "published" in run.stdout and not list(drop.glob("*.xml"))

    single = d.tmp / "single.xml"
    single.write_bytes(encode_dossier("79001", [f.exam(500)]))
    first = ehb("publish", str(single))
    assert first.returncode == 0 and "published 1 episodes" in first.stdout, first.stderr
    second = ehb("publish", str(single))
    assert second.returncode == 0 and "skipped" in second.stdout, second.stderr
    broken = d.tmp / "broken.xml"
    broken.write_bytes(b"<GIAMDINHHS><THONGTINDONVI>")
    bad = ehb("publish", str(broken))
    assert bad.returncode == 1 and "xml_malformed" in bad.stderr
    assert single.exists() and broken.exists()  # `ehb publish` leaves the file in place
    assert len(d.read_topic(EXAMINATIONS)) == len(files) + 1
