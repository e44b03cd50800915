"""The fault suite's load: facilities publishing a simulated city through the durable outbox.

Run as a separate process so that the suite can ``kill -9`` it::

    python -m tests.faults.load --bootstrap HOST:PORT --prefix P. --data-dir DIR \
        --identity load --events 200000 [--rate 4000] [--shuffle 5000] [--resend 0.6:0.7]

The events are ``CitySimulator(SimulationConfig(events, seed))``'s, so the suite knows every
event id in advance. A facility has *accepted* an event once it is in the outbox; the position
of the next event to accept is stored as an outbox mark in the same transaction as the events
(``load:next``), so a restarted load resumes exactly where the killed one stopped accepting,
after its publisher has resent what the outbox held. ``--shuffle K`` publishes in random order
within windows of K events (out of order); ``--resend A:B`` re-publishes the events of that
fraction of the run (a facility re-sending a day) at the end. Progress goes to ``--status``
(JSON, rewritten atomically) and the exit code is 0 once everything is acknowledged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ehb.logs import configure_logging
from ehb.settings import Settings
from producers.publisher import ExaminationPublisher
from simulation.simulator import CitySimulator, SimulationConfig

MARK = "load:next"


def simulation(events: int, seed: int, invalid_share: float) -> CitySimulator:
    return CitySimulator(SimulationConfig(events=events, seed=seed, invalid_share=invalid_share))


def ordered(
    events: list[dict[str, Any]] | Iterator[dict[str, Any]], shuffle: int, seed: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, event): in order, or shuffled within windows of ``shuffle`` events."""
    if shuffle <= 1:
        yield from enumerate(events)
        return
    rng = random.Random(seed)
    window: list[dict[str, Any]] = []
    position = 0
    for event in events:
        window.append(event)
        if len(window) >= shuffle:
            rng.shuffle(window)
            for e in window:
                yield position, e
                position += 1
            window = []
    rng.shuffle(window)
    for e in window:
        yield position, e
        position += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--identity", default="load")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=79)
    parser.add_argument("--invalid-share", type=float, default=0.01)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--shuffle", type=int, default=0)
    parser.add_argument("--resend", default="")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--status", type=Path, required=True)
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))

    settings = Settings(
        kafka_bootstrap=args.bootstrap,
        topic_prefix=args.prefix,
        data_dir=args.data_dir,
        kafka_partitions=args.partitions,
    )
    publisher = ExaminationPublisher(settings, identity=args.identity, linger_s=0.2)
    start = int(publisher.outbox.mark(MARK) or 0)
    status: dict[str, Any] = {
        "pid": os.getpid(),
        "resumed_at": start,
        "resent": publisher.resent_events,
        "accepted": start,
        "done": False,
    }

    def write_status() -> None:
        status.update(
            delivered=publisher.events_delivered,
            pending=publisher.outbox.pending_events,
            at=time.time(),
        )
        tmp = args.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, args.status)

    resend = tuple(float(x) for x in args.resend.split(":")) if args.resend else None
    total = args.events
    extra: list[int] = []
    if resend is not None:
        extra = list(range(int(resend[0] * total), int(resend[1] * total)))
        random.Random(args.seed + 1).shuffle(extra)
    begun = time.monotonic()
    last_commit = last_status = 0.0
    write_status()
    stream = ordered(
        simulation(total, args.seed, args.invalid_share).events(), args.shuffle, args.seed
    )
    replay: dict[int, dict[str, Any]] = {}
    wanted = set(extra)
    # positions [0, total): the run; [total, total + len(extra)): the re-sent day
    for position, event in stream:
        if position in wanted:
            replay[position] = event
        if position < start:
            continue
        publisher.add(event)
        status["accepted"] = position + 1
        now = time.monotonic()
        if now - last_commit >= 0.05:
            publisher.commit({MARK: str(position + 1)})
            last_commit = now
        if now - last_status >= 0.2:
            publisher.poll(0)
            write_status()
            last_status = now
        if args.rate:
            ahead = (position + 1 - start) / args.rate - (now - begun)
            if ahead > 0:
                publisher.send_pending()
                publisher.poll(0)
                time.sleep(ahead)
        if stop["now"]:
            break
    for n, position in enumerate(extra):
        index = total + n
        if index < start:
            continue
        publisher.add(replay[position])
        status["accepted"] = index + 1
        if time.monotonic() - last_commit >= 0.05:
            publisher.commit({MARK: str(index + 1)})
            last_commit = time.monotonic()
    publisher.commit({MARK: str(status["accepted"])})
    status["accept_seconds"] = round(time.monotonic() - begun, 2)
    write_status()
    while publisher.flush(1.0):
        write_status()
    status["done"] = True
    status["seconds"] = round(time.monotonic() - begun, 2)
    write_status()
    publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
