"""Peer 1: the work written as plain Faust, the way the faust-streaming docs teach it
(``python -m benchmarks.peers.plain_faust``, configured by EHB_* like the worker).

One app, four agents, one event per message, Faust's own producer (``topic.send``) and table:

* ``intake`` reads the facilities' ExaminationBatch messages, decodes and validates each event
  with the project's code (:mod:`benchmarks.peers.work`) and sends each valid one, enriched, to
  ``faust-by-citizen`` keyed by its pseudonymous citizen key (JSON);
* ``health_book`` keeps a table ``citizens`` (citizen key -> the event that integrated the
  book; ``memory://`` store with its changelog topic, as the pipeline's worker), sends one
  ``faust-entries`` record per event and one ``faust-books`` record per new citizen;
* ``persist_entries`` / ``persist_books`` take the records in batches (``stream.take``) and
  insert them into the deployment's ``health_book_entries`` / ``health_books`` with
  ``execute_values`` (``ON CONFLICT DO NOTHING``: at least once, idempotent).

What it does not do (the pipeline does): dead letters (invalid events are dropped and
counted in the log), the campaign counters and metrics, corrections and withdrawals,
referrals and appointments in event time, the watermark, the Faust patches
(docs/faust-patches.md). One adaptation to the broker, as the pipeline's worker has it:
Faust's hard-coded 1.5 s fetch wait, which Tansu holds for most of its length, is the
consumers' ``EHB_WORKER_FETCH_MAX_WAIT_MS``.

Prints ``READY`` once its partitions are assigned; runs until killed.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import faust
import psycopg2
from psycopg2.extras import execute_values

from benchmarks.peers.work import (
    BOOK_COLUMNS,
    ENTRY_COLUMNS,
    PeerWork,
    book_row,
    entry_row,
    insert_sql,
    rows_of,
    state_dir,
)
from ehb.kafka import faust_broker_options
from ehb.settings import Settings
from schemas.topics import EXAMINATIONS
from streams.app import _tune_worker_fetch

__all__ = ["create_app"]

log = logging.getLogger("plain_faust")

#: records per insert (Faust's ``stream.take``) and the longest wait for a fuller batch
SINK_BATCH = 1000
SINK_WITHIN_S = 0.5


def create_app(settings: Settings) -> faust.App:
    tag = settings.topic_prefix.rstrip(".")
    app = faust.App(
        f"{tag}-faust",
        **faust_broker_options(settings),
        store="memory://",
        datadir=str(state_dir(settings, "faust")),
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        consumer_auto_offset_reset="earliest",
        # the same session timeout as the pipeline's processes (a shorter group join)
        broker_session_timeout=settings.kafka_session_timeout_s,
        web_enabled=False,
    )
    # the same adaptation to Tansu as the worker's (streams/app.py): not a Faust optimisation
    _tune_worker_fetch()
    app.ehb_fetch_max_wait_ms = settings.worker_fetch_max_wait_ms  # type: ignore[attr-defined]

    work = PeerWork(settings)
    examinations = app.topic(
        settings.topic(EXAMINATIONS), key_type=bytes, value_type=bytes, value_serializer="raw"
    )
    # the app's own topics: internal, so that Faust creates them, co-partitioned with the
    # table's changelog
    own = {"partitions": settings.kafka_partitions, "internal": True, "value_serializer": "json"}
    by_citizen = app.topic(settings.topic("faust-by-citizen"), **own)
    entries = app.topic(settings.topic("faust-entries"), **own)
    books = app.topic(settings.topic("faust-books"), **own)
    citizens = app.Table("citizens", default=None, partitions=settings.kafka_partitions)
    assert settings.database_url is not None
    db = psycopg2.connect(settings.database_url.get_secret_value())

    @app.agent(examinations)
    async def intake(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            published_ms = int(event.message.timestamp * 1000)
            for examination in work.decode(event.value):
                item = work.accept(examination, published_ms)
                if item is not None:
                    await by_citizen.send(key=item["citizen_key"], value=item)

    @app.agent(by_citizen)
    async def health_book(stream: faust.StreamT[Any]) -> None:
        async for key, item in stream.items():
            citizen = key.decode() if isinstance(key, bytes) else key
            if citizens.get(citizen) is None:
                citizens[citizen] = item["event"]["event_id"]
                await books.send(key=citizen, value=book_row(item))
            await entries.send(key=citizen, value=entry_row(item))

    def persist(sql: str, columns: tuple[str, ...], batch: list[dict[str, Any]]) -> None:
        with db, db.cursor() as cur:
            execute_values(cur, sql, rows_of(batch, columns), page_size=SINK_BATCH)

    @app.agent(entries)
    async def persist_entries(stream: faust.StreamT[Any]) -> None:
        sql = insert_sql("health_book_entries", ENTRY_COLUMNS)
        async for batch in stream.take(SINK_BATCH, within=SINK_WITHIN_S):
            persist(sql, ENTRY_COLUMNS, batch)

    @app.agent(books)
    async def persist_books(stream: faust.StreamT[Any]) -> None:
        sql = insert_sql("health_books", BOOK_COLUMNS)
        async for batch in stream.take(SINK_BATCH, within=SINK_WITHIN_S):
            persist(sql, BOOK_COLUMNS, batch)

    announced = []

    @app.on_rebalance_complete.connect
    async def ready(sender: Any, **kwargs: Any) -> None:
        if not announced:
            announced.append(True)
            print("READY", flush=True)

    @app.timer(10.0)
    async def report() -> None:
        log.warning("invalid events dropped so far: %d", work.invalid)

    return app


def main() -> None:
    settings = Settings()
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level, redirect_stdouts=False)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()


if __name__ == "__main__":
    main()
