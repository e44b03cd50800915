"""Daily facility reports: the facility side's bookkeeping, the reconciliation against what the
pipeline received (on PostgreSQL), and the whole path through the broker, worker and sink."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg2
import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from ehb.commands.simulate import run_simulation
from producers.reports import DailyReportBook, ReportPublisher, episode_day, pick_facilities
from schemas import SUBJECTS, AvroCodec
from schemas.time import VN_TZ, parse_datetime
from simulation.simulator import CitySimulator, SimulationConfig
from sinks.reconcile import Reconciler, episode_of_dead_letter, last_passed_day
from sinks.reports import report_problem, write_reports
from tests.support import factories as f

D1 = date(2024, 3, 4)
D2 = date(2024, 3, 5)


def _at(day: date, hour: int = 9) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=VN_TZ)


def _report(code: str, day: date, count: int, sent_at: datetime | None = None) -> dict[str, Any]:
    return {
        "ma_cskcb": code,
        "report_date": day,
        "episodes_sent": count,
        "sent_at": sent_at or datetime.now(UTC),
    }


# -- the facility side (pure) ---------------------------------------------------------------
def test_an_episode_belongs_to_its_discharge_day_in_vietnam_time() -> None:
    late_evening = f.exam(admitted=_at(D1, 22), hours=1.5)  # discharged 23:30 on D1
    after_midnight = f.exam(admitted=_at(D1, 23), hours=1.5)  # discharged 00:30 on D2
    assert episode_day(late_evening) == D1
    assert episode_day(after_midnight) == D2
    assert episode_day(f.exam(ngay_ra="2024-03-04")) is None


def test_every_facility_reports_every_day_including_days_without_data() -> None:
    book = DailyReportBook(["79001", "79002"], D1)
    book.sent(f.exam(facility="79001", admitted=_at(D1)))
    book.sent(f.exam(facility="79001", admitted=_at(D1)))
    book.sent(f.exam(facility="79999", admitted=_at(D1)))  # not one of ours: not counted
    assert book.close_before(_at(D1, 23)) == []  # the day is not over
    reports = book.close_before(_at(D2, 0))
    assert [(r["ma_cskcb"], r["report_date"], r["episodes_sent"]) for r in reports] == [
        ("79001", D1, 2),
        ("79002", D1, 0),
    ]
    book.sent(f.exam(facility="79002", admitted=_at(D2 + timedelta(days=1))))
    reports = book.close_all()
    assert [(r["ma_cskcb"], r["report_date"], r["episodes_sent"]) for r in reports] == [
        ("79001", D2, 0),
        ("79002", D2, 0),
        ("79001", D2 + timedelta(days=1), 0),
        ("79002", D2 + timedelta(days=1), 1),
    ]
    assert book.late == 0


def test_silent_facilities_never_report_and_inconsistent_ones_misreport() -> None:
    codes = [f"790{i:02d}" for i in range(1, 21)]
    silent, inconsistent = pick_facilities(codes, 2, 3, seed=79)
    assert len(silent) == 2 and len(inconsistent) == 3 and not silent & inconsistent
    assert (silent, inconsistent) == pick_facilities(codes, 2, 3, seed=79)  # reproducible
    book = DailyReportBook(codes, D1, silent=silent, inconsistent=inconsistent)
    for code in codes:
        book.sent(f.exam(facility=code, admitted=_at(D1)))
    reports = {r["ma_cskcb"]: r["episodes_sent"] for r in book.close_all()}
    assert set(reports) == set(codes) - silent
    assert {c for c, n in reports.items() if n != 1} == inconsistent
    assert all(n >= 0 for n in reports.values())
    assert all(book.truth[c, D1] == 1 for c in codes)


def test_the_simulator_horizon_bounds_every_later_discharge() -> None:
    """Days the book closes at the simulator's horizon can receive no more episodes."""
    simulator = CitySimulator(
        SimulationConfig(
            events=4000, days=6, invalid_share=0.05, appointment_share=0.3, referral_share=0.1
        )
    )
    horizons, discharges = [], []
    for event in simulator.events():
        horizons.append(simulator.horizon)
        discharges.append(parse_datetime(event["ngay_ra"]))
    earliest_after = discharges[-1]
    for i in range(len(discharges) - 2, -1, -1):
        earliest_after = min(earliest_after, discharges[i + 1])
        assert earliest_after >= horizons[i], i


