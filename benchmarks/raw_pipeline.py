"""The raw-client ceiling (``python -m benchmarks.raw_pipeline``): the same input through a
minimal hand-written pipeline with the bare clients, configured by EHB_*.

confluent-kafka consume (the ``examinations`` topic: the ExaminationBatch messages the
publisher wrote) -> fastavro decode -> one ExaminationEvent record per event, fastavro-encoded,
produced to one topic -> ``execute_values`` insert into ``raw_entries`` (a copy of
``health_book_entries``' definition: same columns, keys, constraints and indexes) -> flush the
producer, commit the transaction, then the offsets (at least once, idempotent on the natural
key like the sink).

Deliberately left out, because it is what the real pipeline adds: validation, enrichment,
the pseudonymous key, the by-citizen hop and its state, dead letters, campaign counters,
metrics. The derived columns are filled from the event with trivial expressions.

Prints ``READY`` once its partitions are assigned (at once with ``--prefilled``: a drain of a
topic already published, timed from the first message received), starts on ``GO``, stops
after ``--expected`` events and prints one JSON line (first message received, last commit).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import time
from typing import Any

import psycopg2
from confluent_kafka import Consumer, Producer, TopicPartition
from fastavro import schemaless_reader, schemaless_writer
from psycopg2.extras import execute_values

from benchmarks.harness import child_main_handshake
from ehb.kafka import consumer_config, producer_config
from ehb.settings import Settings
from schemas import SUBJECTS
from schemas.catalog import load_catalog
from schemas.codec import wire_header
from schemas.topics import EXAMINATIONS

COLUMNS = (
    "ma_cskcb, ma_lk, event_id, citizen_key, so_cccd, ho_ten, ngay_sinh, gioi_tinh, "
    "ma_the_bhyt, ma_dkbd, registration_province, facility_province, scope, ma_loai_kcb, "
    "visit_type, ma_benh_chinh, ma_benh_kt, ngay_vao, ngay_ra, ket_qua_dtri, ma_loai_rv, "
    "t_tongchi_bv, t_tongchi_bh, t_bhtt, has_referral, has_appointment, published_at, "
    "processed_at"
)
TEMPLATE = (
    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "to_timestamp(%s, 'YYYYMMDDHH24MI'), to_timestamp(%s, 'YYYYMMDDHH24MI'), %s, %s, %s, %s, "
    "%s, %s, %s, to_timestamp(%s), now())"
)
INSERT = f"INSERT INTO raw_entries ({COLUMNS}) VALUES %s ON CONFLICT DO NOTHING"
CREATE_TABLE = "CREATE TABLE IF NOT EXISTS raw_entries (LIKE health_book_entries INCLUDING ALL)"


def _row(e: dict[str, Any], published_s: float) -> tuple[Any, ...]:
    dkbd = e["ma_dkbd"]
    return (
        e["ma_cskcb"],
        e["ma_lk"],
        e["event_id"],
        e["so_cccd"],
        e["so_cccd"],
        e["ho_ten"],
        e["ngay_sinh"],
        e["gioi_tinh"],
        e["ma_the_bhyt"],
        dkbd,
        dkbd[:2],
        e["ma_cskcb"][:2],
        "in_province" if dkbd[:2] == "79" else "out_of_province",
        e["ma_loai_kcb"],
        e["ma_loai_kcb"],
        e["ma_benh_chinh"],
        e["ma_benh_kt"],
        e["ngay_vao"],
        e["ngay_ra"],
        e["ket_qua_dtri"],
        e["ma_loai_rv"],
        e["t_tongchi_bv"],
        e["t_tongchi_bh"],
        e["t_bhtt"],
        e["referral"] is not None,
        e["appointment"] is not None,
        published_s,
    )


def run(
    settings: Settings, group: str, expected: int, output: str, batch: int, prefilled: bool
) -> dict:
    pipeline = _RawPipeline(settings, group, output, prefilled)
    child_main_handshake()
    done = messages_in = 0
    first: float | None = None
    clock = time.perf_counter
    while done < expected:
        t0 = clock()
        messages = pipeline.consumer.consume(batch, 0.1)
        pipeline.spent["consume"] += clock() - t0
        if not messages:
            continue
        if first is None:
            first = time.time()
        rows, highest, decoded = pipeline.decode_and_produce(messages)
        pipeline.write(rows, highest)
        messages_in += decoded
        done += len(rows)
    last = time.time()
    pipeline.close()
    return {
        "first_message": first,
        "last_commit": last,
        "events": done,
        "messages": messages_in,
        "seconds_by_step": {step: round(seconds, 3) for step, seconds in pipeline.spent.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


class _RawPipeline:
    """The bare clients, and the seconds spent per step (to see what bounds the ceiling)."""

    def __init__(self, settings: Settings, group: str, output: str, prefilled: bool) -> None:
        catalog = load_catalog()
        self.schemas = {entry.id: entry.parsed for entry in catalog.entries}
        event_entry = catalog.latest(SUBJECTS.EXAMINATION_EVENT)
        self.event_schema, self.event_header = event_entry.parsed, wire_header(event_entry.id)
        self.output = output
        self.consumer = Consumer(consumer_config(settings, group))
        self.producer = Producer(producer_config(settings))
        # metadata before the clock starts (producer.py)
        self.producer.list_topics(output, timeout=10)
        self.conn = psycopg2.connect(settings.database_url.get_secret_value())  # type: ignore[union-attr]
        self.spent = dict.fromkeys(
            ("consume", "decode", "encode_produce", "insert", "flush", "commit"), 0.0
        )
        assigned: list[TopicPartition] = []
        self.consumer.subscribe(
            [settings.topic(EXAMINATIONS)], on_assign=lambda _c, parts: assigned.extend(parts)
        )
        while not assigned and not prefilled:  # end to end: joined before the first publish
            for message in self.consumer.consume(1, 0.2):
                raise SystemExit(f"unexpected message before GO at offset {message.offset()}")

    def decode_and_produce(
        self, messages: list[Any]
    ) -> tuple[list[tuple[Any, ...]], dict[int, TopicPartition], int]:
        """Each event of each batch message produced as one record; the rows to insert, the
        offsets to commit and the number of messages decoded."""
        clock = time.perf_counter
        rows = []
        highest: dict[int, TopicPartition] = {}
        decoded = 0
        for message in messages:
            if message.error():
                continue
            t0 = clock()
            value = message.value()
            schema_id = int.from_bytes(value[1:5], "big")
            record = schemaless_reader(io.BytesIO(value[5:]), self.schemas[schema_id], None)
            published_s = message.timestamp()[1] / 1000
            t1 = clock()
            for event in record["events"]:
                out = io.BytesIO()
                out.write(self.event_header)
                schemaless_writer(out, self.event_schema, event)
                self.producer.produce(self.output, out.getvalue(), key=event["ma_lk"].encode())
                rows.append(_row(event, published_s))
            self.producer.poll(0)
            self.spent["decode"] += t1 - t0
            self.spent["encode_produce"] += clock() - t1
            highest[message.partition()] = TopicPartition(
                message.topic(), message.partition(), message.offset() + 1
            )
            decoded += 1
        return rows, highest, decoded

    def write(self, rows: list[tuple[Any, ...]], highest: dict[int, TopicPartition]) -> None:
        """Insert, flush the producer, commit the transaction, then the offsets."""
        clock = time.perf_counter
        t0 = clock()
        with self.conn.cursor() as cur:
            execute_values(cur, INSERT, rows, template=TEMPLATE, page_size=1000)
        t1 = clock()
        while self.producer.flush(10):
            pass
        t2 = clock()
        self.conn.commit()
        self.consumer.commit(offsets=list(highest.values()), asynchronous=False)
        self.spent["insert"] += t1 - t0
        self.spent["flush"] += t2 - t1
        self.spent["commit"] += clock() - t2

    def close(self) -> None:
        self.consumer.close()
        self.conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--batch", type=int, default=1000, help="messages per consume()")
    parser.add_argument(
        "--prefilled", action="store_true", help="the input is already published (a drain run)"
    )
    args = parser.parse_args()
    result = run(
        Settings(), args.group, args.expected, args.output_topic, args.batch, args.prefilled
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
