"""The pipeline's topics: logical names, keys, partition counts and retention.

Names here are logical; the settings add the deployment's prefix (``settings.topic(name)``,
``EHB_TOPIC_PREFIX``). Topics are created explicitly from :func:`topic_specs` (``ehb topics``);
nothing relies on broker auto-creation. ``asyncapi.yaml`` is generated from these specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas.time import DAY_MS

__all__ = [
    "APPOINTMENTS",
    "CITIZENS_CHANGELOG",
    "CITIZENS_TABLE",
    "DEAD_LETTER",
    "EXAMINATIONS",
    "EXAMINATIONS_BY_CITIZEN",
    "FACILITY_REPORTS",
    "HEALTH_BOOK",
    "REFERRALS",
    "SINK_TOPICS",
    "TopicSpec",
    "changelog_spec",
    "changelog_topic",
    "topic_specs",
]

#: input: facilities' examination events (ExaminationBatch or ExaminationEvent)
EXAMINATIONS = "examinations"
#: internal: validated events re-partitioned by citizen key, for the stateful stage
EXAMINATIONS_BY_CITIZEN = "examinations-by-citizen"
HEALTH_BOOK = "health-book"
REFERRALS = "referrals"
APPOINTMENTS = "appointments"
DEAD_LETTER = "dead-letter"
#: input: each facility's daily report
FACILITY_REPORTS = "facility-reports"
#: the topics the sink writes to PostgreSQL (FACILITY_REPORTS has its own consumer)
SINK_TOPICS = (HEALTH_BOOK, REFERRALS, APPOINTMENTS, DEAD_LETTER)

#: the stateful stage's Faust table
CITIZENS_TABLE = "citizens"
#: logical name of its changelog; Faust names it ``<app id (the worker group)>-citizens-changelog``
CITIZENS_CHANGELOG = f"{CITIZENS_TABLE}-changelog"


def changelog_topic(worker_group: str) -> str:
    """The full name of the citizens table's changelog topic."""
    return f"{worker_group}-{CITIZENS_CHANGELOG}"


class _Partitions(Protocol):
    """What the specs need of the settings."""

    @property
    def kafka_partitions(self) -> int: ...


@dataclass(frozen=True)
class TopicSpec:
    """A topic of the pipeline. ``name`` is logical; the settings add the prefix."""

    name: str
    partitions: int
    key: str
    value: str
    description: str
    config: dict[str, str] = field(default_factory=dict)
    internal: bool = False


def topic_specs(settings: _Partitions) -> list[TopicSpec]:
    """Every topic, with its partitioning and retention (also docs/reference.md's topic table)."""
    n = settings.kafka_partitions
    return [
        TopicSpec(
            EXAMINATIONS,
            n,
            "facility code (ma_cskcb)",
            "ExaminationBatch, ExaminationEvent, ExaminationWithdrawal or "
            "ExaminationWithdrawalBatch",
            "Input: facilities publish examination events, one or several per message, and "
            "withdrawals of episodes sent by mistake; a facility's messages stay in order on "
            "one partition.",
            {"retention.ms": str(30 * DAY_MS)},
        ),
        TopicSpec(
            EXAMINATIONS_BY_CITIZEN,
            n,
            "none (explicit partition = first 32 bits of citizen_key % n)",
            "ValidatedBatch",
            "Internal: validated, enriched events re-partitioned by pseudonymous citizen key "
            "for the stateful stage, with the intake's progress per input partition. Encoded "
            "as MessagePack behind a 0x01 marker byte (streams/internal.py); the Avro form "
            "(Confluent wire format) is accepted too.",
            {"retention.ms": str(7 * DAY_MS)},
            internal=True,
        ),
        TopicSpec(
            HEALTH_BOOK,
            n,
            "citizen_key",
            "HealthBookRecord or EpisodeWithdrawn",
            "Every valid examination (every version of a corrected episode), one "
            "BOOK_INTEGRATED record per citizen, and the episodes facilities withdrew.",
            {"retention.ms": str(30 * DAY_MS)},
        ),
        TopicSpec(
            REFERRALS,
            max(1, n // 2),
            "citizen_key",
            "ReferralRecord",
            "Referral letters: ISSUED, COMPLETED, EXPIRED, AMENDED, CANCELLED. Pseudonymous.",
            {"retention.ms": str(90 * DAY_MS)},
        ),
        TopicSpec(
            APPOINTMENTS,
            max(1, n // 2),
            "citizen_key",
            "AppointmentRecord",
            "Follow-up appointments: SCHEDULED, REMINDER, KEPT, MISSED, RESCHEDULED, "
            "CANCELLED. Pseudonymous.",
            {"retention.ms": str(90 * DAY_MS)},
        ),
        TopicSpec(
            DEAD_LETTER,
            max(1, n // 4),
            "facility code, when known",
            "DeadLetter",
            "Inputs that could not be processed, with the original bytes and a reason code.",
            {"retention.ms": str(90 * DAY_MS)},
        ),
        TopicSpec(
            FACILITY_REPORTS,
            max(1, n // 4),
            "facility code (ma_cskcb)",
            "FacilityDailyReport",
            "Input: each facility's daily report (episodes sent that day, zero included), "
            "reconciled by the sink with what was received (table facility_reports).",
            {"retention.ms": str(90 * DAY_MS)},
        ),
    ]


def changelog_spec(settings: _Partitions) -> TopicSpec:
    """The citizens table's changelog, as documented (Faust creates it, compacted)."""
    return TopicSpec(
        CITIZENS_CHANGELOG,
        settings.kafka_partitions,
        "JSON string: the pseudonymous citizen key, or `__clock__:<partition>:<i>` for a "
        "partition's event-time clock",
        "JSON citizen state (see streams/citizen_state.py), or null (a tombstone)",
        f"Internal: the changelog of the stateful stage's Faust table `{CITIZENS_TABLE}`, "
        "written and read (on recovery and rebalance) by the stream workers only. Created by "
        "Faust, compacted. Its format is not a contract: do not consume it.",
        {"cleanup.policy": "compact"},
        internal=True,
    )
