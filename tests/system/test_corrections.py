"""Corrections on the real broker and PostgreSQL: a re-sent episode with other content
supersedes the version before it, through the publisher API, ``ehb publish`` and the XML
gateway; an identical re-send is a no-op; an older version arriving after a newer one changes
only the history; an episode dead-lettered then corrected is accepted once and its dead letter
is marked superseded; referrals and appointments follow; a withdrawn episode is marked, its
appointment cancelled, and a newer version restores it; the counters equal the tables after
all of them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ehb.commands.cli import app
from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from producers.dossier import encode_dossier
from producers.gateway import Gateway
from producers.withdrawals import encode_withdrawals
from schemas import SUBJECTS, AvroCodec
from schemas.topics import EXAMINATIONS, EXAMINATIONS_BY_CITIZEN, HEALTH_BOOK, SINK_TOPICS
from tests.support import factories as f
from tests.support.pipeline import caught_up

pytestmark = pytest.mark.integration


def _processed(d: Deployment) -> None:
    """Everything published so far went through the worker and the sink."""
    s = d.settings
    caught_up(d, s.worker_group, (EXAMINATIONS, EXAMINATIONS_BY_CITIZEN))
    caught_up(d, s.sink_group, SINK_TOPICS)


def _diagnosis(d: Deployment, event: dict[str, Any]) -> str:
    return str(
        d.scalar(
            "SELECT ma_benh_chinh FROM health_book_entries WHERE ma_cskcb = %s AND ma_lk = %s",
            event["ma_cskcb"],
            event["ma_lk"],
        )
    )


def _versions(d: Deployment, event: dict[str, Any]) -> int:
    """The episode's examination versions: its entry (the current one) and its history."""
    episode = (event["ma_cskcb"], event["ma_lk"])
    history = d.scalar(
        "SELECT count(*) FROM health_book_entry_versions "
        "WHERE kind = 'examination' AND ma_cskcb = %s AND ma_lk = %s",
        *episode,
    )
    current = d.scalar(
        "SELECT count(*) FROM health_book_entries WHERE ma_cskcb = %s AND ma_lk = %s", *episode
    )
    return int(history) + int(current)


def _counters_equal_tables(d: Deployment) -> dict[str, float]:
    entries = d.count("health_book_entries")
    corrections = d.count("health_book_entry_versions", "kind = 'examination'")
    withdrawals = d.count("health_book_entry_versions", "kind = 'withdrawal'")
    superseded = d.count("dead_letters", "superseded_at IS NOT NULL")

    def settled() -> dict[str, float] | None:
        m = d.sink_metrics()
        exams = sum(v for k, v in m.items() if k.startswith("ehb_examinations_total{"))
        ok = (
            exams == entries
            and m.get("ehb_corrections_total") == corrections
            and m.get("ehb_dead_letters_superseded_total", 0) == superseded
            and m.get("ehb_withdrawals_total", 0) == withdrawals
        )
        return m if ok else None

    return wait_until(settled, 30, message="the sink's counters equal the tables")


