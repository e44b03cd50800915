"""Consumer lag (sinks/lag.py) on the real broker: lag while the consumers are stopped, zero
once they caught up, served by the sink's /metrics with kafka_exporter's names."""

from __future__ import annotations

from collections import defaultdict

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from ehb.commands.cli import app
from ehb.commands.local import DeploymentFactory, wait_until
from ehb.kafka import producer_config
from schemas import SUBJECTS
from schemas.topics import EXAMINATIONS, EXAMINATIONS_BY_CITIZEN, HEALTH_BOOK
from sinks.lag import LagCollector, PartitionLag
from tests.support import factories as f

pytestmark = pytest.mark.integration


def _sums(lag: list[PartitionLag]) -> dict[tuple[str, str], int]:
    sums: dict[tuple[str, str], int] = defaultdict(int)
    for p in lag:
        sums[(p.group, p.topic)] += p.lag
    return sums


def test_lag_with_stopped_consumers_then_zero(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False, partitions=2)
    s = d.settings
    examinations = s.topic(EXAMINATIONS)
    producer = Producer(producer_config(s))
    # One message per produce request: Tansu reports a partition's end offset as the start of
    # its newest batch + 1, so multi-record batches would make the expected count inexact.
    for i in range(6):
        event = f.exam(60 + i)
        producer.produce(
            examinations,
            d.codec.encode(SUBJECTS.EXAMINATION_EVENT, event),
            key=event["ma_cskcb"].encode(),
        )
        assert producer.flush(10) == 0
    collector = LagCollector(s)
    lag = _sums(collector.refresh())
    assert lag[(s.worker_group, examinations)] == 6
    assert lag[(s.sink_group, s.topic(HEALTH_BOOK))] == 0
    # `ehb lag` prints the same reading
    result = CliRunner().invoke(
        app,
        ["lag"],
        env={
            "EHB_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "EHB_TOPIC_PREFIX": s.topic_prefix,
            "EHB_WORKER_GROUP": s.worker_group,
            "EHB_SINK_GROUP": s.sink_group,
        },
    )
    assert result.exit_code == 0, result.output
    assert s.worker_group in result.output

    d.start_worker()
    lag = wait_until(
        lambda: (
            (x := _sums(collector.refresh()))[(s.worker_group, examinations)] == 0
            and x[(s.sink_group, s.topic(HEALTH_BOOK))] > 0
            and x
        ),
        60,
        interval=0.5,
        message="worker caught up, sink behind",
    )
    assert lag[(s.worker_group, s.topic(EXAMINATIONS_BY_CITIZEN))] == 0

    d.start_sink()
    wait_until(
        lambda: not any(_sums(collector.refresh()).values()),
        60,
        interval=0.5,
        message="every group caught up",
    )
    # the sink's /metrics serves the same, refreshed in the background
    hb = (
        f'kafka_consumergroup_lag_sum{{consumergroup="{s.sink_group}",'
        f'topic="{s.topic(HEALTH_BOOK)}"}}'
    )
    metrics = wait_until(
        lambda: (m := d.sink_metrics()).get(hb) == 0 and m, 30, message="sink /metrics shows lag 0"
    )
    assert (
        metrics[
            f'kafka_consumergroup_lag_sum{{consumergroup="{s.worker_group}",'
            f'topic="{examinations}"}}'
        ]
        == 0
    )
    partitions = [k for k in metrics if k.startswith("kafka_consumergroup_lag{")]
    # one series per partition of every topic each group consumes
    assert len(partitions) == len(collector.refresh()) >= 4 + 5
    assert metrics["ehb_consumer_lag_last_refresh_timestamp_seconds"] > 0
