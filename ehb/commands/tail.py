"""``ehb tail TOPIC``: follow a topic and print its records, decoded, as JSON Lines.

One JSON object a line, for ``jq``::

    {"topic": "ehb.health-book", "partition": 3, "offset": 17,
     "timestamp": "2026-11-25T10:29:04.925Z", "key": "5f0c...", "format": "avro",
     "subject": "vn.ehb.HealthBookRecord", "schema_id": 3, "value": {...}}

* Avro values (Confluent wire format) are decoded with the catalog or the schema registry;
  the Faust changelog's JSON values are parsed; anything else is reported with a reason.
* ``bytes`` are base64, timestamps ISO 8601 (UTC, milliseconds).
* Personal data (``ehb.privacy.PERSONAL_FIELDS``, and the raw bytes of a dead letter) is
  masked unless ``show_personal_data``; an undecodable value's bytes are shown only then.
* Start: the end of every partition (default), the beginning, an offset (on every partition,
  or one), or a time (``offsets_for_times``; records older than the time are skipped too, so
  the result is right even on brokers that answer that request approximately).

The reader assigns partitions itself (no consumer group, no commits): tailing never disturbs
a consumer group and never moves anybody's offsets.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TextIO

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from ehb.commands.errors import UnknownTopic
from ehb.embedded import resolve_bootstrap
from ehb.exceptions import ServiceUnavailable
from ehb.kafka import consumer_config, position
from ehb.privacy import EMBEDDED_PERSONAL_FIELDS, PERSONAL_FIELDS, mask
from ehb.settings import Settings
from schemas import AvroCodec, DecodeError
from schemas.errors import EhbError
from schemas.registry import codec_for
from schemas.time import VN_TZ
from schemas.topics import CITIZENS_CHANGELOG, changelog_topic, topic_specs
from streams.state_codec import KEY_FORMAT, decode_key

__all__ = [
    "Start",
    "TopicReader",
    "UnknownTopic",
    "parse_time",
    "resolve_topic",
    "start_from",
    "tail",
    "tail_to_stdout",
    "to_json_line",
]

log = logging.getLogger(__name__)

MASKED_FIELDS = PERSONAL_FIELDS | EMBEDDED_PERSONAL_FIELDS


def logical_names(settings: Settings) -> list[str]:
    return [spec.name for spec in topic_specs(settings)] + [CITIZENS_CHANGELOG]


def resolve_topic(settings: Settings, name: str, existing: set[str]) -> str:
    """``health-book`` -> ``ehb.health-book``; a full name that exists is taken as is."""
    logical = {n: settings.topic(n) for n in logical_names(settings)}
    logical[CITIZENS_CHANGELOG] = changelog_topic(settings.worker_group)
    full = logical.get(name)
    if full is not None:
        if full not in existing:
            raise UnknownTopic(
                f"topic {full} ({name}) does not exist on the broker yet; "
                "create the topics with `ehb topics` (or start `ehb up`)"
            )
        return full
    if name in existing:
        return name
    raise UnknownTopic(
        f"unknown topic {name!r} (known: {', '.join(logical)}; or a full topic name)"
    )


def parse_time(text: str) -> datetime:
    """ISO 8601; without an offset the time is Vietnam time (UTC+7), like the data."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise EhbError(f"not an ISO 8601 time: {text!r} (e.g. 2024-03-04T08:00:00+07:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=VN_TZ)


@dataclass(frozen=True)
class Start:
    """Where to start reading: ``end`` (default), ``beginning``, ``offset`` or ``time``."""

    kind: str = "end"
    offset: int | None = None
    time: datetime | None = None

    @property
    def time_ms(self) -> int | None:
        return None if self.time is None else int(self.time.timestamp() * 1000)