def test_simulated_reports_match_what_was_sent() -> None:
    simulator = CitySimulator(SimulationConfig(events=3000, days=4, invalid_share=0.05))
    codes = [fa.code for fa in simulator.facilities]
    book = DailyReportBook(codes, simulator.config.start.date())
    reports: list[dict[str, Any]] = []
    sent: Counter[tuple[str, date]] = Counter()
    for event in simulator.events():
        book.sent(event)
        if event["ma_cskcb"] in codes:
            sent[event["ma_cskcb"], episode_day(event)] += 1
        reports += book.close_before(simulator.horizon)
    reports += book.close_all()
    days = {r["report_date"] for r in reports}
    assert len(reports) == len(codes) * len(days)  # zero days included
    assert {(r["ma_cskcb"], r["report_date"]): r["episodes_sent"] for r in reports} == {
        (c, d): sent[c, d] for c in codes for d in days
    }
    assert book.late == 0


# -- pure pieces of the sink ----------------------------------------------------------------
def test_a_day_passes_its_grace_period_after_its_end() -> None:
    grace = timedelta(hours=12)
    assert last_passed_day(_at(D2, 11), grace) == D1 - timedelta(days=1)
    assert last_passed_day(_at(D2, 12), grace) == D1
    assert last_passed_day(datetime(2024, 3, 5, 5, tzinfo=UTC), grace) == D1  # 12:00 in VN


def test_implausible_reports_are_refused() -> None:
    today = date(2024, 6, 1)
    assert report_problem(_report("79001", D1, 0), today) is None
    assert "5-digit" in (report_problem(_report("7900A", D1, 1), today) or "")
    assert "negative" in (report_problem(_report("79001", D1, -1), today) or "")
    assert "plausible" in (report_problem(_report("79001", date(2024, 6, 9), 1), today) or "")


def test_the_episode_of_a_dead_letter_is_decoded_from_its_original_bytes() -> None:
    codec = AvroCodec()
    event = f.exam(facility="79002", admitted=_at(D1, 23), hours=2)
    assert episode_of_dead_letter(codec, codec.encode(SUBJECTS.EXAMINATION_EVENT, event)) == (
        "79002",
        event["ma_lk"],
        D2,
    )
    broken = codec.encode(SUBJECTS.EXAMINATION_EVENT, {**event, "ngay_ra": "2024-03-05"})
    assert episode_of_dead_letter(codec, broken) == ("79002", event["ma_lk"], None)
    assert episode_of_dead_letter(codec, b"\x89PNG") == (None, None, None)


# -- reconciliation on PostgreSQL -----------------------------------------------------------
def _insert_episode(d: Deployment, facility: str, ma_lk: str, discharged: datetime) -> None:
    d.query(
        "INSERT INTO health_book_entries (ma_cskcb, ma_lk, event_id, citizen_key, so_cccd, "
        "ho_ten, ngay_sinh, gioi_tinh, ma_the_bhyt, ma_dkbd, registration_province, "
        "facility_province, scope, ma_loai_kcb, visit_type, ma_benh_chinh, ngay_vao, ngay_ra, "
        "ket_qua_dtri, ma_loai_rv, t_tongchi_bv, t_tongchi_bh, t_bhtt, has_referral, "
        "has_appointment, published_at, processed_at) VALUES (%s, %s, %s, 'k', '079085000001', "
        "'Nguyễn Văn An', '198506150000', 1, 'GD479000000001', '79005', '79', '79', "
        "'in_province', '01', 'outpatient exam', 'J06.9', %s, %s, 1, 1, 1, 1, 1, false, false, "
        "now(), now()) RETURNING 1",
        facility,
        ma_lk,
        f"e-{facility}-{ma_lk}",
        discharged - timedelta(hours=1),
        discharged,
    )