def test_publisher_corrections_resends_late_versions_and_a_dead_letter_corrected(
    deploy: DeploymentFactory,
) -> None:
    d = deploy()
    a = f.exam(801)
    a_fixed = {**a, "event_id": str(uuid.uuid4()), "ma_benh_chinh": "J18.9"}
    b = f.exam(802)
    b_again = {**b, "event_id": str(uuid.uuid4())}  # identical content, a new event id
    c = f.exam(803)
    c_newer = {**c, "event_id": str(uuid.uuid4()), "ma_benh_chinh": "I10", "version": 20}
    c_older = {**c, "version": 10}  # published after c_newer
    e_bad = f.exam(804, ma_benh_chinh="12345")  # icd10_main_invalid
    e_fixed = {**e_bad, "event_id": str(uuid.uuid4()), "ma_benh_chinh": "J06.9"}

    publisher = d.publisher(batch_size=10, linger_s=60)
    publisher.add_all([a, b, c_newer, e_bad])
    publisher.flush(30)
    d.wait_for_events(4)
    publisher.add_all([a_fixed, b_again, c_older, e_fixed])
    publisher.flush(30)
    publisher.close()
    wait_until(lambda: d.count("health_book_entries") == 4, 60, message="four episodes")
    _processed(d)

    assert d.count("health_book_entries") == 4
    assert _diagnosis(d, a) == "J18.9" and _versions(d, a) == 2
    assert _diagnosis(d, b) == b["ma_benh_chinh"] and _versions(d, b) == 1
    assert _diagnosis(d, c) == "I10" and _versions(d, c) == 2  # the older one: history only
    assert _diagnosis(d, e_bad) == "J06.9" and _versions(d, e_bad) == 1
    dead = d.query("SELECT reason, ma_lk, superseded_at IS NOT NULL FROM dead_letters")
    assert dead == [("icd10_main_invalid", e_bad["ma_lk"], True)]
    corrected = d.scalar("SELECT count(*) FROM health_book_entries WHERE corrected_at IS NOT NULL")
    assert corrected == 1  # a; c's newest version came first, e's first accepted one last

    m = _counters_equal_tables(d)
    assert sum(v for k, v in m.items() if k.startswith("ehb_examinations_total{")) == 4
    assert m["ehb_corrections_total"] == 2  # a's correction, c's late older version
    assert m["ehb_dead_letters_superseded_total"] == 1

    # the health-book topic carries every version, ordered by (version or 0, position)
    codec = AvroCodec()
    records = [
        codec.decode(m.value(), (SUBJECTS.HEALTH_BOOK_RECORD,)).record
        for m in d.read_topic(HEALTH_BOOK)
    ]
    of_a = [r for r in records if r["ma_lk"] == a["ma_lk"] and r["record_type"] == "EXAMINATION"]
    assert [r["ma_benh_chinh"] for r in of_a] == [a["ma_benh_chinh"], "J18.9"]
    assert of_a[0]["version"] < of_a[1]["version"]
    assert of_a[0]["content_digest"] != of_a[1]["content_digest"]
    of_c = [r for r in records if r["ma_lk"] == c["ma_lk"] and r["record_type"] == "EXAMINATION"]
    newest = max(of_c, key=lambda r: ((r["version"] or 0), r["position"]))
    assert newest["ma_benh_chinh"] == "I10"


def _ehb(d: Deployment, *args: str) -> None:
    result = CliRunner().invoke(app, list(args), env=d.children.env())
    assert result.exit_code == 0, (result.output, result.exception)


