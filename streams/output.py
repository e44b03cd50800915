"""Buffered sends for the stream worker, with the confluent-kafka (librdkafka) producer.

Faust's own producer costs far more Python per send than librdkafka, which queues a message and
batches in C (figures: benchmarks/README.md). The worker queues a whole batch's outputs here
and awaits :meth:`OutputProducer.flush` before Faust may acknowledge (and later commit) the
source offsets: at-least-once, with the idempotent sinks absorbing the duplicates a crash can
cause.

A delivery error is fatal, and so is a message librdkafka refuses to queue: the worker stops
without acknowledging, so the batch is processed again after a restart rather than lost. It
stays fatal: every later flush fails too, whoever calls it. The agents and the idle-partition
timer share this producer, and an error taken by one caller's flush would otherwise let another
caller's flush of the same messages succeed, so that caller would acknowledge a batch whose
records never reached the broker (seen in fault scenario 8: a timer's flush took the error and
the stateful agent acknowledged its batch without its two appointment records). Only failed
deliveries are reported back (``delivery.report.only.error``): a report per message would cost a
Python callback for each of the ~2.5 messages an event produces, and :meth:`flush` already waits
for every acknowledgement. A producer made with ``report_offsets`` (the citizens table's
changelog on the RocksDB store) is reported every delivery and keeps the last offset per
partition (:meth:`OutputProducer.take_offsets`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.errors import OutputError

__all__ = ["WORKER_LINGER_MS", "OutputError", "OutputProducer"]

log = logging.getLogger(__name__)

#: linger.ms of the worker's producers. Every batch ends in :meth:`OutputProducer.flush`, which
#: sends what is queued at once (librdkafka >= 1.8 ignores the linger during a flush), so a
#: batch's outputs leave as one record batch per partition (or as full ones) however long the
#: batch took, rather than one every few ms while it runs: fewer, larger record batches for the
#: broker to store and for each fetch to list (Tansu lists every one). It bounds only how long a
#: message waits when no flush follows, and every send of the worker is followed by one.
WORKER_LINGER_MS = 100


class OutputProducer:
    def __init__(self, config: dict[str, Any], report_offsets: bool = False) -> None:
        self.reports_offsets = report_offsets
        self._producer = Producer(
            {
                **config,
                "on_delivery": self._on_delivery,
                "delivery.report.only.error": not report_offsets,
            }
        )
        self._errors: list[str] = []
        #: report_offsets: (topic, partition) -> offset of the last message delivered there
        self._offsets: dict[tuple[str, int], int] = {}
        self._flushing = threading.Lock()
        self.sent = 0

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
        elif self.reports_offsets:
            tp = (msg.topic(), msg.partition())
            offset = msg.offset()
            if offset > self._offsets.get(tp, -1):
                self._offsets[tp] = offset

    def take_offsets(self, topic: str) -> dict[int, int]:
        """report_offsets: partition -> offset of the last message of ``topic`` delivered since
        the last call (after a :meth:`flush`: every message produced before it)."""
        taken = {}
        for tp in [tp for tp in self._offsets if tp[0] == topic]:
            taken[tp[1]] = self._offsets.pop(tp)
        return taken

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        produce = self._producer.produce
        while True:
            try:
                if partition is None:
                    produce(topic, value, key)
                else:
                    produce(topic, value, key, partition)
                break
            except BufferError:  # local queue full: let librdkafka drain it
                self._producer.poll(0.05)
            except KafkaException as exc:
                # Refused before it was queued (a partition the topic's known metadata lacks):
                # as fatal as a failed delivery, and for every caller, like one.
                self._errors.append(str(exc.args[0] if exc.args else exc))
                raise OutputError(f"message not accepted: {self._errors[-1]}") from exc
        self.sent += 1

    def _flush_blocking(self, timeout: float) -> int:
        # One flushing thread at a time: a delivery report is then handled to its end (the
        # error recorded) by the thread whose flush returns, before its caller looks.
        with self._flushing:
            return int(self._producer.flush(timeout))

    async def flush(self, timeout: float = 1.0) -> None:
        """Wait until every queued message is acknowledged by the broker (or fail)."""
        loop = asyncio.get_running_loop()
        waited = 0.0
        while True:
            remaining = await loop.run_in_executor(None, self._flush_blocking, timeout)
            if self._errors:  # kept: the producer has failed for every caller
                errors = self._errors
                raise OutputError(f"{len(errors)} messages not delivered: {errors[0]}")
            if remaining == 0:
                return
            waited += timeout
            if waited >= 10 and int(waited) % 10 == 0:
                log.warning(
                    "still waiting for the broker to acknowledge %d messages (%.0fs)",
                    remaining,
                    waited,
                )

    def flush_sync(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        self._producer.flush(5)
