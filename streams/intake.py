"""The stateless stage: decode -> validate -> enrich -> route, a batch of Kafka messages at a time.

Pure logic, no I/O: the intake agent (``streams.intake_agent``) feeds it the messages of one
``take_events`` batch and sends what it returns (``streams.routing``). Every input event ends
up either in a :class:`ValidatedBatch` for the stateful stage (partitioned by pseudonymous
citizen key) or in a dead letter with a stable reason code; nothing is dropped. A dead letter
always fits in a Kafka message, whatever the input's size (``schemas.dead_letters``): an
original larger than ``original_max_bytes`` is kept as a prefix with its full length and
SHA-256.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas import SUBJECTS, AvroCodec, DecodeError
from schemas.dead_letters import DEFAULT_ORIGINAL_MAX_BYTES, bound_dead_letter
from schemas.episodes import episode_digest, position_of
from schemas.partitioning import citizen_partition
from schemas.reference import FacilityRegistry
from schemas.time import NEVER, VN_TZ
from streams.enrichment import enrich
from streams.validation import Rejection, Validator

__all__ = ["Intake", "IntakeResult", "SourceMessage", "INPUT_SUBJECTS"]

INPUT_SUBJECTS = frozenset(
    {
        SUBJECTS.EXAMINATION_EVENT,
        SUBJECTS.EXAMINATION_BATCH,
        SUBJECTS.EXAMINATION_WITHDRAWAL,
        SUBJECTS.EXAMINATION_WITHDRAWAL_BATCH,
    }
)


@dataclass(slots=True)
class SourceMessage:
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(slots=True)
class IntakeResult:
    #: target partition of examinations-by-citizen -> ValidatedExamination records (and
    #: withdrawals: {"withdrawal": ExaminationWithdrawal, "citizen_key", "position", ...})
    by_partition: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    #: (facility code or None, DeadLetter record)
    dead_letters: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    #: input partition -> newest event time (ms) of the valid events in this batch
    progress: dict[int, int] = field(default_factory=dict)
    #: input partition -> offset after the last message of this batch
    consumed: dict[int, int] = field(default_factory=dict)
    events_in: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class Intake:
    def __init__(
        self,
        codec: AvroCodec,
        registry: FacilityRegistry,
        citizen_key: Callable[[str], str],
        partitions: int,
        clock: Callable[[], float] = time.time,
        original_max_bytes: int = DEFAULT_ORIGINAL_MAX_BYTES,
    ) -> None:
        self.codec = codec
        self.original_max_bytes = original_max_bytes
        self.registry = registry
        self.validator = Validator(registry)
        self.citizen_key = citizen_key
        self.partitions = partitions
        self.clock = clock
        self._encode_event = codec.writer(SUBJECTS.EXAMINATION_EVENT)
        self._encode_withdrawal = codec.writer(SUBJECTS.EXAMINATION_WITHDRAWAL)
        # citizen ID -> (citizen key, partition): a citizen has ~3.4 exams a year
        self._keys: dict[str, tuple[str, int]] = {}

    def _key_of(self, citizen_id: str) -> tuple[str, int]:
        found = self._keys.get(citizen_id)
        if found is None:
            if len(self._keys) >= 50_000:  # bounded: forget everything, refill as we go
                self._keys.clear()
            key = self.citizen_key(citizen_id)
            found = self._keys[citizen_id] = (key, citizen_partition(key, self.partitions))
        return found

    def process(self, messages: Iterable[SourceMessage]) -> IntakeResult:
        result = IntakeResult()
        now_s = self.clock()
        now = datetime.fromtimestamp(now_s, VN_TZ)
        now_ms = int(now_s * 1000)
        consumed = result.consumed
        for message in messages:
            self._process_message(message, result, now, now_ms)
            if message.offset + 1 > consumed.get(message.partition, -1):
                consumed[message.partition] = message.offset + 1
        return result

    def _process_message(
        self, message: SourceMessage, result: IntakeResult, now: datetime, now_ms: int
    ) -> None:
        try:
            decoded = self.codec.decode(message.value, INPUT_SUBJECTS)
        except DecodeError as exc:
            result.events_in += 1
            self._dead_letter(
                result,
                message,
                "decode",
                exc.reason,
                exc.message,
                now_ms,
                original=message.value or b"",
                schema_id=exc.schema_id,
            )
            return
        if decoded.subject == SUBJECTS.EXAMINATION_WITHDRAWAL:
            self._withdrawal(message, decoded.record, decoded.schema_id, result, now_ms)
            return
        if decoded.subject == SUBJECTS.EXAMINATION_WITHDRAWAL_BATCH:
            facility = decoded.record["ma_cskcb"]
            for i, withdrawal in enumerate(decoded.record["withdrawals"]):
                self._withdrawal(
                    message, withdrawal, decoded.schema_id, result, now_ms, i, facility
                )
            return
        if decoded.subject == SUBJECTS.EXAMINATION_BATCH:
            events = decoded.record["events"]
            batch_facility: str | None = decoded.record["ma_cskcb"]
            if not events:
                result.events_in += 1
                self._dead_letter(
                    result,
                    message,
                    "decode",
                    "empty_batch",
                    "the batch has no event",
                    now_ms,
                    original=message.value or b"",
                    schema_id=decoded.schema_id,
                    ma_cskcb=batch_facility,
                )
                return
            indexed: list[tuple[int | None, dict[str, Any]]] = list(enumerate(events))
        else:
            batch_facility = None
            indexed = [(None, decoded.record)]

        for index, event in indexed:
            result.events_in += 1
            rejection: Rejection | None
            if batch_facility is not None and event["ma_cskcb"] != batch_facility:
                rejection = Rejection(
                    "batch_facility_mismatch",
                    f"event MA_CSKCB={event['ma_cskcb']} in a batch of {batch_facility}",
                )
            else:
                rejection = self.validator.validate(event, now)
            if rejection is not None:
                original = message.value if index is None else self._encode_event(event)
                self._dead_letter(
                    result,
                    message,
                    "validate",
                    rejection.reason,
                    rejection.message,
                    now_ms,
                    original=original or b"",
                    schema_id=decoded.schema_id,
                    index=index,
                    event=event,
                )
                continue
            key, partition = self._key_of(event["so_cccd"])
            item = enrich(event, self.registry, key, message.timestamp_ms)
            item["position"] = position_of(message.offset, index)
            item["content_digest"] = episode_digest(event)
            result.by_partition[partition].append(item)
            result.accepted += 1
            if item["event_time"] > result.progress.get(message.partition, NEVER):
                result.progress[message.partition] = item["event_time"]

    def _withdrawal(
        self,
        message: SourceMessage,
        withdrawal: dict[str, Any],
        schema_id: int,
        result: IntakeResult,
        now_ms: int,
        index: int | None = None,
        batch_facility: str | None = None,
    ) -> None:
        result.events_in += 1
        rejection: Rejection | None
        if batch_facility is not None and withdrawal["ma_cskcb"] != batch_facility:
            rejection = Rejection(
                "batch_facility_mismatch",
                f"withdrawal MA_CSKCB={withdrawal['ma_cskcb']} in a batch of {batch_facility}",
            )
        else:
            rejection = self.validator.validate_withdrawal(withdrawal)
        if rejection is not None:
            self._dead_letter(
                result,
                message,
                "validate",
                rejection.reason,
                rejection.message,
                now_ms,
                original=(message.value if index is None else self._encode_withdrawal(withdrawal))
                or b"",
                schema_id=schema_id,
                index=index,
                event=withdrawal,
            )
            return
        key, partition = self._key_of(withdrawal["so_cccd"])
        result.by_partition[partition].append(
            {
                "withdrawal": withdrawal,
                "citizen_key": key,
                "position": position_of(message.offset, index),
                "published_at": message.timestamp_ms,
            }
        )
        result.accepted += 1

    def _dead_letter(
        self,
        result: IntakeResult,
        message: SourceMessage,
        stage: str,
        reason: str,
        text: str,
        now_ms: int,
        *,
        original: bytes,
        schema_id: int | None = None,
        index: int | None = None,
        event: dict[str, Any] | None = None,
        ma_cskcb: str | None = None,
    ) -> None:
        facility = event.get("ma_cskcb") if event is not None else ma_cskcb
        if facility is not None and not isinstance(facility, str):
            facility = None
        ma_lk = event.get("ma_lk") if event is not None else None
        result.rejected[reason] += 1
        dead_letter = bound_dead_letter(
            {
                "reason": reason,
                "message": text,
                "stage": stage,
                "source_topic": message.topic,
                "source_partition": message.partition,
                "source_offset": message.offset,
                "event_index": index,
                "event_id": event.get("event_id") if event is not None else None,
                "ma_cskcb": facility,
                "ma_lk": ma_lk if isinstance(ma_lk, str) else None,
                "schema_id": schema_id,
                "original": original,
                "published_at": message.timestamp_ms,
                "failed_at": now_ms,
            },
            self.original_max_bytes,
        )
        # the key is the bounded facility code too: a key is part of the message's size
        result.dead_letters.append((dead_letter["ma_cskcb"], dead_letter))
