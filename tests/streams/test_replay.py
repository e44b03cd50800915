"""``ehb replay``: re-processing an already-processed range leaves the persisted state as it was."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from ehb.commands.cli import app
from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from ehb.commands.tail import Start, TopicReader
from schemas.topics import SINK_TOPICS
from tests.support import factories as f
from tests.support.pipeline import caught_up

pytestmark = pytest.mark.integration

TABLES = (
    "health_book_entries",
    "health_book_entry_versions",
    "health_books",
    "referrals",
    "appointments",
    "dead_letters",
    "campaign_counters",
)


def snapshot(d: Deployment) -> dict[str, Any]:
    """Every row of every table the sink writes (as text), and the counts."""
    state: dict[str, Any] = {}
    for table in TABLES:
        rows = d.query(f"SELECT t::text FROM {table} t ORDER BY 1")
        state[table] = [r[0] for r in rows]
    return state


def newest_timestamp(d: Deployment, topic: str) -> datetime:
    with TopicReader(d.settings, topic, Start("beginning")) as reader:
        stamps = [m.timestamp()[1] for m in reader.messages(follow=False, idle_s=0.3)]
    return datetime.fromtimestamp(max(stamps) / 1000).astimezone()


def wait_for_sink_caught_up(d: Deployment, timeout: float = 60) -> None:
    """The sink group has committed (so written) everything now in its topics."""
    caught_up(d, d.settings.sink_group, SINK_TOPICS, timeout)


def records_in(d: Deployment, topic: str) -> float:
    key = f'ehb_sink_records_in_total{{topic="{d.settings.topic(topic)}"}}'
    return d.sink_metrics().get(key, 0.0)


def replay(d: Deployment, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["replay", *args], env=d.children.env())
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_replay_of_a_processed_range_leaves_rows_unchanged(deploy: DeploymentFactory) -> None:
    d = deploy()
    at = f.BASE_TIME
    before_everything = datetime.now().astimezone() - timedelta(seconds=1)
    first = [f.exam(700 + i, admitted=at) for i in range(6)]
    first += [
        f.with_referral(f.exam(710, admitted=at), destination="79002"),
        f.with_appointment(f.exam(711, admitted=at), when=at + timedelta(days=14)),
        f.exam(712, facility="79999"),  # dead letter: facility_unknown
        f.exam(713, ma_benh_chinh="12345"),  # dead letter: icd10_main_invalid
    ]
    d.publish(first)
    d.wait_for_events(len(first))
    boundary = newest_timestamp(d, "examinations") + timedelta(milliseconds=1)
    second = [
        f.exam(710, facility="79002", admitted=at + timedelta(days=2)),  # referral completed
        f.exam(711, facility="79001", admitted=at + timedelta(days=14)),  # appointment kept
        # a correction of the first episode: its newest version stays the newest on replay
        {**first[0], "event_id": f"{first[0]['event_id']}-fixed", "ma_benh_chinh": "J18.9"},
    ]
    d.publish(second)
    d.wait_for_events(len(first) + len(second) - 1)  # the correction adds no row
    wait_until(
        lambda: d.count("referrals", "status = 'completed'") == 1,
        60,
        message="the referral completed",
    )
    wait_until(
        lambda: d.count("appointments", "status = 'kept'") == 1, 60, message="the appointment kept"
    )
    # The last timer: the reminder (24 h before the appointment, which the visit kept) fires
    # once the input partitions have been idle for partition_idle_s and release the
    # event-time clock. Taken before that, the snapshot is not the final state, and the
    # replay (which outlasts the idle time) would then seem to change it.
    wait_until(
        lambda: d.count("appointments", "reminded_at IS NOT NULL") == 1,
        60,
        message="the appointment's reminder sent",
    )
    wait_for_sink_caught_up(d)
    state = snapshot(d)
    assert len(state["health_book_entries"]) == 10 and len(state["dead_letters"]) == 2
    assert len(state["health_book_entry_versions"]) == 1  # the corrected episode's first

    # --dry-run and --to-time bound the range: only the first publication
    dry = replay(
        d,
        "--from-time",
        before_everything.isoformat(),
        "--to-time",
        boundary.isoformat(),
        "--dry-run",
    )
    assert (dry["events"], dry["accepted"], dry["dead_letters"]) == (10, 8, 2)
    assert dry["rejected"] == {"facility_unknown": 1, "icd10_main_invalid": 1}
    later = replay(d, "--from-time", boundary.isoformat(), "--dry-run")
    assert (later["events"], later["accepted"]) == (3, 3)

    # the real replay of everything
    health_book_in, dead_letters_in = records_in(d, "health-book"), records_in(d, "dead-letter")
    summary = replay(d, "--from-time", before_everything.isoformat())
    assert (summary["events"], summary["accepted"], summary["dead_letters"]) == (13, 11, 2)
    # the workers re-emit an EXAMINATION record per replayed valid event, and the dead letters
    wait_until(
        lambda: (
            records_in(d, "health-book") >= health_book_in + 11
            and records_in(d, "dead-letter") >= dead_letters_in + 2
        ),
        90,
        message="the replayed records consumed by the sink",
    )
    wait_for_sink_caught_up(d)
    assert snapshot(d) == state
