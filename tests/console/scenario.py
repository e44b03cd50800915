"""A small, known pipeline history for the console's tests, sent through the real pipeline
(publisher -> broker -> worker -> sink -> PostgreSQL): facility 79001 corrects one episode,
withdraws another, has one rejection it fixed and one it did not; facility 79002 (someone
else's) has an episode and a rejection; both send a daily report."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg2

from console.accounts import Role, add_account
from ehb.commands.local import Deployment, wait_until
from producers.reports import ReportPublisher
from tests.support import factories as f

PASSWORD = "correct horse battery staple"  # noqa: S105 - a test account's
OWN, OTHER = "79001", "79002"
DAY = date(2024, 3, 4)  # factories.BASE_TIME's day: every episode is discharged on it


@dataclass
class Scenario:
    corrected: dict[str, Any]
    withdrawn: dict[str, Any]
    rejected: dict[str, Any]  # never fixed
    fixed: dict[str, Any]  # rejected, then corrected
    other: dict[str, Any]  # 79002's
    other_rejected: dict[str, Any]


def _new_version(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**event, "event_id": str(uuid.uuid4()), **changes}


def create_accounts(d: Deployment) -> dict[str, str]:
    """operator ``doh``, facility accounts ``f79001`` and ``f79002``: name -> password."""
    url = d.settings.database_url
    assert url is not None
    with contextlib.closing(psycopg2.connect(url.get_secret_value())) as conn:
        add_account(conn, "doh", Role.operator, PASSWORD)
        add_account(conn, "f79001", Role.facility, PASSWORD, OWN)
        add_account(conn, "f79002", Role.facility, PASSWORD, OTHER)
    return {"doh": PASSWORD, "f79001": PASSWORD, "f79002": PASSWORD}


def run_scenario(d: Deployment) -> Scenario:
    s = Scenario(
        corrected=f.exam(901, facility=OWN),
        withdrawn=f.exam(902, facility=OWN),
        rejected=f.exam(903, facility=OWN, ma_benh_chinh="12345"),  # icd10_main_invalid
        fixed=f.exam(904, facility=OWN, ma_benh_chinh="12345"),
        other=f.exam(905, facility=OTHER, name="Trần Thị Bình"),
        other_rejected=f.exam(906, facility=OTHER, ma_benh_chinh="12345"),
    )
    publisher = d.publisher(batch_size=10, linger_s=60)
    publisher.add_all([s.corrected, s.withdrawn, s.rejected, s.fixed, s.other, s.other_rejected])
    publisher.flush(30)
    first = [s.corrected, s.withdrawn, s.rejected, s.fixed, s.other, s.other_rejected]
    wait_until(
        lambda: (
            d.scalar(
                "SELECT (SELECT count(*) FROM health_book_entries WHERE ma_lk = ANY(%s))"
                " + (SELECT count(*) FROM dead_letters WHERE ma_lk = ANY(%s))",
                [e["ma_lk"] for e in first],
                [e["ma_lk"] for e in first],
            )
            == 6
        ),
        90,
        message="the scenario's first versions persisted or dead-lettered",
    )
    publisher.add_all(
        [
            _new_version(s.corrected, ma_benh_chinh="J18.9"),
            _new_version(s.fixed, ma_benh_chinh="J06.9"),
        ]
    )
    publisher.withdraw(OWN, s.withdrawn["ma_lk"], s.withdrawn["so_cccd"], "sent by mistake")
    publisher.flush(30)
    publisher.close()
    reports = ReportPublisher(d.settings)
    now = datetime.now(UTC)
    reports.publish(
        [
            {"ma_cskcb": OWN, "report_date": DAY, "episodes_sent": 5, "sent_at": now},
            {"ma_cskcb": OTHER, "report_date": DAY, "episodes_sent": 7, "sent_at": now},
        ]
    )
    assert reports.flush(30) == 0
    reports.close()
    wait_until(
        lambda: (
            d.scalar(
                "SELECT count(*) FILTER (WHERE superseded_at IS NOT NULL) = 1"
                " AND count(*) = 3 FROM dead_letters"
            )
            and d.count("health_book_entries", "withdrawn_at IS NOT NULL") == 1
            and d.count("health_book_entries", "corrected_at IS NOT NULL") >= 1
            and d.scalar(
                "SELECT count(*) FROM facility_reports WHERE report_day = %s"
                " AND ma_cskcb IN ('79001', '79002') AND status <> 'pending'",
                DAY,
            )
            == 2
        ),
        90,
        message="corrections, the withdrawal and both reports reconciled",
    )
    return s
