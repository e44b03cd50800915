"""How the embedded broker's CPU grows while a consumer tails a topic (no pipeline involved).

``.venv/bin/python benchmarks/broker_fetch_cost.py --rate 1000 --fetch-wait-ms 25``

Starts a fresh embedded broker (Tansu, memory storage), produces ``--rate`` small messages a
second to one 8-partition topic with the bare confluent-kafka producer and, with
``--consumers 1``, tails it with one bare confluent-kafka consumer; prints the broker's CPU
every 5 s. With a consumer the broker's CPU grows with the data already stored (the figures
are in benchmarks/README.md): that growth, not the pipeline, is what makes the latency of
``make bench`` rise over its 60 s run. Apache Kafka locates a fetch offset through its index:
its cost does not depend on how much the partition holds.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import psutil
import typer
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ehb.embedded import EmbeddedKafka

TOPIC = "fetch-cost"


def main(
    rate: int = typer.Option(1000, help="Messages a second."),
    seconds: int = typer.Option(60, help="Length of the run."),
    consumers: int = typer.Option(1, help="Consumers tailing the topic (one group)."),
    fetch_wait_ms: int = typer.Option(25, help="The consumers' fetch.wait.max.ms."),
    linger_ms: int = typer.Option(5, help="The producer's linger.ms."),
) -> None:
    broker = EmbeddedKafka(Path(tempfile.mkdtemp(prefix="ehb-fetch-cost-"))).start()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(TOPIC, 8, 1)])[TOPIC].result()

        def tail() -> None:
            consumer = Consumer(
                {
                    "bootstrap.servers": broker.bootstrap,
                    "group.id": "tail",
                    "session.timeout.ms": 6000,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": fetch_wait_ms,
                }
            )
            consumer.subscribe([TOPIC])
            while not stop.is_set():
                consumer.poll(0.1)
            consumer.close()

        threads.extend(threading.Thread(target=tail) for _ in range(consumers))
        for thread in threads:
            thread.start()
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": linger_ms})
        process = psutil.Process(broker.pid)
        process.cpu_percent()
        value = b"x" * 300
        started = last = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - started < seconds:
            delay = started + sent / rate - now
            if delay > 0:
                time.sleep(delay)
            producer.produce(TOPIC, value, key=str(sent).encode())
            producer.poll(0)
            sent += 1
            if now - last >= 5:
                last = now
                typer.echo(
                    f"{now - started:4.0f} s  {sent:>8,} messages  "
                    f"broker CPU {process.cpu_percent():5.1f}%"
                )
        producer.flush()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        broker.stop()


if __name__ == "__main__":
    typer.run(main)
