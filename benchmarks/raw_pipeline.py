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
        e["ma_cskcb"], e["ma_lk"], e["event_id"], e["so_cccd"], e["so_cccd"], e["ho_ten"],
        e["ngay_sinh"], e["gioi_tinh"], e["ma_the_bhyt"], dkbd, dkbd[:2], e["ma_cskcb"][:2],
        "in_province" if dkbd[:2] == "79" else "out_of_province", e["ma_loai_kcb"],
        e["ma_loai_kcb"], e["ma_benh_chinh"], e["ma_benh_kt"], e["ngay_vao"], e["ngay_ra"],
        e["ket_qua_dtri"], e["ma_loai_rv"], e["t_tongchi_bv"], e["t_tongchi_bh"],
        e["t_bhtt"], e["referral"] is not None, e["appointment"] is not None, published_s,
    )


def run(settings: Settings, group: str, expected: int, output: str, batch: int,
        prefilled: bool) -> dict:
    catalog = load_catalog()
    schemas = {entry.id: entry.parsed for entry in catalog.entries}
    event_entry = catalog.latest(SUBJECTS.EXAMINATION_EVENT)
    event_schema, event_header = event_entry.parsed, wire_header(event_entry.id)

    consumer = Consumer(consumer_config(settings, group))
    producer = Producer(producer_config(settings))
    producer.list_topics(output, timeout=10)  # metadata before the clock starts (producer.py)
    conn = psycopg2.connect(settings.database_url.get_secret_value())  # type: ignore[union-attr]
    assigned: list[TopicPartition] = []
    consumer.subscribe([settings.topic("examinations")],
                       on_assign=lambda _c, parts: assigned.extend(parts))
    while not assigned and not prefilled:  # end to end: joined before the first publish
        for message in consumer.consume(1, 0.2):
            raise SystemExit(f"unexpected message before GO at offset {message.offset()}")
    child_main_handshake()

    done = messages_in = 0
    first: float | None = None
    # seconds per step, to see what bounds the ceiling
    spent = dict.fromkeys(("consume", "decode", "encode_produce", "insert", "flush",
                           "commit"), 0.0)
    clock = time.perf_counter
    while done < expected:
        t0 = clock()
        messages = consumer.consume(batch, 0.1)
        spent["consume"] += clock() - t0
        if not messages:
            continue
        if first is None:
            first = time.time()
        rows = []
        highest: dict[int, TopicPartition] = {}
        for message in messages:
            if message.error():
                continue
            t0 = clock()
            value = message.value()
            schema_id = int.from_bytes(value[1:5], "big")
            record = schemaless_reader(io.BytesIO(value[5:]), schemas[schema_id], None)
            published_s = message.timestamp()[1] / 1000
            t1 = clock()
            for event in record["events"]:
                out = io.BytesIO()
                out.write(event_header)
                schemaless_writer(out, event_schema, event)
                producer.produce(output, out.getvalue(), key=event["ma_lk"].encode())
                rows.append(_row(event, published_s))
            producer.poll(0)
            spent["decode"] += t1 - t0
            spent["encode_produce"] += clock() - t1
            highest[message.partition()] = TopicPartition(
                message.topic(), message.partition(), message.offset() + 1)
            messages_in += 1
        t0 = clock()
        with conn.cursor() as cur:
            execute_values(cur, INSERT, rows, template=TEMPLATE, page_size=1000)
        t1 = clock()
        while producer.flush(10):
            pass
        t2 = clock()
        conn.commit()
        consumer.commit(offsets=list(highest.values()), asynchronous=False)
        spent["insert"] += t1 - t0
        spent["flush"] += t2 - t1
        spent["commit"] += clock() - t2
        done += len(rows)
    last = time.time()
    consumer.close()
    conn.close()
    return {
        "first_message": first, "last_commit": last, "events": done, "messages": messages_in,
        "seconds_by_step": {step: round(seconds, 3) for step, seconds in spent.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--batch", type=int, default=1000, help="messages per consume()")
    parser.add_argument("--prefilled", action="store_true",
                        help="the input is already published (a drain run)")
    args = parser.parse_args()
    result = run(Settings(), args.group, args.expected, args.output_topic, args.batch,
                 args.prefilled)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
