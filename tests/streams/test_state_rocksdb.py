"""The citizens table on RocksDB (EHB_STATE_STORE=rocksdb) on the real broker and PostgreSQL:
the same input gives the same rows as the memory store with two workers on four partitions,
and with a worker killed (SIGKILL) mid-run and restarted on its kept local state."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_for_workers, wait_until
from ehb.commands.tail import Start, TopicReader
from schemas.topics import CITIZENS_CHANGELOG
from streams import timer_index
from streams.member_id import load as load_member_id
from streams.state_store import PERSISTED_OFFSET_KEY, persisted_offsets
from tests.streams import test_stateful
from tests.streams.test_stateful import EVENTS, _events, assert_same_state, settle

#: the memory store's result: one worker, undisturbed (a module fixture of test_stateful.py)
reference = test_stateful.reference

pytest.importorskip("rocksdict")

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _start(d: Deployment, name: str, wait: bool = True) -> None:
    """A worker with the table directory ``name`` (EHB_STATE_STORE_DIR)."""
    d.start_worker(wait=wait, extra_env={"EHB_STATE_STORE_DIR": str(_table_dir(d, name))})


def _table_dir(d: Deployment, name: str) -> Path:
    return d.tmp / "tables" / name


def _claimed_dir(d: Deployment, n: int) -> Path:
    """The n-th table directory workers with the default settings claim on this host."""
    return d.settings.tables_dir / f"worker-{n}"


def _partition_dbs(d: Deployment, name: str) -> list[str]:
    return sorted(p.name for p in _table_dir(d, name).glob("*.db"))


def test_two_workers_on_rocksdb_give_the_same_result_as_the_memory_store(
    deploy: DeploymentFactory, reference: dict[str, object]
) -> None:
    """Two workers on one host with the default settings: each claims a table directory of its
    own under EHB_DATA_DIR (one directory would lock the second out of the databases)."""
    d = deploy(workers=2, partitions=PARTITIONS, state_store="rocksdb")
    d.wait_for_workers()
    d.publish(_events())
    assert_same_state(settle(d), reference)
    # each worker opened the databases of the partitions it owned (actives, standbys), each in
    # its own directory
    first, second = ({p.name for p in _claimed_dir(d, n).glob("*.db")} for n in (0, 1))
    assert first and second, (first, second)
    assert {f"citizens-{p}.db" for p in range(PARTITIONS)} <= first | second


def test_rocksdb_worker_killed_and_restarted_on_its_local_state_gives_the_same_result(
    deploy: DeploymentFactory, reference: dict[str, object]
) -> None:
    d = deploy(workers=0, partitions=PARTITIONS, state_store="rocksdb")
    _start(d, "a")
    d.publish(_events())
    wait_until(
        lambda: d.count("health_book_entries") >= EVENTS // 2,
        120,
        message="half of the events persisted",
    )
    member = load_member_id(_table_dir(d, "a") / "group-member-id")
    assert member, "the worker keeps its group member id beside its table"
    d.kill(d.workers[0])
    killed_at = time.monotonic()
    kept = _partition_dbs(d, "a")
    assert len(kept) == PARTITIONS, kept
    # what a restart has left to recover: the changelog after the offset persisted with the
    # local state (at most the batch in flight at the kill), not the whole changelog
    persisted = persisted_offsets(_table_dir(d, "a"), PARTITIONS)
    ends = _changelog_ends(d)
    to_replay = {p: ends.get(p, 0) - 1 - persisted[p] for p in range(PARTITIONS)}
    print(f"changelog ends {ends}, persisted {persisted}, to replay {to_replay}")  # noqa: T201
    assert all(persisted[p] >= 0 for p in range(PARTITIONS)), persisted
    assert sum(to_replay.values()) < sum(ends.values()) / 4, (to_replay, ends)
    _start(d, "a", wait=False)  # the same table directory: the local state is kept
    ready = d.wait_for_workers() + (time.monotonic() - killed_at)
    print(f"rocksdb worker ready {ready:.1f}s after the SIGKILL")  # noqa: T201 - shown with -s
    # it rejoined as the member the killed process was (a new member gets a new id), so the
    # group did not wait for the dead member's session to expire
    assert load_member_id(_table_dir(d, "a") / "group-member-id") == member
    assert_same_state(settle(d), reference)


def _changelog_ends(d: Deployment) -> dict[int, int]:
    """The real end of each changelog partition (the last offset read + 1)."""
    with TopicReader(d.settings, CITIZENS_CHANGELOG, Start("beginning")) as reader:
        last: dict[int, int] = {}
        for message in reader.messages(follow=False, idle_s=0.5):
            last[message.partition()] = message.offset()
    return {p: o + 1 for p, o in last.items()}


def test_rocksdb_worker_killed_for_good_its_partitions_taken_over_give_the_same_result(
    deploy: DeploymentFactory, reference: dict[str, object]
) -> None:
    """Two workers; one is killed and stays down: the survivor takes its partitions over from
    the databases it kept as their standby (Faust's table_standby_replicas=1)."""
    d = deploy(workers=0, partitions=PARTITIONS, state_store="rocksdb")
    _start(d, "w1", wait=False)
    _start(d, "w2", wait=False)
    d.wait_for_workers()
    d.publish(_events())
    wait_until(
        lambda: d.count("health_book_entries") >= EVENTS // 2,
        120,
        message="half of the events persisted",
    )
    victim, survivor = d.workers
    d.kill(victim)
    killed_at = time.monotonic()
    took_over = wait_for_workers([survivor], PARTITIONS) + (time.monotonic() - killed_at)
    print(f"the survivor owned the {PARTITIONS} partitions {took_over:.1f}s after the SIGKILL")  # noqa: T201
    assert_same_state(settle(d), reference)


def _write_changelog(
    d: Deployment, records: int
) -> tuple[dict[int, dict[bytes, bytes]], set[bytes]]:
    """``records`` states written straight to the changelog in large record batches, with
    overwrites and tombstones; returns what each partition's database must hold after it, and
    the keys deleted last."""
    from confluent_kafka import Producer

    from ehb.kafka import producer_config
    from schemas.partitioning import citizen_partition
    from schemas.topics import changelog_topic
    from streams.state_store import encode_json

    topic = changelog_topic(d.settings.worker_group)
    producer = Producer(producer_config(d.settings, **{"linger.ms": 500, "batch.size": 1_000_000}))
    expected: dict[int, dict[bytes, bytes]] = {p: {} for p in range(PARTITIONS)}
    deleted: set[bytes] = set()
    for n in range(records):
        # every key twice: the second write wins; spread over the partitions by their first bytes
        key = hashlib.md5(str(n % (records // 2)).encode()).hexdigest()
        p = citizen_partition(key, PARTITIONS)
        k = encode_json(key)
        if n % 97 == 0 and k in expected[p]:
            producer.produce(topic, None, k, partition=p)  # a tombstone
            del expected[p][k]
            deleted.add(k)
        else:
            # one in five with appointments: the recovery indexes it (streams.timer_index)
            v = (
                encode_json({"i": 1, "n": n, **({"a": {}} if n % 5 == 0 else {})})
                if n % 3
                else b"1"
            )
            producer.produce(topic, v, k, partition=p)
            expected[p][k] = v
            deleted.discard(k)
        if n % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert deleted
    return expected, deleted


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "faust"])
def test_a_recovery_reads_a_changelog_written_in_large_batches_to_its_real_end(
    deploy: DeploymentFactory, bulk: bool
) -> None:
    """Tansu reports a partition's end as the start of its newest record batch + 1: a recovery
    that believed it would stop thousands of records early. The state a worker recovered from
    such a changelog (the bulk reader, and Faust's own recovery) is the changelog's, to its
    last record, with the last offset persisted."""
    from confluent_kafka import Consumer, TopicPartition
    from faust.types import TP

    from ehb.commands.local import scrape
    from ehb.kafka import consumer_config
    from schemas.topics import changelog_topic
    from streams.faust_patches import real_end_offsets

    d = deploy(workers=0, sink=False, partitions=PARTITIONS, state_store="rocksdb")
    expected, deleted = _write_changelog(d, 20_000)
    topic = changelog_topic(d.settings.worker_group)
    consumer = Consumer(consumer_config(d.settings, "test-watermarks"))
    try:
        reported = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        }
        ends = real_end_offsets(
            consumer_config(d.settings, "test-real-end"),
            {TP(topic, p): 1 for p in range(PARTITIONS)},
        )
        ends = {tp.partition: end for tp, end in ends.items()}
    finally:
        consumer.close()
    assert any(reported[p] < ends[p] - 1000 for p in range(PARTITIONS)), (reported, ends)

    env = {"EHB_STATE_STORE_DIR": str(_table_dir(d, "r"))}
    if not bulk:
        env["EHB_FAUST_PATCHES_DISABLE"] = "bulk_recovery"
    worker = d.start_worker(extra_env=env)
    d.publish(_events()[:50])  # the agent processes only once its partitions are recovered
    wait_until(
        lambda: (
            scrape(worker.metrics_port).get('ehb_stage_messages_in_total{stage="health-book"}', 0)
            > 0
        ),
        120,
        message="the worker's first health-book batch",
    )
    d.kill(worker)
    import rocksdict

    for p in range(PARTITIONS):
        db = rocksdict.Rdict(
            str(_table_dir(d, "r") / f"citizens-{p}.db"),
            options=rocksdict.Options(raw_mode=True),
            access_type=rocksdict.AccessType.read_only(),
        )
        try:
            held = {k: db.get(k) for k in expected[p]}
            missing = [k for k, v in held.items() if v is None]
            wrong = [k for k, v in held.items() if v is not None and v != expected[p][k]]
            assert not missing and not wrong, (p, len(missing), len(wrong))
            assert not [k for k in deleted if db.get(k) is not None], p
            assert int(db.get(PERSISTED_OFFSET_KEY)) >= ends[p] - 1
            # the timer index: every state that may have a timer, and complete
            timers = [k for k, v in expected[p].items() if timer_index.may_have_timer(v)]
            assert timers and db.get(timer_index.INDEX) is not None, p
            assert not [k for k in timers if db.get(timer_index.INDEX + k) is None], p
        finally:
            db.close()