def start_from(from_beginning: bool, from_offset: int | None, from_time: str | None) -> Start:
    """Where ``ehb tail`` starts, from its ``--from-*`` options (at most one of them)."""
    starts = [s for s in (from_beginning or None, from_offset, from_time) if s is not None]
    if len(starts) > 1:
        raise EhbError("give at most one of --from-beginning, --from-offset, --from-time")
    if from_beginning:
        return Start("beginning")
    if from_offset is not None:
        if from_offset < 0:
            raise EhbError("--from-offset must be >= 0")
        return Start("offset", offset=from_offset)
    if from_time is not None:
        return Start("time", time=parse_time(from_time))
    return Start("end")


# -- JSON ---------------------------------------------------------------------------------
def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any, show_personal: bool, field: str | None = None) -> Any:
    if field in MASKED_FIELDS and not show_personal and value is not None:
        if isinstance(value, bytes | bytearray):
            return f"<{len(value)} bytes masked>"
        return mask(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, show_personal, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, show_personal) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


def _decode_value(codec: AvroCodec, data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"format": "tombstone", "value": None}
    if data[:1] == b"\x00":
        try:
            decoded = codec.decode(data)
        except DecodeError as exc:
            return {
                "format": "undecodable",
                "error": {"reason": exc.reason, "message": exc.message},
            }
        return {
            "format": "avro",
            "subject": decoded.subject,
            "schema_id": decoded.schema_id,
            "value": decoded.record,
        }
    try:
        return {"format": "json", "value": json.loads(data)}
    except ValueError:
        return {
            "format": "undecodable",
            "error": {
                "reason": "bad_magic_byte",
                "message": "neither the Confluent wire format nor JSON",
            },
        }


def to_json_line(message: Message, codec: AvroCodec, show_personal: bool = False) -> str:
    """One message as a line of JSON (masked unless ``show_personal``)."""
    key = message.key()
    entry: dict[str, Any] = {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": _iso(datetime.fromtimestamp(message.timestamp()[1] / 1000, UTC)),
    }
    if key is None:
        entry["key"] = None
    elif key[:1] == KEY_FORMAT and (message.topic() or "").endswith("-changelog"):
        entry["key"] = decode_key(key)  # the citizens table's binary key: as its hex
    else:
        try:
            entry["key"] = key.decode("utf-8")
        except UnicodeDecodeError:
            entry["key_base64"] = base64.b64encode(key).decode("ascii")
    decoded = _decode_value(codec, message.value())
    if decoded["format"] == "undecodable" and show_personal:
        decoded["value_base64"] = base64.b64encode(message.value() or b"").decode("ascii")
    entry.update(decoded)
    return json.dumps(_jsonable(entry, show_personal), ensure_ascii=False, separators=(", ", ": "))


