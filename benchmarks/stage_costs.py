"""CPU per event of each stage of the stream worker, in one process, without Kafka.

The worker's code path on simulated events — decode + validate + enrich (``Intake``), the
internal hop (MessagePack both ways), the state machine, Avro encoding of the output records,
JSON of the changelog — timed with ``time.process_time`` a stage at a time, under the garbage
collector settings the worker uses (``EHB_GC_YOUNG_THRESHOLD``) or Python's defaults::

    .venv/bin/python benchmarks/stage_costs.py --events 100000
    .venv/bin/python benchmarks/stage_costs.py --events 100000 --gc-young-threshold 0

It isolates the Python work from the broker, the sink and the database that share the
machine in ``make bench``.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ehb.privacy import CitizenKeyer  # noqa: E402
from ehb.runtime import tune_gc  # noqa: E402
from ehb.settings import Settings  # noqa: E402
from schemas import SUBJECTS, AvroCodec  # noqa: E402
from schemas.reference import FacilityRegistry  # noqa: E402
from schemas.topics import EXAMINATIONS  # noqa: E402
from simulation.simulator import CitySimulator, SimulationConfig  # noqa: E402
from streams.citizen_state import CitizenStateMachine, Emitted, StateConfig  # noqa: E402
from streams.health_book_agent import STATE_BATCH_MESSAGES, encode_json  # noqa: E402
from streams.intake import Intake, SourceMessage  # noqa: E402
from streams.internal import decode_validated, encode_chunks  # noqa: E402

T = TypeVar("T")

#: events per input message: ExaminationPublisher's default batch size
EVENTS_PER_MESSAGE = 100


def main(
    events: int = typer.Option(100_000, help="Simulated events."),
    seed: int = typer.Option(79, help="Simulator seed."),
    partitions: int = typer.Option(8, help="Partitions of the internal topic."),
    gc_young_threshold: int | None = typer.Option(
        None, help="Young-generation threshold (default: the setting; 0: Python's)."
    ),
) -> None:
    settings = Settings(kafka_partitions=partitions)
    codec = AvroCodec()
    now_ms = int(time.time() * 1000)
    messages = _input_messages(codec, events, seed, now_ms)
    threshold = settings.gc_young_threshold if gc_young_threshold is None else gc_young_threshold
    tune_gc(threshold)

    timer = _Timer()
    decoded = _intake_and_internal_hop(timer, settings, codec, messages)
    store: dict[str, Any] = {}
    emitted = timer.timed(
        "state machine", lambda: _run_state_machine(settings, decoded, store, now_ms)
    )
    outputs = _encode_outputs(timer, codec, emitted)

    print(
        f"{events:,} events ({len(messages):,} input messages), {outputs:,} output records, "
        f"{len(store):,} citizens; gc thresholds {gc.get_threshold()}"
    )
    for stage, spent in timer.seconds.items():
        print(f"  {stage:36s} {spent * 1e6 / events:6.1f} µs/event")
    print(f"  {'total':36s} {sum(timer.seconds.values()) * 1e6 / events:6.1f} µs/event")


class _Timer:
    """CPU seconds (``time.process_time``) per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def timed(self, stage: str, work: Callable[[], T]) -> T:
        started = time.process_time()
        result = work()
        self.seconds[stage] = time.process_time() - started
        return result


def _input_messages(codec: AvroCodec, events: int, seed: int, now_ms: int) -> list[SourceMessage]:
    """The simulated events as ExaminationBatch messages of one facility each."""
    simulated = list(CitySimulator(SimulationConfig(events=events, seed=seed)).events())
    encode_batch = codec.writer(SUBJECTS.EXAMINATION_BATCH)
    by_facility: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in simulated:
        by_facility[event["ma_cskcb"]].append(event)
    return [
        SourceMessage(
            encode_batch({"ma_cskcb": facility, "events": chunk}), EXAMINATIONS, 0, offset, now_ms
        )
        for offset, (facility, chunk) in enumerate(
            (f, evs[i : i + EVENTS_PER_MESSAGE])
            for f, evs in by_facility.items()
            for i in range(0, len(evs), EVENTS_PER_MESSAGE)
        )
    ]


def _intake_and_internal_hop(
    timer: _Timer, settings: Settings, codec: AvroCodec, messages: list[SourceMessage]
) -> dict[int, list[tuple[Any, Any]]]:
    """The stateless stage, then the internal topic's encoding both ways: what the stateful
    stage reads, by partition."""
    registry = FacilityRegistry.from_reference()
    intake = Intake(
        codec, registry, CitizenKeyer.from_settings(settings), settings.kafka_partitions
    )
    per_batch = settings.worker_batch_size  # input messages per intake batch
    results = timer.timed(
        "decode + validate + enrich",
        lambda: [
            intake.process(messages[i : i + per_batch]) for i in range(0, len(messages), per_batch)
        ],
    )
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        for partition, items in result.by_partition.items():
            by_partition[partition].extend(items)
    internal = timer.timed(
        "internal hop: MessagePack encode",
        lambda: {p: list(encode_chunks(items)) for p, items in by_partition.items()},
    )
    return timer.timed(
        "internal hop: MessagePack decode",
        lambda: {p: [decode_validated(v, codec) for v in values] for p, values in internal.items()},
    )


def _run_state_machine(
    settings: Settings,
    decoded: dict[int, list[tuple[Any, Any]]],
    store: dict[str, Any],
    now_ms: int,
) -> list[Emitted]:
    """The stateful stage over ``decoded``, in the worker's batches, with ``store`` as its
    table."""
    machine = CitizenStateMachine(StateConfig.from_settings(settings))
    out = []
    for p, batch in decoded.items():
        for i in range(0, len(batch), STATE_BATCH_MESSAGES):
            emitted = machine.process(
                p, batch[i : i + STATE_BATCH_MESSAGES], store, now_ms
            ).compact()
            store.update(emitted.local)
            for key, value in emitted.state.items():
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
            out.append(emitted)
    return out


def _encode_outputs(timer: _Timer, codec: AvroCodec, emitted: list[Emitted]) -> int:
    """Avro of the output records and JSON of the changelog; the number of output records."""
    writers = [
        (codec.fast_writer(SUBJECTS.HEALTH_BOOK_RECORD), "health_book"),
        (codec.fast_writer(SUBJECTS.REFERRAL_RECORD), "referrals"),
        (codec.fast_writer(SUBJECTS.APPOINTMENT_RECORD), "appointments"),
    ]
    outputs = timer.timed(
        "Avro encode of the output records",
        lambda: sum(
            len(write(record)) > 0
            for e in emitted
            for write, name in writers
            for record in getattr(e, name)
        ),
    )
    timer.timed(
        "changelog JSON",
        lambda: sum(
            len(encode_json(key)) + (0 if value is None else len(encode_json(value)))
            for e in emitted
            for key, value in e.state.items()
        ),
    )
    return outputs


if __name__ == "__main__":
    typer.run(main)