def _insert_dead_letter(
    d: Deployment, event: dict[str, Any], reason: str = "icd10_main_invalid"
) -> None:
    original = d.codec.encode(SUBJECTS.EXAMINATION_EVENT, event)
    d.query(
        "INSERT INTO dead_letters (dead_letter_id, reason, message, stage, source_topic, "
        "source_partition, source_offset, event_index, event_id, ma_cskcb, original, "
        "published_at, failed_at) VALUES (%s, %s, 'm', 'validate', 't', 0, 0, NULL, %s, %s, "
        "%s, now(), now()) RETURNING 1",
        f"event:{event['event_id']}",
        reason,
        event["event_id"],
        event["ma_cskcb"],
        original,
    )


def _rows(d: Deployment, *codes: str) -> dict[tuple[str, date], tuple[Any, int, str]]:
    return {
        (c, day): (reported, received, status)
        for c, day, reported, received, status in d.query(
            "SELECT ma_cskcb, report_day, reported, received, status "
            "FROM facility_reports WHERE ma_cskcb = ANY(%s)",
            list(codes),
        )
    }


@pytest.mark.integration
def test_reconciliation_rules_on_postgresql(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False)
    # D1: 79001 sends 2 accepted + 1 dead-lettered and reports 3; 79002 sends 1, reports 2;
    # 79003 sends 1 and never reports; 79004 reports a day without data. 79005 is silent too.
    _insert_episode(d, "79001", "A1", _at(D1))
    _insert_episode(d, "79001", "A2", _at(D1, 23))
    bad = f.exam(facility="79001", admitted=_at(D1), ma_benh_chinh="XX")
    _insert_dead_letter(d, bad)
    _insert_dead_letter(d, {**f.exam(facility="79001", admitted=_at(D1)), "ma_lk": "A1"})
    _insert_episode(d, "79001", "A3", _at(D2, 0))  # after midnight: D2
    _insert_episode(d, "79002", "B1", _at(D1))
    _insert_episode(d, "79003", "C1", _at(D1))
    old = datetime(2024, 3, 5, tzinfo=UTC)
    write_reports(
        d.db,
        [
            _report("79001", D1, 3),
            _report("79002", D1, 2, old),
            _report("79004", D1, 0),
            _report("79002", D1, 1, old - timedelta(1)),
        ],
    )

    day_end = _at(D1 + timedelta(days=1), 0)
    early = Reconciler(d.codec, clock=lambda: (day_end + timedelta(hours=11)).timestamp())
    result = early.run(d.db)
    assert result.dead_letters_decoded == 2 and result.days == (D1, D2)
    assert _rows(d, "79001", "79003")[("79001", D1)] == (3, 3, "pending")  # grace not over
    assert ("79003", D1) not in _rows(d, "79003")  # no silent row before the day passed

    later = Reconciler(d.codec, clock=lambda: (day_end + timedelta(hours=12)).timestamp())
    later.run(d.db)
    rows = _rows(d, "79001", "79002", "79003", "79004", "79005", "79999")
    assert rows[("79001", D1)] == (3, 3, "ok")  # A1 accepted and dead-lettered: once
    assert rows[("79002", D1)] == (2, 1, "mismatch")  # the older resend did not win
    assert rows[("79003", D1)] == (None, 1, "silent")
    assert rows[("79004", D1)] == (0, 0, "ok")
    assert rows[("79005", D1)] == (None, 0, "silent")
    assert ("79001", D2) not in rows  # D2 has not passed and 79001 has not reported it yet
    assert not [k for k in rows if k[0] == "79999"]
    active = d.scalar("SELECT count(*) FROM facilities WHERE active")
    assert d.count("facility_reports", f"report_day = '{D1}'") == active

    # a corrected report arrives: pending until the next run, then ok
    write_reports(d.db, [_report("79002", D1, 1)])
    assert _rows(d, "79002")[("79002", D1)] == (1, 1, "pending")
    assert D1 in later.run(d.db).days
    assert _rows(d, "79002")[("79002", D1)] == (1, 1, "ok")

    # a resend that moves an episode's discharge to another day moves its count (the sink's
    # upsert updates the row: the UPDATE trigger), and deleted rows stop counting
    d.query(
        "UPDATE health_book_entries SET ngay_ra = %s, event_id = 'resent' "
        "WHERE ma_cskcb = '79002' AND ma_lk = 'B1' RETURNING 1",
        _at(D2),
    )
    d.query("DELETE FROM health_book_entries WHERE ma_cskcb = '79003' RETURNING 1")
    later.run(d.db)
    assert dict(
        d.query(
            "SELECT ma_cskcb || ':' || episode_day, accepted FROM "
            "facility_day_counts WHERE ma_cskcb IN ('79002', '79003')"
        )
    ) == {f"79002:{D1}": 0, f"79002:{D2}": 1, f"79003:{D1}": 0}
    assert _rows(d, "79002", "79003")[("79002", D1)] == (1, 0, "mismatch")
    assert _rows(d, "79002", "79003")[("79003", D1)] == (None, 0, "silent")
    assert d.count("facility_day_count_deltas") == 0

    # a deactivated facility is not expected to report
    d.query("UPDATE facilities SET active = false WHERE code = '79005' RETURNING 1")
    d.query("DELETE FROM facility_reports WHERE ma_cskcb = '79005' RETURNING 1")
    later.run(d.db)
    assert not _rows(d, "79005")


