"""The benchmark's producer process (``python -m benchmarks.producer``), configured by EHB_*.

Modes:

* ``--events-file F``: publish pre-generated events (benchmarks.harness.events_file) as fast as
  :class:`~producers.publisher.ExaminationPublisher` can, streaming the pickled chunks from
  disk so that the process's memory is the publisher's, not the data set's. The time spent
  unpickling is measured and reported (``load_s``); it is inside the publish window.
* ``--events-file F --rate R --seconds S``: the first ``R * S`` events of ``F`` at a steady
  ``R`` events/s, each sent as soon as it is due, as ``ehb simulate --rate`` does.

Prints ``READY`` once connected, starts on ``GO`` (stdin), prints one JSON line at the end:
wall-clock start (``time.time()``, before the first event is handed to the publisher), the
time every message was acknowledged, counts and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import time
from itertools import chain, islice
from pathlib import Path

from benchmarks.harness import child_main_handshake, iter_events
from ehb.commands.simulate import pace
from ehb.settings import Settings
from producers.publisher import ExaminationPublisher


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _outbox_option(durable: bool) -> dict[str, bool]:
    """``durable=`` where the publisher has a durable outbox (it is being added)."""
    accepted = inspect.signature(ExaminationPublisher).parameters
    return {"durable": durable} if "durable" in accepted else {}


def _warm_up(publisher: ExaminationPublisher) -> None:
    """Fetch the topic's metadata before the clock starts: a fresh librdkafka producer that
    first learns of a topic from a produce() call waits ~1 s on the embedded broker before its
    first delivery (measured), a start-up cost a long-running facility producer pays once."""
    producer = getattr(publisher, "_producer", None)
    if producer is not None:
        producer.list_topics(publisher.topic, timeout=10)


def publish_file(settings: Settings, path: Path, batch_size: int, durable: bool) -> dict:
    publisher = ExaminationPublisher(
        settings, batch_size=batch_size, linger_s=5.0, **_outbox_option(durable)
    )
    _warm_up(publisher)
    chunks = iter_events(path)
    first = next(chunks)
    rss_before = _peak_rss_mb()
    child_main_handshake()
    started = time.time()
    load_s = 0.0
    chunk: list | None = first
    while chunk is not None:
        publisher.add_all(chunk)
        t = time.perf_counter()
        chunk = next(chunks, None)
        load_s += time.perf_counter() - t
    publisher.flush()
    acked = time.time()
    publisher.close()
    return {
        "started": started,
        "acked": acked,
        "seconds": round(acked - started, 3),
        "events": publisher.events_delivered,
        "messages": publisher.messages_delivered,
        "errors": len(publisher.errors),
        "load_s": round(load_s, 3),
        "first_produce": publisher.first_publish,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "durable": durable,
    }


def publish_paced(
    settings: Settings, path: Path, rate: float, seconds: float, batch_size: int, durable: bool
) -> dict:
    """The first ``rate * seconds`` events of ``path`` at a steady ``rate``: each one handed to
    the publisher and sent as soon as it is due, as ``ehb simulate --rate`` sends the simulated
    city's (the same events: ``path`` holds what the simulator makes of the same seed), without
    generating them here, on the CPU the pipeline under measurement shares."""
    events = int(rate * seconds)
    publisher = ExaminationPublisher(
        settings, batch_size=batch_size, linger_s=0.2, **_outbox_option(durable)
    )
    _warm_up(publisher)
    child_main_handshake()
    started = time.time()
    t0 = time.monotonic()
    sent = 0
    for sent, event in enumerate(islice(chain.from_iterable(iter_events(path)), events), 1):
        publisher.add(event)
        pace(publisher, sent, rate, t0)
    if sent < events:
        raise SystemExit(f"{path} holds {sent} events, fewer than the {events} asked for")
    publisher.flush()
    acked = time.time()
    publisher.close()
    return {
        "started": started,
        "acked": acked,
        "seconds": round(acked - started, 3),
        "events": publisher.events_delivered,
        "messages": publisher.messages_delivered,
        "errors": len(publisher.errors),
        "peak_rss_mb": _peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events-file", type=Path)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--no-outbox", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    if args.events_file is None:
        parser.error("--events-file is required")
    if args.rate:
        result = publish_paced(
            settings,
            args.events_file,
            args.rate,
            args.seconds,
            args.batch_size,
            durable=not args.no_outbox,
        )
    else:
        result = publish_file(
            settings, args.events_file, args.batch_size, durable=not args.no_outbox
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