def _jsonl(path: Path, *events: dict[str, Any]) -> Path:
    lines = []
    for event in events:
        line = {k: v for k, v in event.items() if k != "event_id"}  # ids derived
        lines.append(json.dumps(line, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_corrections_through_ehb_publish_and_the_gateway(deploy: DeploymentFactory) -> None:
    d = deploy()
    j = f.exam(811)
    g = f.exam(812, facility="79002")
    _ehb(d, "publish", str(_jsonl(d.tmp / "day1.jsonl", j)))
    drop = d.tmp / "drop"
    drop.mkdir()
    (drop / "day1.xml").write_bytes(encode_dossier("79002", [g]))
    with Gateway(d.settings) as gateway:
        gateway.run(drop, settle_s=0)
    d.wait_for_events(2)

    # the same episodes again: identical (a re-export), then corrected
    _ehb(d, "publish", str(_jsonl(d.tmp / "again.jsonl", j)))
    _ehb(d, "publish", str(_jsonl(d.tmp / "fixed.jsonl", {**j, "ma_benh_chinh": "E11.9"})))
    (drop / "day1-fixed.xml").write_bytes(
        encode_dossier("79002", [{**g, "ma_benh_chinh": "K29.7"}])
    )
    with Gateway(d.settings) as gateway:
        report = gateway.run(drop, settle_s=0)
    assert report.count("published") == 1
    wait_until(
        lambda: (_diagnosis(d, j), _diagnosis(d, g)) == ("E11.9", "K29.7"),
        60,
        message="both corrections applied",
    )
    _processed(d)
    assert d.count("health_book_entries") == 2
    assert (_versions(d, j), _versions(d, g)) == (2, 2)
    assert d.count("dead_letters") == 0
    m = _counters_equal_tables(d)
    assert m["ehb_corrections_total"] == 2


def test_referrals_and_appointments_follow_the_newest_version(deploy: DeploymentFactory) -> None:
    d = deploy()
    at = f.BASE_TIME
    moved_ref = f.with_referral(f.exam(821, admitted=at), destination="79002")
    removed_ref = f.with_referral(f.exam(822, admitted=at))
    moved_appt = f.with_appointment(f.exam(823, admitted=at), when=at + f.timedelta(days=14))
    removed_appt = f.with_appointment(f.exam(824, admitted=at), when=at + f.timedelta(days=14))
    publisher = d.publisher(batch_size=10, linger_s=60)
    publisher.add_all([moved_ref, removed_ref, moved_appt, removed_appt])
    publisher.flush(30)
    wait_until(
        lambda: (d.count("referrals"), d.count("appointments")) == (2, 2),
        60,
        message="two referrals and two appointments",
    )

    def new_id(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "event_id": str(uuid.uuid4())}

    number = moved_ref["referral"]["so_chuyentuyen"]
    publisher.add_all(
        [
            f.with_referral(new_id(moved_ref), destination="79005", number=number),
            {**new_id(removed_ref), "referral": None, "ma_loai_rv": 1, "ma_noi_den": None},
            f.with_appointment(
                new_id(moved_appt),
                when=at + f.timedelta(days=21),
                number=moved_appt["appointment"]["so_giayhen_kl"],
            ),
            {**new_id(removed_appt), "appointment": None},
            # the patient arrives at the corrected destination
            f.exam(821, facility="79005", admitted=at + f.timedelta(days=2)),
        ]
    )
    publisher.flush(30)
    publisher.close()

    def letters() -> dict[str, tuple[Any, ...]]:
        rows = d.query("SELECT referral_id, destination, status FROM referrals")
        rows += d.query(
            "SELECT appointment_id, appointment_at::date::text, status FROM appointments"
        )
        return {r[0]: r[1:] for r in rows}

    rid = f"{moved_ref['ma_cskcb']}:{number}"
    removed_rid = f"{removed_ref['ma_cskcb']}:{removed_ref['referral']['so_chuyentuyen']}"
    aid = f"{moved_appt['ma_cskcb']}:{moved_appt['appointment']['so_giayhen_kl']}"
    removed_aid = f"{removed_appt['ma_cskcb']}:{removed_appt['appointment']['so_giayhen_kl']}"
    expected = {
        rid: ("79005", "completed"),
        removed_rid: (removed_ref["referral"]["ma_noi_den"], "cancelled"),
        aid: ((at + f.timedelta(days=21)).date().isoformat(), "scheduled"),
        removed_aid: ((at + f.timedelta(days=14)).date().isoformat(), "cancelled"),
    }
    wait_until(lambda: letters() == expected, 60, message=f"letters {expected}")
    _processed(d)
    assert letters() == expected
    m = _counters_equal_tables(d)
    assert (
        m["ehb_referrals_amended_total"],
        m["ehb_referrals_cancelled_total"],
        m["ehb_appointments_rescheduled_total"],
        m["ehb_appointments_cancelled_total"],
        m["ehb_referrals_completed_total"],
    ) == (1, 1, 1, 1, 1)


def test_withdrawal_by_the_publisher_and_ehb_publish(deploy: DeploymentFactory) -> None:
    d = deploy()
    at = f.BASE_TIME
    with_appt = f.with_appointment(f.exam(831, admitted=at), when=at + f.timedelta(days=14))
    plain = f.exam(832, admitted=at)
    restored = f.exam(833, admitted=at)
    publisher = d.publisher(batch_size=10, linger_s=60)
    publisher.add_all([with_appt, plain, restored])
    publisher.flush(30)
    d.wait_for_events(3)
    publisher.withdraw(with_appt["ma_cskcb"], with_appt["ma_lk"], with_appt["so_cccd"], "gửi nhầm")
    publisher.withdraw(restored["ma_cskcb"], restored["ma_lk"], restored["so_cccd"])
    publisher.withdraw("79999", "LK-unknown-facility", plain["so_cccd"])  # facility_unknown
    publisher.flush(30)
    line = {
        "withdraw": True,
        "ma_cskcb": plain["ma_cskcb"],
        "ma_lk": plain["ma_lk"],
        "so_cccd": plain["so_cccd"],
    }
    path = d.tmp / "withdraw.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    _ehb(d, "publish", str(path))
    wait_until(
        lambda: d.count("health_book_entries", "withdrawn_at IS NOT NULL") == 3,
        60,
        message="three episodes withdrawn",
    )
    # a newer version of a withdrawn episode restores it
    publisher.add({**restored, "event_id": str(uuid.uuid4()), "ma_benh_chinh": "J20.9"})
    publisher.flush(30)
    publisher.close()
    wait_until(
        lambda: d.count("health_book_entries", "withdrawn_at IS NOT NULL") == 2,
        60,
        message="one episode restored",
    )
    _processed(d)
    assert d.count("health_book_entries") == 3
    assert _diagnosis(d, restored) == "J20.9"
    aid = f"{with_appt['ma_cskcb']}:{with_appt['appointment']['so_giayhen_kl']}"
    assert d.query("SELECT appointment_id, status FROM appointments") == [(aid, "cancelled")]
    assert d.query("SELECT reason FROM dead_letters") == [("facility_unknown",)]
    m = _counters_equal_tables(d)
    assert m["ehb_withdrawals_total"] == 3
    assert sum(v for k, v in m.items() if k.startswith("ehb_examinations_total{")) == 3
    assert m["ehb_appointments_cancelled_total"] == 1
    # the facility's daily count no longer has the two withdrawn episodes
    d.scalar("SELECT facility_day_counts_fold()")
    assert d.scalar("SELECT sum(accepted) FROM facility_day_counts") == 1
    # the health-book topic told downstream
    codec = AvroCodec()
    withdrawn = [
        codec.decode(msg.value(), (SUBJECTS.EPISODE_WITHDRAWN,)).record["ma_lk"]
        for msg in d.read_topic(HEALTH_BOOK)
        if codec.decode(msg.value()).subject == SUBJECTS.EPISODE_WITHDRAWN
    ]
    assert sorted(withdrawn) == sorted([with_appt["ma_lk"], plain["ma_lk"], restored["ma_lk"]])


def test_withdrawal_through_the_gateway(deploy: DeploymentFactory) -> None:
    d = deploy()
    episodes = [f.exam(841 + i, facility="79002") for i in range(3)]
    drop = d.tmp / "drop"
    drop.mkdir()
    (drop / "day1.xml").write_bytes(encode_dossier("79002", episodes))
    with Gateway(d.settings) as gateway:
        gateway.run(drop, settle_s=0)
    d.wait_for_events(3)
    # the HIS drops a withdrawal list for two of them; then the same list again
    listing = encode_withdrawals("79002", [{**e, "ly_do": "gửi nhầm"} for e in episodes[:2]])
    (drop / "huy-1.xml").write_bytes(listing)
    with Gateway(d.settings) as gateway:
        report = gateway.run(drop, settle_s=0)
    assert report.count("published") == 1
    (drop / "huy-again.xml").write_bytes(listing)
    with Gateway(d.settings) as gateway:
        assert gateway.run(drop, settle_s=0).count("skipped") == 1
    wait_until(
        lambda: d.count("health_book_entries", "withdrawn_at IS NOT NULL") == 2,
        60,
        message="two episodes withdrawn",
    )
    _processed(d)
    withdrawn = {
        r[0]
        for r in d.query("SELECT ma_lk FROM health_book_entries WHERE withdrawn_at IS NOT NULL")
    }
    assert withdrawn == {e["ma_lk"] for e in episodes[:2]}
    assert _counters_equal_tables(d)["ehb_withdrawals_total"] == 2