# -- end to end -----------------------------------------------------------------------------
@pytest.mark.integration
def test_reconciliation_flags_a_silent_facility_and_a_mismatched_count(
    deploy: DeploymentFactory,
) -> None:
    d = deploy(reports_reconcile_s=0.5)
    events = [
        f.exam(facility="79001", admitted=_at(D1)),
        f.exam(facility="79001", admitted=_at(D1, 10)),
        f.exam(facility="79001", admitted=_at(D1, 11), ma_benh_chinh="12345"),  # dead letter
        f.exam(facility="79002", admitted=_at(D1)),
        f.exam(facility="79003", admitted=_at(D1)),  # never reports
        f.exam(facility="79001", admitted=_at(D2)),
    ]
    d.publish(events)
    reports = ReportPublisher(d.settings, codec=d.codec)
    reports.publish(
        [
            _report("79001", D1, 3),
            _report("79002", D1, 2),
            _report("79004", D1, 0),  # 79002 off
            _report("79001", D2, 1),
            _report("79002", D2, 0),
            _report("79004", D2, 0),
        ]
    )
    assert reports.flush() == 0 and not reports.errors
    reports.close()
    d.wait_for_events(len(events))

    expected = {
        ("79001", D1): (3, 3, "ok"),
        ("79002", D1): (2, 1, "mismatch"),
        ("79003", D1): (None, 1, "silent"),
        ("79004", D1): (0, 0, "ok"),
        ("79001", D2): (1, 1, "ok"),
        ("79002", D2): (0, 0, "ok"),
        ("79003", D2): (None, 0, "silent"),
        ("79004", D2): (0, 0, "ok"),
    }
    wait_until(
        lambda: _rows(d, "79001", "79002", "79003", "79004") == expected,
        60,
        message="the reconciliation",
    )
    active = int(d.scalar("SELECT count(*) FROM facilities WHERE active"))

    def gauges() -> dict[str, float] | None:
        m = d.sink_metrics()
        return m if m.get("ehb_facilities_reporting") == 3 else None

    m = wait_until(gauges, 20, message="the facility report gauges")
    assert m["ehb_facilities_silent"] == active - 3  # the newest passed day: D2
    assert m["ehb_facility_report_mismatches"] == 0
    assert m['ehb_facility_report_days{status="mismatch"}'] == 1
    assert m['ehb_facility_report_days{status="silent"}'] == 2 * active - 6
    assert m["ehb_facility_reports_latest_day_timestamp_seconds"] == _at(D2, 0).timestamp()


