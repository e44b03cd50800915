"""Peer 2: the work written with Quix Streams, the way its docs teach it
(``.venv-peers/bin/python -m benchmarks.peers.quix``, configured by EHB_*; Quix Streams lives
in a virtualenv of its own, ``make peers``: it pins confluent-kafka below the pipeline's).

One :class:`~quixstreams.Application` (at least once), one StreamingDataFrame:

* the input topic's deserializer decodes a facility's ExaminationBatch with the project's
  codec and splits it into one row per event (``split_values``);
* ``apply`` validates and enriches each with the project's code
  (:mod:`benchmarks.peers.work`), ``filter`` drops the invalid ones;
* ``group_by`` re-keys by the pseudonymous citizen key (Quix's repartition topic);
* a stateful ``apply`` (RocksDB state with its changelog topic) integrates the book at the
  citizen's first valid event;
* two branches write the outputs: every entry and every new book to a topic of its own
  (``to_topic``) and to PostgreSQL with Quix's ``PostgreSQLSink`` (into the deployment's
  ``health_book_entries`` / ``health_books``, ``ON CONFLICT DO NOTHING``, flushed at each
  checkpoint, every ``commit_interval``: 5 s, Quix's default).

What it does not do (the pipeline does): dead letters (invalid events are dropped by the
``filter``), the campaign counters and metrics, corrections and withdrawals, referrals and
appointments in event time, the watermark. Adaptations to the broker (Tansu): the consumer's
``fetch.wait.max.ms`` is ``EHB_CONSUMER_FETCH_MAX_WAIT_MS`` like every consumer of the project;
a fresh state directory at each start (Tansu understates a partition's high watermark, and a
restart on kept local state fails with InvalidStoreChangelogOffset); at least once, because
exactly once is unusable on Tansu (it never aborts a killed producer's open transaction).

Prints ``READY`` once its partitions are assigned; runs until killed.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg2.extensions import parse_dsn
from quixstreams import Application, State
from quixstreams.models import TopicConfig
from quixstreams.models.serializers import Deserializer
from quixstreams.sinks.community.postgresql import PostgreSQLSink

from benchmarks.peers.work import PeerWork, book_row, entry_row, state_dir
from ehb.kafka import resolve_bootstrap
from ehb.settings import Settings
from schemas.topics import EXAMINATIONS

__all__ = ["create_app"]

log = logging.getLogger("quix")

#: the outputs' retention; Quix reads retention.ms of a topic from the broker, and Tansu
#: describes only the configuration a topic was created with
RETENTION_MS = str(30 * 24 * 3600 * 1000)


class ExaminationBatches(Deserializer):
    """A facility's ExaminationBatch message -> one value per event."""

    def __init__(self, work: PeerWork) -> None:
        super().__init__()
        self.work = work

    @property
    def split_values(self) -> bool:
        return True

    def __call__(self, value: bytes, ctx: Any) -> list[dict[str, Any]]:
        return self.work.decode(value)


def integrate(item: dict[str, Any], state: State) -> dict[str, Any]:
    """The entry, and the book when this is the citizen's first valid examination."""
    first = state.get("first_event_id") is None
    if first:
        state.set("first_event_id", item["event"]["event_id"])
    return {"entry": entry_row(item), "book": book_row(item) if first else None}


def _sink(settings: Settings, table: str) -> PostgreSQLSink:
    assert settings.database_url is not None
    dsn = parse_dsn(settings.database_url.get_secret_value())
    return PostgreSQLSink(
        host=dsn.get("host", "localhost"),
        port=int(dsn.get("port", 5432)),
        dbname=dsn["dbname"],
        user=dsn.get("user", ""),
        password=dsn.get("password", ""),
        table_name=table,
        schema_auto_update=False,  # the tables are the project's (sinks/migrations)
        include_metadata=False,
        on_conflict_do_nothing=True,
    )


def create_app(settings: Settings) -> Application:
    tag = settings.topic_prefix.rstrip(".")
    app = Application(
        broker_address=resolve_bootstrap(settings),
        consumer_group=f"{tag}-quix",
        auto_offset_reset="earliest",
        state_dir=state_dir(settings, "quix"),
        processing_guarantee="at-least-once",
        consumer_extra_config={"fetch.wait.max.ms": settings.consumer_fetch_max_wait_ms},
        loglevel="WARNING",
    )
    work = PeerWork(settings)
    outputs = TopicConfig(
        num_partitions=settings.kafka_partitions,
        replication_factor=settings.kafka_replication_factor,
        extra_config={"retention.ms": RETENTION_MS, "retention.bytes": "-1"},
    )
    examinations = app.topic(
        settings.topic(EXAMINATIONS),
        key_deserializer="bytes",
        value_deserializer=ExaminationBatches(work),
    )
    entries_topic = app.topic(settings.topic("quix-entries"), config=outputs)
    books_topic = app.topic(settings.topic("quix-books"), config=outputs)

    sdf = app.dataframe(examinations)
    sdf = sdf.apply(
        lambda event, key, timestamp, headers: work.accept(event, timestamp), metadata=True
    )
    sdf = sdf.filter(lambda item: item is not None)
    sdf = sdf.group_by(lambda item: item["citizen_key"], name="citizen")
    sdf = sdf.apply(integrate, stateful=True)

    entries = sdf.apply(lambda out: out["entry"])
    entries.to_topic(entries_topic)
    entries.sink(_sink(settings, "health_book_entries"))

    books = sdf.filter(lambda out: out["book"] is not None).apply(lambda out: out["book"])
    books.to_topic(books_topic)
    books.sink(_sink(settings, "health_books"))
    return app


def _announce_assignment(app: Application) -> None:
    """Print READY after the first assignment (the bench's start handshake)."""
    on_assign = app._on_assign
    announced: list[bool] = []

    def announce(consumer: Any, partitions: Any) -> None:
        on_assign(consumer, partitions)
        if not announced:
            announced.append(True)
            print("READY", flush=True)

    app._on_assign = announce  # type: ignore[method-assign]


def main() -> None:
    app = create_app(Settings())
    _announce_assignment(app)
    app.run()


if __name__ == "__main__":
    main()