# -- reading ------------------------------------------------------------------------------
class TopicReader:
    """Reads one topic from a start position, without a consumer group.

    ``with TopicReader(settings, "health-book", Start("beginning")) as reader:``
    ``for message in reader.messages(): ...``
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        start: Start | None = None,
        *,
        partition: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.settings = settings
        self.start = start or Start()
        bootstrap = resolve_bootstrap(settings)
        conf = consumer_config(
            settings,
            f"ehb-tail-{int(time.time() * 1000)}",
            **{
                "enable.auto.offset.store": False,
                "socket.connection.setup.timeout.ms": max(1000, int(connect_timeout * 1000)),
                # unreachable brokers are reported once, by us
                "log_level": 0,
            },
        )
        self._consumer = Consumer(conf, logger=log)
        try:
            metadata = self._consumer.list_topics(timeout=connect_timeout)
        except KafkaException as exc:
            self._consumer.close()
            log.debug("metadata request failed: %s", exc)
            raise ServiceUnavailable(
                f"Kafka broker {bootstrap} unreachable (no answer in {connect_timeout:g} s)"
            ) from None
        try:
            self.topic = resolve_topic(settings, topic, set(metadata.topics))
            partitions = sorted(metadata.topics[self.topic].partitions)
            if partition is not None:
                if partition not in partitions:
                    raise EhbError(
                        f"{self.topic} has no partition {partition} "
                        f"(partitions 0-{len(partitions) - 1})"
                    )
                partitions = [partition]
            self.partitions = partitions
            self._assign()
        except BaseException:
            self._consumer.close()
            raise

    def _assign(self) -> None:
        start, name = self.start, self.topic
        self._watermarks = {
            p: self._consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            for p in self.partitions
        }
        offsets: dict[int, int] = {}
        if start.kind == "beginning":
            offsets = {p: OFFSET_BEGINNING for p in self.partitions}
        elif start.kind == "end":
            offsets = {p: OFFSET_END for p in self.partitions}
        elif start.kind == "offset":
            assert start.offset is not None
            offsets = {
                p: min(max(start.offset, low), high) for p, (low, high) in self._watermarks.items()
            }
        elif start.kind == "time":
            time_ms = start.time_ms
            assert time_ms is not None
            wanted = [TopicPartition(name, p, time_ms) for p in self.partitions]
            found = self._consumer.offsets_for_times(wanted, timeout=10)
            # -1: no record at or after that time on the partition -> its end
            offsets = {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_END for tp in found}
        else:
            raise ValueError(f"unknown start {start.kind!r}")
        # where each partition starts, as a number (for the end-of-topic test)
        self._next = {
            p: (
                self._watermarks[p][0]
                if o == OFFSET_BEGINNING
                else self._watermarks[p][1]
                if o == OFFSET_END
                else o
            )
            for p, o in offsets.items()
        }
        self._consumer.assign([TopicPartition(name, p, o) for p, o in offsets.items()])

    def messages(
        self, *, follow: bool = True, idle_s: float = 1.0, poll_s: float = 0.5
    ) -> Iterator[Message]:
        """Messages in arrival order. Without ``follow``: stop at the end of the topic, i.e.
        once every partition is past the end offset seen at the start and the topic has
        been quiet for ``idle_s`` (some brokers report end offsets approximately)."""
        since = self.start.time_ms
        quiet_since = time.monotonic()
        while True:
            batch = self._consumer.consume(500, poll_s)
            got = False
            for message in batch:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", error)
                    continue
                got = True
                _, partition, offset = position(message)
                self._next[partition] = offset + 1
                if since is not None and message.timestamp()[1] < since:
                    continue
                yield message
            if follow:
                continue
            now = time.monotonic()
            if got:
                quiet_since = now
            elif now - quiet_since >= idle_s and all(
                self._next[p] >= high for p, (_, high) in self._watermarks.items()
            ):
                return

    def close(self) -> None:
        try:
            self._consumer.close()
        except RuntimeError:
            pass

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tail(
    settings: Settings,
    topic: str,
    out: TextIO,
    *,
    start: Start | None = None,
    count: int | None = None,
    show_personal_data: bool = False,
    follow: bool = True,
    partition: int | None = None,
    connect_timeout: float = 5.0,
    idle_s: float = 1.0,
    stop: Any = None,
) -> int:
    """Print the records of ``topic`` as JSON Lines to ``out``; returns how many. Without
    ``follow``, stop at the end of the topic (quiet for ``idle_s``)."""
    codec = codec_for(settings)
    printed = 0
    if count is not None and count <= 0:
        return 0
    with TopicReader(
        settings, topic, start, partition=partition, connect_timeout=connect_timeout
    ) as reader:
        for message in reader.messages(follow=follow, idle_s=idle_s):
            out.write(to_json_line(message, codec, show_personal_data) + "\n")
            out.flush()
            printed += 1
            if count is not None and printed >= count:
                break
            if stop is not None and stop.is_set():
                break
    return printed


def tail_to_stdout(settings: Settings, topic: str, **options: Any) -> None:
    """:func:`tail` to standard output, as ``ehb tail`` runs it: quiet on Ctrl-C, and when
    the reader goes away (``ehb tail ... | head``)."""
    try:
        tail(settings, topic, sys.stdout, **options)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `ehb tail ... | head`
        sys.stdout = open(os.devnull, "w")  # silences the flush at exit