@pytest.mark.integration
def test_the_simulated_city_reports_and_reconciles(deploy: DeploymentFactory) -> None:
    """The simulator's reports through the real pipeline: only the facilities it made silent
    or inconsistent are flagged, on every day; every other facility-day is ok."""
    d = deploy(reports_reconcile_s=0.5)
    config = SimulationConfig(
        events=600,
        days=3,
        invalid_share=0.05,
        silent_facilities=2,
        inconsistent_facilities=3,
        seed=7,
    )
    publisher = d.publisher(linger_s=60)
    try:
        summary = run_simulation(d.settings, config, publisher=publisher)
    finally:
        publisher.close()
    reports = summary["daily_reports"]
    silent = set(reports["silent_facilities"])
    inconsistent = set(reports["inconsistent_facilities"])
    d.wait_for_events(summary["events_published"])
    active = int(d.scalar("SELECT count(*) FROM facilities WHERE active"))
    assert reports["published"] == (active - 2) * reports["days"]

    def settled() -> list[tuple[Any, ...]] | None:
        rows = d.query("SELECT ma_cskcb, status, count(*) FROM facility_reports GROUP BY 1, 2")
        flagged = {(c, s) for c, s, _ in rows if s != "ok"}
        expected = {(c, "silent") for c in silent} | {(c, "mismatch") for c in inconsistent}
        return rows if flagged == expected else None

    rows = wait_until(settled, 60, message="the reconciliation to settle")
    assert {n for _, _, n in rows} == {reports["days"]}  # every facility, every day
    received = d.scalar("SELECT sum(received) FROM facility_reports")
    unknown = summary["invalid_expected"].get("facility_unknown", 0)
    assert received == summary["events_published"] - unknown  # 79999 is nobody's


@pytest.mark.integration
def test_reconciliation_runs_with_the_sinks_least_privileges(deploy: DeploymentFactory) -> None:
    """The sink runs as ehb_writer (no DELETE, no DDL; migration 090): its triggers, report
    upserts and reconciliation all work with those rights."""
    d = deploy(workers=0, sink=False)
    user = f"ehb_writer_{uuid.uuid4().hex[:8]}"
    with d.db.cursor() as cur:
        cur.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE ehb_writer')
    url = d.settings.database_url.get_secret_value()
    scheme, _, rest = url.partition("://")
    conn = psycopg2.connect(f"{scheme}://{user}@{rest.partition('@')[2]}")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == user
        conn.commit()
        write_reports(conn, [_report("79001", D1, 1)])
        _insert_episode_as(conn, "79001", "W1", _at(D1))
        result = Reconciler(d.codec, clock=lambda: _at(D2 + timedelta(days=1)).timestamp()).run(
            conn
        )
        assert not result.skipped and result.days == (D1,)
    finally:
        conn.close()
    assert _rows(d, "79001")[("79001", D1)] == (1, 1, "ok")
    assert d.count("facility_day_count_deltas") == 0


def _insert_episode_as(conn: Any, facility: str, ma_lk: str, discharged: datetime) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO health_book_entries (ma_cskcb, ma_lk, event_id, citizen_key, so_cccd, "
            "ho_ten, ngay_sinh, gioi_tinh, ma_the_bhyt, ma_dkbd, registration_province, "
            "facility_province, scope, ma_loai_kcb, visit_type, ma_benh_chinh, ngay_vao, "
            "ngay_ra, ket_qua_dtri, ma_loai_rv, t_tongchi_bv, t_tongchi_bh, t_bhtt, "
            "has_referral, has_appointment, published_at, processed_at) VALUES (%s, %s, %s, "
            "'k', '079085000001', 'An', '198506150000', 1, 'GD479000000001', '79005', '79', "
            "'79', 'in_province', '01', 'outpatient exam', 'J06.9', %s, %s, 1, 1, 1, 1, 1, "
            "false, false, now(), now())",
            (facility, ma_lk, f"e-{ma_lk}", discharged - timedelta(hours=1), discharged),
        )
    conn.commit()
