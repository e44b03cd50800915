"""The citizens table's key encoding on the real broker and PostgreSQL (streams/state_codec.py):
a changelog written with JSON keys, as workers wrote it before issue 17, is recovered by a worker
of the new version (memory store, RocksDB with the bulk reader and with Faust's own recovery),
which moves every citizen it writes to a binary key; a third worker recovers the mixed changelog;
the final state is the reference's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from tests.streams import test_stateful
from tests.streams.test_stateful import _events, assert_same_state, settle

#: the memory store's result: one worker, undisturbed (a module fixture of test_stateful.py)
reference = test_stateful.reference

pytestmark = pytest.mark.integration

PARTITIONS = 4


def read_changelog(d: Deployment) -> list[tuple[int, bytes, bytes | None]]:
    """Every record of the table's changelog, to each partition's real end (Tansu reports less):
    (partition, key, value), in order within a partition."""
    from confluent_kafka import Consumer, TopicPartition
    from faust.types import TP

    from ehb.kafka import consumer_config, position
    from schemas.topics import changelog_topic
    from streams.faust_patches import real_end_offsets

    topic = changelog_topic(d.settings.worker_group)
    ends = real_end_offsets(
        consumer_config(d.settings, "test-real-end"),
        {TP(topic, p): 1 for p in range(PARTITIONS)},
    )
    last = {tp.partition: end - 1 for tp, end in ends.items()}
    consumer = Consumer(consumer_config(d.settings, "test-changelog-reader"))
    records: list[tuple[int, bytes, bytes | None]] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        remaining = {p for p, end in last.items() if end >= 0}
        deadline = time.monotonic() + 60
        while remaining:
            assert time.monotonic() < deadline, f"the changelog ended before {last}"
            for message in consumer.consume(1000, 0.5):
                if message.error():
                    continue
                _, p, offset = position(message)
                if p in remaining and offset <= last[p]:
                    records.append((p, message.key(), message.value()))
                    if offset == last[p]:
                        remaining.discard(p)
    finally:
        consumer.close()
    return records


def compacted(records: list[tuple[int, bytes, bytes | None]]) -> dict[bytes, bytes | None]:
    """The last value of each key (None: its last record is a tombstone)."""
    out: dict[bytes, bytes | None] = {}
    for _, key, value in records:
        out[key] = value
    return out


def _is_citizen_json_key(raw: bytes) -> bool:
    from streams.state_codec import decode_key, json_key

    return raw[:1] == b'"' and json_key(decode_key(raw)) is not None


@pytest.mark.parametrize("store", ["memory", "rocksdb-bulk", "rocksdb-faust"])
def test_a_changelog_in_json_keys_is_recovered_and_moved_to_binary_keys(
    deploy: DeploymentFactory, reference: dict[str, Any], store: str
) -> None:
    from streams.state_codec import decode_key, encode_key, json_key

    rocksdb = store.startswith("rocksdb")
    d = deploy(workers=0, partitions=PARTITIONS, state_store="rocksdb" if rocksdb else "memory")
    events = _events()
    third = len(events) // 3

    def worker(phase: int, env: dict[str, str]) -> Any:
        if rocksdb:  # a table directory of its own: a full recovery from the changelog
            env["EHB_STATE_STORE_DIR"] = str(_table_dir(d, phase))
        if store == "rocksdb-faust":
            env["EHB_FAUST_PATCHES_DISABLE"] = "bulk_recovery"
        return d.start_worker(extra_env=env)

    # 1. a worker writing as workers did before issue 17: JSON keys
    old = worker(1, {"EHB_STATE_KEY_FORMAT": "json"})
    d.publish(events[:third])
    d.wait_for_events(third, 120)
    d.kill(old)
    before = read_changelog(d)
    assert before and all(k[:1] == b'"' for _, k, _ in before), "not a JSON-keyed changelog"
    json_citizens = {decode_key(k) for _, k, _ in before if _is_citizen_json_key(k)}
    assert json_citizens

    # 2. a worker of the new version recovers it, processes the second third
    new = worker(2, {})
    d.publish(events[third : 2 * third])
    d.wait_for_events(2 * third, 120)
    d.kill(new)
    # 3. another recovers the changelog of both formats, processes the rest
    last = worker(3, {})
    d.publish(events[2 * third :])
    assert_same_state(settle(d), reference)
    d.kill(last)

    records = read_changelog(d)
    final = compacted(records)
    binary = {decode_key(k) for k, v in final.items() if k[:1] == b"\x01" and v is not None}
    moved = json_citizens & binary
    assert moved, "no citizen was moved to its binary key"
    for key in moved:
        # exactly one entry left: the binary one; the JSON key's last record is its tombstone,
        # sent after a binary record of the citizen
        assert final[json_key(key) or b""] is None, "a JSON key left beside its binary key"
        order = [k for _, k, _ in records if k in (encode_key(key), json_key(key))]
        assert order.index(encode_key(key)) < len(order) - 1 - order[::-1].index(json_key(key))
    live_json = {decode_key(k) for k, v in final.items() if _is_citizen_json_key(k) and v}
    assert not live_json & binary
    print(  # noqa: T201 - shown with -s
        f"{len(json_citizens)} citizens under JSON keys, {len(moved)} moved to binary keys, "
        f"{len(live_json)} left under JSON keys (not written since)"
    )
    if rocksdb:
        _assert_local_state_moved(_table_dir(d, 3), final)


def _table_dir(d: Deployment, phase: int) -> Path:
    return d.tmp / "tables" / f"phase-{phase}"


def _assert_local_state_moved(directory: Path, final: dict[bytes, bytes | None]) -> None:
    """The local databases of the last worker hold no JSON key the changelog tombstoned, and
    every citizen the changelog holds, with its value, under the same key."""
    import rocksdict

    from streams.state_store import PERSISTED_OFFSET_KEY

    held: dict[bytes, bytes] = {}
    for p in range(PARTITIONS):
        db = rocksdict.Rdict(
            str(directory / f"citizens-{p}.db"),
            options=rocksdict.Options(raw_mode=True),
            access_type=rocksdict.AccessType.read_only(),
        )
        try:
            held.update((k, v) for k, v in db.items() if k != PERSISTED_OFFSET_KEY)
        finally:
            db.close()
    tombstoned = [k for k, v in final.items() if v is None and _is_citizen_json_key(k)]
    assert tombstoned and not [k for k in tombstoned if k in held]
    # a citizen's value on disk may be newer than the changelog's (visits forgotten locally)
    assert {k for k, v in final.items() if v is not None and k[:1] == b"\x01"} <= set(held)


def _readers_view(final: dict[bytes, bytes | None]) -> dict[str, bytes]:
    """What every reader sees in a compacted changelog: a citizen's binary key, else its JSON
    key (streams.state_store)."""
    from streams.state_codec import decode_key

    view: dict[str, bytes] = {}
    for raw, value in sorted(final.items(), key=lambda kv: kv[0][:1] == b"\x01"):
        key = decode_key(raw)
        if value is not None:
            view[key] = value
        elif raw[:1] == b"\x01":
            view.pop(key, None)
    return view


def test_the_migration_rewrites_the_remaining_json_keys(deploy: DeploymentFactory) -> None:
    """``ehb state migrate-keys`` on a changelog of both formats (JSON-keyed citizens, binary
    ones, both: a crash between the two records, JSON keys tombstoned): every JSON key of a
    citizen ends tombstoned, what readers see is unchanged, and a second run finds nothing."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import NewTopic
    from typer.testing import CliRunner

    from ehb.commands.cli import app
    from ehb.kafka import admin_client, producer_config
    from schemas.partitioning import citizen_partition
    from schemas.topics import changelog_topic
    from streams.state_codec import encode_json, encode_key

    d = deploy(workers=0, sink=False, partitions=PARTITIONS)
    topic = changelog_topic(d.settings.worker_group)
    admin = admin_client(d.settings)  # kept: its futures fail once it is collected
    created = admin.create_topics(
        [NewTopic(topic, PARTITIONS, 1, config={"cleanup.policy": "compact"})]
    )
    for future in created.values():
        future.result()
    producer = Producer(producer_config(d.settings, **{"linger.ms": 20}))
    kinds: dict[str, int] = {}
    for n in range(2_000):
        key = f"{n * 7919:032x}"
        p = citizen_partition(key, PARTITIONS)
        kind = n % 5
        kinds[key] = kind
        old, new = encode_json(key), encode_key(key)
        producer.produce(topic, encode_json({"i": 1, "n": n}) if n % 2 else b"1", old, partition=p)
        if kind == 1:  # the new version wrote it: binary record, JSON tombstone
            producer.produce(topic, encode_json({"i": 1, "m": n}), new, partition=p)
            producer.produce(topic, None, old, partition=p)
        elif kind == 2:  # a crash between the two: both keys hold a value
            producer.produce(topic, encode_json({"i": 1, "m": n}), new, partition=p)
        elif kind == 3:  # overwritten, then deleted, in JSON
            producer.produce(topic, b"1", old, partition=p)
            producer.produce(topic, None, old, partition=p)
    for p in range(PARTITIONS):  # the clocks stay JSON
        producer.produce(topic, encode_json({"s": {}}), encode_json(f"__clock__:{p}"), partition=p)
    assert producer.flush(60) == 0
    before = _readers_view(compacted(read_changelog(d)))
    remaining = sum(1 for kind in kinds.values() if kind in (0, 2, 4))

    env = _env(d)
    runner = CliRunner()
    dry = runner.invoke(app, ["state", "migrate-keys", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert f"{remaining:,} citizens under JSON keys" in dry.output
    done = runner.invoke(app, ["state", "migrate-keys"], env=env)
    assert done.exit_code == 0, done.output
    rewritten = sum(1 for kind in kinds.values() if kind in (0, 4))
    assert f"{rewritten:,} written under their binary key, {remaining:,} JSON keys" in done.output

    final = compacted(read_changelog(d))
    assert not [k for k, v in final.items() if v is not None and _is_citizen_json_key(k)]
    assert _readers_view(final) == before
    again = runner.invoke(app, ["state", "migrate-keys"], env=env)
    assert again.exit_code == 0 and "0 citizens under JSON keys" in again.output, again.output


def _env(d: Deployment) -> dict[str, str]:
    """The deployment's settings as the environment of a command."""
    return {k: v for k, v in d.children.env().items() if k.startswith("EHB_")}


@pytest.mark.parametrize("point", ["health_book.outputs_flushed", "health_book.changelog_written"])
def test_a_worker_killed_while_moving_citizens_to_binary_keys_loses_nothing(
    deploy: DeploymentFactory, reference: dict[str, Any], point: str
) -> None:
    """The new worker, on the RocksDB state an old-format worker left, kills itself mid-run at
    a crash point of the health-book agent (before the changelog is sent; after the changelog
    and the local state are written, before the batch is acknowledged) and is restarted on its
    kept state: the reference's rows, and no citizen left under both keys."""
    from streams.state_codec import decode_key

    d = deploy(workers=0, partitions=PARTITIONS, state_store="rocksdb")
    events = _events()
    third = len(events) // 3
    env = {"EHB_STATE_STORE_DIR": str(_table_dir(d, 1))}
    old = d.start_worker(extra_env={**env, "EHB_STATE_KEY_FORMAT": "json"})
    d.publish(events[:third])
    d.wait_for_events(third, 120)
    d.kill(old)
    victim = d.start_worker(extra_env={**env, "EHB_FAULT_KILL": f"{point}:3"})
    # a chunk at a time, each processed before the next: batches enough to reach the point 3
    # times, whatever the timing (one publish of everything can make two large batches)
    published = third
    while victim.proc.poll() is None and published < len(events):
        published += d.publish(events[published : published + 100])
        wait_until(
            lambda n=published: victim.proc.poll() is not None or d.accounted_events() >= n,
            120,
            message="the chunk processed, or the worker killed at the point",
        )
    assert victim.proc.wait(120) == -9, "the worker did not reach the point"
    d.publish(events[published:])
    d.start_worker(extra_env=env)
    assert_same_state(settle(d), reference)
    final = compacted(read_changelog(d))
    binary = {decode_key(k) for k, v in final.items() if k[:1] == b"\x01" and v is not None}
    live_json = {decode_key(k) for k, v in final.items() if _is_citizen_json_key(k) and v}
    assert binary and not live_json & binary
