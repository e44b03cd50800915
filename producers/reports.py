"""The facilities' daily reports: how many episodes each facility sent per day, zero included.

:class:`DailyReportBook` is the facility side's bookkeeping (pure): it counts the episodes a
facility sends by the day of their discharge ``NGAY_RA`` (Vietnam time; the same rule the
pipeline reconciles with, see ``sinks.reconcile``) and, once a day can no longer receive
episodes, yields one report per facility for it. ``silent`` facilities never report;
``inconsistent`` ones misreport their count by a few episodes every day (the campaign's two
failure modes, for the reconciliation to find). :class:`ReportPublisher` sends the reports to
the ``facility-reports`` topic, keyed by facility code.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from ehb.kafka import producer_config
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec
from schemas.errors import EhbError
from schemas.time import VN_TZ, parse_datetime
from schemas.topics import FACILITY_REPORTS

__all__ = ["DailyReportBook", "ReportPublisher", "episode_day", "pick_facilities"]


def episode_day(event: dict[str, Any]) -> date | None:
    """The day an episode belongs to: its NGAY_RA's date in Vietnam time (None if invalid)."""
    try:
        return parse_datetime(event["ngay_ra"]).date()
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def pick_facilities(
    codes: Iterable[str], silent: int, inconsistent: int, seed: int
) -> tuple[frozenset[str], frozenset[str]]:
    """Deterministically choose ``silent`` and ``inconsistent`` facilities (disjoint)."""
    ordered = sorted(codes)
    if silent + inconsistent > len(ordered):
        raise EhbError(
            f"only {len(ordered)} facilities to make silent or inconsistent, "
            f"not {silent + inconsistent}"
        )
    chosen = random.Random(f"reports:{seed}").sample(  # noqa: S311 - a simulation
        ordered, silent + inconsistent
    )
    return frozenset(chosen[:silent]), frozenset(chosen[silent:])


class DailyReportBook:
    """Counts episodes sent per facility and day; closes days into report records."""

    def __init__(
        self,
        facilities: Iterable[str],
        first_day: date,
        *,
        silent: Iterable[str] = (),
        inconsistent: Iterable[str] = (),
        seed: int = 0,
    ) -> None:
        self.facilities = sorted(set(facilities))
        self.silent = frozenset(silent)
        self.inconsistent = frozenset(inconsistent)
        self._rng = random.Random(f"misreport:{seed}")  # noqa: S311 - a simulation
        self._known = set(self.facilities)
        self._sent: Counter[tuple[str, date]] = Counter()
        self.next_day = first_day  # the oldest day not reported yet
        self.last_day = first_day  # the newest day any episode belongs to
        #: (facility, day) -> the count the pipeline should find (episodes actually sent)
        self.truth: dict[tuple[str, date], int] = {}
        self.reports_made = 0
        self.late = 0  # episodes of a day already reported (counted nowhere)

    def sent(self, event: dict[str, Any]) -> None:
        """Count one published episode (valid or not: the facility does not know)."""
        facility = event.get("ma_cskcb")
        day = episode_day(event)
        if facility not in self._known or day is None:
            return
        if day < self.next_day:  # cannot happen with the simulator's horizon; never hide it
            self.late += 1
            return
        self._sent[facility, day] += 1
        self.last_day = max(self.last_day, day)

    def close_before(self, horizon: datetime) -> list[dict[str, Any]]:
        """Reports of every day that ends at or before ``horizon`` (no episode can follow)."""
        reports: list[dict[str, Any]] = []
        local = horizon.astimezone(VN_TZ)
        while (
            datetime.combine(self.next_day + timedelta(days=1), datetime.min.time(), VN_TZ) <= local
        ):
            reports += self._close(self.next_day)
        return reports

    def close_all(self) -> list[dict[str, Any]]:
        """Reports of every remaining day up to the newest episode's (the end of a run)."""
        reports: list[dict[str, Any]] = []
        while self.next_day <= self.last_day:
            reports += self._close(self.next_day)
        return reports

    def _close(self, day: date) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        reports = []
        for facility in self.facilities:
            count = self._sent.pop((facility, day), 0)
            self.truth[facility, day] = count
            if facility in self.silent:
                continue
            reported = count
            if facility in self.inconsistent:
                reported = count + self._rng.choice((1, 2, 3) if count == 0 else (-1, 1, 2))
            reports.append(
                {
                    "ma_cskcb": facility,
                    "report_date": day,
                    "episodes_sent": reported,
                    "sent_at": now,
                }
            )
        self.next_day = day + timedelta(days=1)
        self.reports_made += len(reports)
        return reports


class ReportPublisher:
    """FacilityDailyReport records -> topic ``facility-reports``, keyed by facility code."""

    def __init__(
        self,
        settings: Settings,
        *,
        codec: AvroCodec | None = None,
        producer: Producer | None = None,
    ) -> None:
        self.topic = settings.topic(FACILITY_REPORTS)
        self._encode = (codec or AvroCodec()).writer(SUBJECTS.FACILITY_DAILY_REPORT)
        self._producer = producer or Producer(producer_config(settings))
        self.delivered = 0
        self.errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.errors.append(str(err))

    def publish(self, reports: Iterable[dict[str, Any]]) -> None:
        for report in reports:
            value = self._encode(report)
            while True:
                try:
                    self._producer.produce(
                        self.topic,
                        value,
                        report["ma_cskcb"].encode(),
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        self._producer.flush(10)
