"""End to end on the real broker and PostgreSQL: a known mix through worker and sink processes,
then exact row counts, dead-letter reasons and metric values."""

from __future__ import annotations

import copy
from collections import Counter

import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from schemas.topics import EXAMINATIONS, HEALTH_BOOK
from tests.support import factories as f

pytestmark = pytest.mark.integration

HOSTILE = 'Robert\'); DROP TABLE health_book_entries;-- "quoted" \t\x07\u200b 😷'


def _known_mix() -> tuple[list[dict], dict]:
    at = f.BASE_TIME
    a = f.exam(1, name="Nguyễn Thị Ánh Tuyết", sex=2, year=1990, admitted=at)
    events = [
        a,
        f.exam(2, admitted=at),
        f.exam(3, name=HOSTILE, admitted=at),
        f.exam(4, facility="79005", admitted=at),
        f.exam(5, facility="79005", admitted=at, registration="74001"),  # out of province
        f.exam(6, admitted=at, registration="80012"),  # out of province
        f.with_referral(f.exam(7, admitted=at)),
        f.with_appointment(f.exam(8, admitted=at), when=at + f.timedelta(days=14)),
        f.exam(
            1,
            facility="79005",
            admitted=at + f.timedelta(days=1),
            sex=2,
            year=1990,
            name="Nguyễn Thị Ánh Tuyết",
        ),  # A again
        copy.deepcopy(a),  # duplicate of A
    ]
    invalid = [
        f.exam(9, so_cccd="07912345"),  # citizen_id_format
        f.exam(10, facility="79999"),  # facility_unknown
        f.exam(11, ma_benh_chinh="12345"),  # icd10_main_invalid
        f.exam(12, ngay_vao="202403050800", ngay_ra="202403040800"),  # date_order
        f.exam(13, t_tongchi_bh=400_000),  # money_insurer_exceeds_total
    ]
    expected = {
        "entries": 9,
        "in_province": 7,
        "out_of_province": 2,
        "books": 8,
        "referrals": 1,
        "appointments": 1,
        "dead": Counter(
            {
                "citizen_id_format": 1,
                "facility_unknown": 1,
                "icd10_main_invalid": 1,
                "date_order": 1,
                "money_insurer_exceeds_total": 1,
            }
        ),
    }
    return events + invalid, expected


def test_known_mix_exact_rows_reasons_and_metrics(deploy: DeploymentFactory) -> None:
    d: Deployment = deploy()
    events, expected = _known_mix()
    single = f.exam(14, facility="79002")  # one event in its own message
    publisher = d.publisher(batch_size=4, linger_s=60)
    publisher.add_all(events)
    publisher.publish_event(single)
    publisher.flush(30)
    publisher.close()
    total = len(events) + 1
    d.wait_for_events(total - 1)  # the duplicate collapses into one row

    assert d.count("health_book_entries") == expected["entries"] + 1
    assert d.count("health_book_entries", "scope = 'in_province'") == expected["in_province"] + 1
    assert d.count("health_book_entries", "scope = 'out_of_province'") == 2
    assert d.count("health_books") == expected["books"] + 1
    assert d.count("referrals") == expected["referrals"]
    assert d.count("appointments") == expected["appointments"]
    reasons = Counter(dict(d.query("SELECT reason, count(*) FROM dead_letters GROUP BY 1")))
    assert reasons == expected["dead"]

    # Vietnamese and hostile text stored verbatim
    names = {row[0] for row in d.query("SELECT ho_ten FROM health_book_entries")}
    assert "Nguyễn Thị Ánh Tuyết" in names
    assert HOSTILE in names
    assert d.count("health_book_entries") == expected["entries"] + 1  # table still there

    # the live counters equal the tables
    def metrics_settled() -> dict[str, float] | None:
        m = d.sink_metrics()
        return m if m.get('ehb_examinations_total{scope="in_province"}') == 8 else None

    m = wait_until(metrics_settled, 10, message="metrics")
    assert m['ehb_examinations_total{scope="out_of_province"}'] == 2
    assert m["ehb_health_books_integrated_total"] == d.count("health_books")
    assert m["ehb_referrals_total"] == 1
    assert m["ehb_appointments_total"] == 1
    for reason, count in expected["dead"].items():
        assert m[f'ehb_dead_letters_total{{reason="{reason}"}}'] == count
    assert m["ehb_end_to_end_latency_seconds_count"] == expected["entries"] + 1


def test_dead_letter_keeps_original_bytes_and_position(deploy: DeploymentFactory) -> None:
    d = deploy()
    bad = f.exam(20, facility="79999")
    d.publish([bad])
    d.wait_for_events(1)
    row = d.query(
        "SELECT reason, stage, source_topic, event_id, ma_cskcb, original, message "
        "FROM dead_letters"
    )[0]
    reason, stage, topic, event_id, facility, original, message = row
    assert (reason, stage, topic) == (
        "facility_unknown",
        "validate",
        d.settings.topic(EXAMINATIONS),
    )
    assert event_id == bad["event_id"] and facility == "79999"
    decoded = d.codec.decode(bytes(original)).record
    assert decoded["so_cccd"] == bad["so_cccd"]
    assert bad["so_cccd"] not in message and bad["ho_ten"] not in message


def test_redelivery_leaves_exactly_one_row(deploy: DeploymentFactory) -> None:
    d = deploy()
    events = [f.exam(30 + i) for i in range(20)]
    d.publish(events)
    d.publish(events)  # a facility re-sends the same day
    d.publish(list(reversed(events)), batch_size=3)  # and again, out of order
    wait_until(lambda: d.count("health_book_entries") == 20, 60, message="20 rows")
    # the three publications are all processed once the worker's intake has seen 60 events
    wait_until(
        lambda: (
            d.sink_metrics().get(
                'ehb_sink_records_in_total{topic="' + d.settings.topic(HEALTH_BOOK) + '"}', 0
            )
            >= 60 + 20
        ),
        60,
        message="all health-book records consumed",
    )
    assert d.count("health_book_entries") == 20
    assert d.count("health_books") == 20
    assert d.sink_metrics()['ehb_examinations_total{scope="in_province"}'] == 20
