"""The intake agent: the stateless stage (``streams.intake``) on the ``examinations`` topic.

A ``take_events`` batch at a time: decode, validate and enrich the events, route them
(``streams.routing``) with the intake's event-time progress (``streams.progress``), flush, and
only then let Faust acknowledge the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from ehb import faultpoints
from streams import faust_patches, metrics
from streams.intake import Intake, SourceMessage
from streams.output import OutputProducer
from streams.progress import IntakeProgress
from streams.routing import IntakeRoutes, route_intake_result

__all__ = ["IntakeAgent"]

STAGE = "intake"


@dataclass(eq=False)  # agents are hashed by identity (their bound methods are registered)
class IntakeAgent:
    """``run`` is the Faust agent's function, ``report_idle_partitions`` its 1 s timer.

    ``consumer`` returns the app's consumer (it exists only once the app runs).
    """

    intake: Intake
    progress: IntakeProgress
    output: OutputProducer
    routes: IntakeRoutes
    consumer: Callable[[], Any]
    batch_size: int
    within: float

    async def run(self, stream: faust.StreamT[bytes]) -> None:
        async for events in faust_patches.take_batches(
            stream, self.batch_size, self.within, "intake.batch_acknowledged"
        ):
            await faultpoints.adelay("intake.batch")
            if faust_patches.seek_pending():
                await faultpoints.adelay("intake.batch_during_seek")
            faultpoints.reach("intake.batch_received")
            await self.process_batch(events)

    async def process_batch(self, events: Sequence[Any]) -> None:
        started = time.perf_counter()
        result = self.intake.process(
            SourceMessage(
                e.message.value,
                e.message.topic,
                e.message.partition,
                e.message.offset,
                int(e.message.timestamp * 1000),
            )
            for e in events
        )
        self.progress.update(result)
        sources = self.progress.sources(self.consumer())
        route_intake_result(result, self.output.produce, self.routes, sources)
        for partition in result.by_partition:
            self.progress.sent(partition, sources)
        self._send_progress(sources, set(result.by_partition))
        faultpoints.reach("intake.outputs_queued")
        await self.output.flush()
        faultpoints.reach("intake.outputs_flushed")
        metrics.count_batch(
            STAGE,
            messages=len(events),
            events_in=result.events_in,
            started=started,
            records_out={
                self.routes.by_citizen: result.accepted,
                self.routes.dead_letter: len(result.dead_letters),
            },
            failures=result.rejected,
        )

    def _send_progress(self, sources: list[dict[str, Any]], with_items: set[int]) -> None:
        for partition, value in self.progress.progress_messages(sources, with_items):
            self.output.produce(self.routes.by_citizen, value, partition=partition)

    async def report_idle_partitions(self) -> None:
        """Between batches: tell the stateful stage which input partitions are caught up."""
        consumer = self.consumer()
        if not consumer.assignment():
            return
        self._send_progress(self.progress.sources(consumer), set())
        await self.output.flush()
