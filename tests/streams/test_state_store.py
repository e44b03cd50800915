"""The citizens table on RocksDB (streams/state_store.py): every write of the health-book agent
lands in the database of the partition its key belongs to, whatever Faust's current event is,
and reads find it there. No broker: the Faust store is built and written directly."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("rocksdict")

import faust  # noqa: E402
from faust.types import TP  # noqa: E402

from ehb.settings import Settings, StateStore  # noqa: E402
from schemas import AvroCodec  # noqa: E402
from schemas.partitioning import citizen_partition  # noqa: E402
from schemas.reference import FacilityRegistry  # noqa: E402
from schemas.time import DAY_MS, HOUR_MS  # noqa: E402
from streams import timer_index  # noqa: E402
from streams.app import _faust_app, _table_options  # noqa: E402
from streams.citizen_state import CitizenStateMachine, StateConfig, clock_key  # noqa: E402
from streams.enrichment import enrich  # noqa: E402
from streams.health_book_agent import HealthBookAgent, HealthBookOutputs, _Output  # noqa: E402
from streams.internal import encode_validated  # noqa: E402
from streams.state_codec import decode_key, encode_key  # noqa: E402
from streams.state_store import MemoryState, RocksState, as_state, encode_json  # noqa: E402
from tests.support import factories as f  # noqa: E402

PARTITIONS = 4
CONFIG = StateConfig(
    partitions=PARTITIONS,
    referral_window_ms=30 * DAY_MS,
    reminder_lead_ms=24 * HOUR_MS,
    grace_ms=3 * DAY_MS,
    lateness_ms=48 * HOUR_MS,
)
REGISTRY = FacilityRegistry.from_reference()


def rocks_settings(tmp_path: Path) -> Settings:
    return Settings(
        state_store=StateStore.ROCKSDB,
        state_store_dir=tmp_path / "tables",
        data_dir=tmp_path,
        kafka_partitions=PARTITIONS,
        state_block_cache_mb=4,
        state_memtables_mb=24,  # not the default: the test shows the setting is applied
        kafka_bootstrap="127.0.0.1:1",  # never connected to
    )


@pytest.fixture
def table(tmp_path: Path) -> Iterator[faust.Table]:
    settings = rocks_settings(tmp_path)
    app = _faust_app(settings)
    citizens = app.Table(
        "citizens",
        default=None,
        partitions=PARTITIONS,
        key_type=str,
        **_table_options(settings),
    )
    yield citizens
    citizens.data._dbs.clear()  # what Faust's stop does: dropping a database closes it


def put_raw(db: Any, key: bytes, value: bytes | None) -> None:
    """One record written to a partition database as the changelog's readers write it."""
    import rocksdict

    batch = rocksdict.WriteBatch(raw_mode=True)
    timer_index.put(batch, key, value)
    db.write(batch)


def key_of(n: int) -> str:
    """A citizen key of the form the worker derives (32 hex characters)."""
    return hashlib.sha256(f"citizen-{n}".encode()).hexdigest()[:32]


def test_the_setting_gives_a_rocksdict_store_sized_by_the_settings(
    table: faust.Table, tmp_path: Path
) -> None:
    store = table.data
    assert type(store).__module__ == "faust.stores.rocksdb"
    assert store.use_rocksdict
    assert store.rocksdb_options.write_buffer_size == 8 * 1024 * 1024
    # one block cache and one memtable budget for every partition database of the process
    from streams.state_store import _shared

    budget = rocks_settings(tmp_path).state_memtables_mb * 1024 * 1024
    assert _shared["memtables"].get_buffer_size() == budget
    state = RocksState(store)
    for p in range(PARTITIONS):
        state.view(p)
        state.write(p, {key_of(n): {"i": 1, "n": n} for n in range(2000)})
    assert 0 < _shared["memtables"].get_usage() <= budget
    assert store.partition_path(2) == tmp_path / "tables" / "citizens-2.db"
    assert isinstance(as_state(store), RocksState)


def test_the_memory_setting_keeps_the_memory_store(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka_partitions=PARTITIONS,
        kafka_bootstrap="127.0.0.1:1",
        state_store=StateStore.MEMORY,
    )
    app = _faust_app(settings)
    citizens = app.Table("citizens", default=None, partitions=PARTITIONS, key_type=str)
    assert type(citizens.data).__module__ == "faust.stores.memory"
    assert isinstance(as_state(citizens.data), MemoryState)


def test_writes_land_in_their_partition_database_and_reads_find_them(
    table: faust.Table,
) -> None:
    state = RocksState(table.data)
    keys = {p: [] for p in range(PARTITIONS)}  # type: dict[int, list[str]]
    for n in range(40):
        key = key_of(n)
        keys[citizen_partition(key, PARTITIONS)].append(key)
    for p, ks in keys.items():
        state.view(p)  # the agent reads a partition before it writes it: that opens it
        state.write(p, {k: {"i": 1, "n": k[:4]} for k in ks} | {clock_key(p): {"c": p}})
    # Faust's persisted offset lives in the same databases; views do not show it
    table.data.set_persisted_offset(SimpleNamespace(partition=1), 17)
    for p in range(PARTITIONS):
        db = state.db(p)
        for q, ks in keys.items():
            for k in ks:
                raw = db.get(encode_key(k))
                assert (raw is not None) == (p == q), (k, p, q)
        view = state.view(p)
        assert sorted(view) == sorted(keys[p] + [clock_key(p)])
        assert dict(view.items())[clock_key(p)] == {"c": p}
        for k in keys[p]:
            assert view.get(k) == {"i": 1, "n": k[:4]} and k in view
        other = keys[(p + 1) % PARTITIONS][0]
        assert view.get(other) is None and other not in view
    assert table.data.persisted_offset(SimpleNamespace(partition=1)) == 17
    # None deletes, in that partition's database only
    p, k = 0, keys[0][0]
    state.write(p, {k: None})
    assert state.view(p).get(k) is None and state.db(p).get(encode_key(k)) is None


class RecordingOutput:
    """The OutputProducer's interface: what was produced, and flushes that succeed."""

    def __init__(self, reports_offsets: bool = False) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.flushes = 0
        self.reports_offsets = reports_offsets
        self.ends: dict[tuple[str, int | None], int] = {}  # next offset per partition
        self.delivered: dict[tuple[str, int], int] = {}

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        self.records.append((topic, value, key, partition))
        if partition is not None:
            offset = self.ends.get((topic, partition), 100)
            self.ends[(topic, partition)] = offset + 1
            self.delivered[(topic, partition)] = offset

    async def flush(self, timeout: float = 1.0) -> None:
        self.flushes += 1

    def take_offsets(self, topic: str) -> dict[int, int]:
        taken = {p: o for (t, p), o in self.delivered.items() if t == topic}
        self.delivered = {tp: o for tp, o in self.delivered.items() if tp[0] != topic}
        return taken


def _agent(output: RecordingOutput, changelog: RecordingOutput | None = None) -> HealthBookAgent:
    def out(topic: str) -> _Output:
        return _Output(topic, encode_json)

    outputs = HealthBookOutputs(out("hb"), out("referrals"), out("appointments"), out("hb"))
    return HealthBookAgent(
        CitizenStateMachine(CONFIG),
        AvroCodec(),
        dict,
        "citizens-changelog",
        outputs,
        output,  # type: ignore[arg-type]
        within=0.1,
        changelog_output=changelog,  # type: ignore[arg-type]
    )


def _events(n_citizens: int = 60, exams: int = 3) -> list[Any]:
    """Internal messages as the intake writes them: by citizen partition, with progress."""
    by_partition: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    for i in range(exams):
        for n in range(n_citizens):
            event = f.exam(100 + n, admitted=f.BASE_TIME + timedelta(days=i * 3 + n % 3))
            key = key_of(n)
            item = enrich(event, REGISTRY, key, published_at=0)
            by_partition[citizen_partition(key, PARTITIONS)].append(item)
    events = []
    offset = 0
    for p, items in by_partition.items():
        for j in range(0, len(items), 10):
            chunk = items[j : j + 10]
            watermark = max(it["event_time"] for it in chunk)
            # every input partition reports: the clock moves, timers fire
            sources = [{"partition": q, "watermark": watermark, "idle": 0} for q in range(4)]
            value = encode_validated(chunk, sources)
            message = SimpleNamespace(topic="by-citizen", partition=p, offset=offset, value=value)
            events.append(SimpleNamespace(message=message))
            offset += 1
    # one batch mixes the partitions, as Faust's buffer does
    events.sort(key=lambda e: (e.message.offset % 7, e.message.partition))
    return events


def test_the_agent_writes_each_state_change_to_its_partition_database(
    table: faust.Table,
) -> None:
    events = _events()
    rocks = RocksState(table.data)
    output = RecordingOutput()
    agent = _agent(output)
    asyncio.run(agent.process_batch(events, rocks))

    memory: dict[str, Any] = {}
    memory_output = RecordingOutput()
    asyncio.run(_agent(memory_output).process_batch(events, memory))

    changelog = [r for r in output.records if r[0] == "citizens-changelog"]
    assert changelog, "the batch wrote no state"
    seen = set()
    for _, value, raw_key, partition in changelog:
        assert partition is not None
        assert raw_key is not None and raw_key[:1] in (b"\x01", b'"'), raw_key
        # citizens under binary keys, the clocks under JSON ones
        assert (raw_key[:1] == b"\x01") == (len(raw_key) == 17), raw_key
        key = decode_key(raw_key)
        expected = int(key.rsplit(":", 1)[1]) if key.startswith("__clock__") else None
        if expected is None:
            expected = citizen_partition(key, PARTITIONS)
        assert partition == expected, key
        # the database of that partition holds the changelog's bytes, the others nothing
        for p in range(PARTITIONS):
            got = rocks.db(p).get(raw_key)
            assert got == (value if p == partition else None), (key, p)
        seen.add(key)
    # every key of every partition, and what the memory store holds, key for key
    on_disk = {k: v for p in range(PARTITIONS) for k, v in rocks.view(p).items()}
    assert set(on_disk) == seen == set(memory)
    assert on_disk == json.loads(encode_json(memory))  # the memory store keeps tuples
    assert len({citizen_partition(k, PARTITIONS) for k in seen if len(k) == 32}) == PARTITIONS
    # the same outputs as on the memory store
    assert _decisions(output) == _decisions(memory_output)


def test_a_second_batch_reads_the_state_of_the_first_from_its_partition(
    table: faust.Table,
) -> None:
    """Replaying a batch over the RocksDB state changes nothing and re-integrates nobody:
    the reads found every citizen in its partition's database (idempotent by event id)."""
    events = _events(n_citizens=30, exams=2)
    rocks = RocksState(table.data)
    output = RecordingOutput()
    agent = _agent(output)
    asyncio.run(agent.process_batch(events, rocks))
    before = {k: v for p in range(PARTITIONS) for k, v in rocks.view(p).items()}
    assert _integrated(output) == 30
    output.records.clear()
    asyncio.run(agent.process_batch(events, rocks))
    after = {k: v for p in range(PARTITIONS) for k, v in rocks.view(p).items()}
    # the same, but visits behind the watermark, which the replay's pruning may forget
    # (memory management, not a decision: test_citizen_state's replay test)
    assert _without_visits(after) == _without_visits(before)
    assert _integrated(output) == 0, "a replay integrated health books again"


def _decisions(output: RecordingOutput) -> list[tuple[Any, ...]]:
    """The records produced, but their processing times."""
    out = []
    for topic, value, key, partition in output.records:
        if topic == "citizens-changelog" or value is None:
            out.append((topic, value, key, partition))
            continue
        record = json.loads(value)
        out.append((topic, record["record_type"], record["citizen_key"], record.get("event_id")))
    return sorted(out, key=repr)


def _without_visits(states: dict[str, Any]) -> dict[str, Any]:
    return {
        k: {f: x for f, x in v.items() if f != "v"} if isinstance(v, dict) else v
        for k, v in states.items()
    }


def _integrated(output: RecordingOutput) -> int:
    return sum(
        1
        for topic, value, _, _ in output.records
        if topic == "hb"
        and value is not None
        and json.loads(value)["record_type"] == "BOOK_INTEGRATED"
    )


def test_the_changelog_offset_is_persisted_with_the_state_it_carries(
    table: faust.Table,
) -> None:
    """What Faust's recovery starts from on a restart with the local state kept: the offset of
    the last changelog record of each partition, written in the same batch as the state."""
    rocks = RocksState(table.data)
    output, changelog = RecordingOutput(), RecordingOutput(reports_offsets=True)
    agent = _agent(output, changelog)
    assert all(table.data.persisted_offset(SimpleNamespace(partition=p)) is None for p in range(4))
    asyncio.run(agent.process_batch(_events(n_citizens=20, exams=1), rocks))
    assert not [r for r in output.records if r[0] == "citizens-changelog"]
    last = {p: o for (_, p), o in changelog.ends.items()}
    assert set(last) == set(range(PARTITIONS))
    for p in range(PARTITIONS):
        assert table.data.persisted_offset(SimpleNamespace(partition=p)) == last[p] - 1
    # a second batch moves it on
    asyncio.run(agent.process_batch(_events(n_citizens=20, exams=2), rocks))
    for p in range(PARTITIONS):
        persisted = table.data.persisted_offset(SimpleNamespace(partition=p))
        assert persisted == changelog.ends[("citizens-changelog", p)] - 1 > last[p] - 1


def test_a_write_to_a_partition_revoked_meanwhile_does_not_open_it_again(
    table: faust.Table,
) -> None:
    store = table.data
    state = RocksState(store)
    key = key_of(1)
    p = citizen_partition(key, PARTITIONS)
    state.view(p)
    store.revoke_partitions(table, {TP(table.changelog_topic.get_topic_name(), p)})
    assert p not in store._dbs
    state.write(p, {key: 1}, changelog_offset=5)
    assert p not in store._dbs, "the revoked partition's database was opened again"
    assert state.view(p).get(key) is None  # (this opens it: nothing was written)


def test_worker_processes_on_one_host_claim_table_directories_of_their_own(
    tmp_path: Path,
) -> None:
    """A directory is held as long as its process lives (a killed one's is free again), and a
    static member's instance id names its own."""
    import subprocess
    import sys

    from streams.state_store import claim_table_dir

    claim = (
        "import sys; from pathlib import Path; from streams.state_store import claim_table_dir;"
        "print(claim_table_dir(Path(sys.argv[1])).name, flush=True); sys.stdin.read()"
    )
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", claim, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        names = [h.stdout.readline().strip() for h in holders if h.stdout]
        assert sorted(names) == ["worker-0", "worker-1"]
        assert claim_table_dir(tmp_path).name == "worker-2"
        assert claim_table_dir(tmp_path) == tmp_path / "worker-2"  # the same process: its own
        holders[0].kill()
        holders[0].wait()
        again = subprocess.run(
            [sys.executable, "-c", claim, str(tmp_path)],
            input="",
            capture_output=True,
            text=True,
            check=True,
        )
        assert again.stdout.strip() == names[0]  # the killed process's, the only one free
        assert claim_table_dir(tmp_path, "static-a") == tmp_path / "static-a"
    finally:
        for h in holders:
            h.kill()
            h.communicate()


def test_the_timer_index_rebuilt_from_rocksdb_skips_only_citizens_without_timers(
    table: faust.Table,
) -> None:
    """After a restart the state machine rebuilds its timers by scanning the partition: the
    RocksDB view hands it only the states that hold referrals or appointments, undecoded
    others skipped, and the index is the one the memory store's full scan gives."""
    state = RocksState(table.data)
    day = 1_700_000_000_000
    appointment = ["79001", day, 0, "open", "e1", None, None, None]
    referral = ["79001", "79002", day, day + 30 * DAY_MS, "open", "e2", "1", "I10"]
    states: dict[str, Any] = {}
    for n in range(200):
        key = key_of(n)
        states[key] = (
            {"i": 1, "a": {f"a{n}": appointment}}
            if n % 7 == 0
            else {"i": 1, "r": {f"r{n}": referral}}
            if n % 11 == 0
            else {"i": 1, "d": {"r:old": day}}
            if n % 13 == 0
            else 1
        )
    for p in range(PARTITIONS):
        state.view(p)
        state.write(p, {k: v for k, v in states.items() if citizen_partition(k, PARTITIONS) == p})
    with_timers = {k for k, v in states.items() if isinstance(v, dict) and ("a" in v or "r" in v)}
    for p in range(PARTITIONS):
        view = state.view(p)
        candidates = dict(view.timer_candidates())
        assert set(candidates) == {k for k in with_timers if citizen_partition(k, PARTITIONS) == p}
        memory = {k: v for k, v in states.items() if citizen_partition(k, PARTITIONS) == p}
        assert sorted(CitizenStateMachine(CONFIG)._index(p, view)) == sorted(
            CitizenStateMachine(CONFIG)._index(p, memory)
        )
        assert CitizenStateMachine(CONFIG)._index(p, view)


def _index_keys(db: Any) -> set[bytes]:
    return {k for k in db.keys() if timer_index.is_index_key(k) and k != timer_index.INDEX}


def _timer_states(p: int) -> dict[str, Any]:
    """Citizens of partition ``p``: every third holds an open appointment."""
    day = 1_700_000_000_000
    appointment = ["79001", day, 0, "open", "e1", None, None, None]
    keys = [key_of(n) for n in range(400) if citizen_partition(key_of(n), PARTITIONS) == p]
    return {k: {"i": 1, "a": {"a1": appointment}} if i % 3 == 0 else 1 for i, k in enumerate(keys)}


def test_the_timer_rebuild_reads_the_index_not_every_citizen(table: faust.Table) -> None:
    """A partition database opened empty keeps an index of the citizens that may have a
    timer, written with them: the rebuild after a restart reads those (a state written around
    the index is not seen), and an entry whose citizen no longer has one goes at that rebuild."""
    p = 1
    states = _timer_states(p)
    with_timer = {k for k, v in states.items() if v != 1}
    state = RocksState(table.data)
    db = state.db(p)
    assert db.get(timer_index.INDEX) is not None  # opened empty: its index is complete
    state.write(p, states)
    assert _index_keys(db) == {timer_index.INDEX + encode_key(k) for k in with_timer}
    assert set(dict(state.view(p).timer_candidates())) == with_timer

    unindexed = next(k for k in states if k not in with_timer)
    db[encode_key(unindexed)] = encode_json(states[next(iter(with_timer))])  # around the index
    assert unindexed not in dict(state.view(p).timer_candidates())

    closed = sorted(with_timer)[:2]
    state.write(p, dict.fromkeys(closed, 1))  # their appointments are over
    assert set(dict(state.view(p).timer_candidates())) == with_timer - set(closed)
    assert _index_keys(db) == {timer_index.INDEX + encode_key(k) for k in with_timer - set(closed)}
    state.write(p, {sorted(with_timer)[2]: None})
    assert timer_index.INDEX + encode_key(sorted(with_timer)[2]) not in _index_keys(db)


def test_a_database_written_before_the_index_is_scanned_once_and_indexed(
    table: faust.Table,
) -> None:
    """A worker of an earlier version wrote no index: the first rebuild scans the database,
    finds the same citizens, and leaves the index and its marker for the next one."""
    p = 2
    states = _timer_states(p)
    state = RocksState(table.data)
    db = state.db(p)
    state.write(p, states)
    expected = dict(state.view(p).timer_candidates())
    for k in [*_index_keys(db), timer_index.INDEX]:
        del db[k]  # as the earlier version left it
    assert dict(state.view(p).timer_candidates()) == expected
    assert db.get(timer_index.INDEX) is not None
    assert _index_keys(db) == {timer_index.INDEX + encode_key(k) for k in expected}
    assert dict(state.view(p).timer_candidates()) == expected


def test_a_write_that_did_not_keep_the_index_is_found_by_the_next_rebuild(
    table: faust.Table,
) -> None:
    """A worker of an earlier version writes an indexed database again (a downgrade, then an
    upgrade): it moves the persisted offset without the marker, so the next rebuild scans the
    database and finds the citizen it gave an appointment."""
    import rocksdict

    p = 0
    states = _timer_states(p)
    state = RocksState(table.data)
    db = state.db(p)
    state.write(p, states, changelog_offset=41)
    assert db.get(timer_index.INDEX) == b"41"  # the marker: the offset it is complete up to
    expected = dict(state.view(p).timer_candidates())
    newcomer = next(k for k, v in states.items() if v == 1)
    booked = states[next(iter(expected))]
    older = rocksdict.WriteBatch(raw_mode=True)  # as the earlier version writes: no index
    older.put(encode_key(newcomer), encode_json(booked))
    older.put(table.data.offset_key, b"42")
    db.write(older)
    assert dict(state.view(p).timer_candidates()) == {**expected, newcomer: booked}
    assert db.get(timer_index.INDEX) == b"42"
    assert timer_index.INDEX + encode_key(newcomer) in _index_keys(db)


def test_faust_recovery_and_replication_write_the_index(table: faust.Table) -> None:
    """Faust's own writer of changelog records (a recovery, a standby following its
    partitions) indexes them as the agent does, and persists the offset."""
    from types import SimpleNamespace

    p = 3
    states = _timer_states(p)
    topic = "t-citizens-changelog"
    events = [
        SimpleNamespace(
            message=SimpleNamespace(
                tp=TP(topic, p),
                partition=p,
                offset=offset,
                key=encode_key(k),
                value=encode_json(v),
            )
        )
        for offset, (k, v) in enumerate(states.items())
    ]
    table.data.apply_changelog_batch(events, lambda k: k, lambda v: v)
    db = RocksState(table.data).db(p)
    assert _index_keys(db) == {
        timer_index.INDEX + encode_key(k) for k, v in states.items() if v != 1
    }
    assert table.data.persisted_offset(TP(topic, p)) == len(states) - 1
    assert db.get(timer_index.INDEX) == str(len(states) - 1).encode()  # complete to there


def test_a_member_id_is_kept_whole_or_not_at_all(tmp_path: Path) -> None:
    from streams.member_id import load, store

    path = tmp_path / "group-member-id"
    assert load(path) is None
    store(path, "ehb-worker-1f2e")
    store(path, "ehb-worker-9a8b")
    assert load(path) == "ehb-worker-9a8b"
    assert [p.name for p in tmp_path.iterdir()] == ["group-member-id"]
    path.write_text("")
    assert load(path) is None


# -- the encoding: JSON keys written before issue 17 (streams/state_codec.py) ------------------
def _agent_writing(output: RecordingOutput, binary_keys: bool) -> HealthBookAgent:
    agent = _agent(output)
    agent.binary_keys = binary_keys
    return agent


def _changelog(output: RecordingOutput) -> list[tuple[bytes, bytes | None]]:
    return [
        (key, value)
        for topic, value, key, _ in output.records
        if topic == "citizens-changelog" and key is not None
    ]


def _compacted(records: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """What a compacted changelog keeps: the last value of each key, tombstones gone."""
    last: dict[bytes, bytes | None] = {}
    for key, value in records:
        last[key] = value
    return {k: v for k, v in last.items() if v is not None}


def _decoded(compacted: dict[bytes, bytes]) -> dict[str, Any]:
    """A compacted changelog as the readers see it: a citizen's binary key before its JSON."""
    out: dict[str, Any] = {}
    for raw, value in sorted(compacted.items(), key=lambda kv: kv[0][:1] == b"\x01"):
        out[decode_key(raw)] = json.loads(value)
    return out


def _json_form(state: Any) -> Any:
    return json.loads(encode_json(state))  # the memory store keeps tuples


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
def test_a_state_written_in_json_keys_is_read_and_moved_to_binary_keys(
    table: faust.Table, store: str
) -> None:
    """The state of 30 citizens written as a worker wrote it before issue 17 (JSON keys, in the
    changelog and the local store; the memory store as Faust's recovery decodes such a
    changelog), then more exams of the same citizens processed by the new worker: the same
    decisions and the same state as a worker that only ever wrote binary keys, each citizen
    written gets its binary key then its JSON key's tombstone, and a compacted changelog and
    the local store hold no JSON key of a citizen any more."""
    from streams.state_codec import CitizenKeyCodec, is_legacy, json_key

    first, second = _events(n_citizens=30, exams=1), _events(n_citizens=30, exams=3)
    # the reference: binary keys throughout, on the memory store
    reference: dict[str, Any] = {}
    ref_first, ref_second = RecordingOutput(), RecordingOutput()
    asyncio.run(_agent(ref_first).process_batch(first, reference))
    asyncio.run(_agent(ref_second).process_batch(second, reference))

    old = RecordingOutput()
    rocks = RocksState(table.data, binary_keys=False)
    asyncio.run(_agent_writing(old, binary_keys=False).process_batch(first, rocks))
    old_records = _changelog(old)
    citizens = {decode_key(k) for k, _ in old_records if not k.startswith(b'"__clock')}
    assert len(citizens) == 30 and all(k[:1] == b'"' for k, _ in old_records)
    state: Any
    if store == "rocksdb":
        state = RocksState(table.data)
        for p in range(PARTITIONS):
            assert all(k[:1] != b"\x01" for k in state.db(p).keys())
    else:
        codec = CitizenKeyCodec()
        state = {codec.loads(k): json.loads(v) for k, v in _compacted(old_records).items()}
        assert sum(1 for k in state if is_legacy(k)) == 30

    new = RecordingOutput()
    asyncio.run(_agent(new).process_batch(second, state))
    assert [r for r in _decisions(new) if r[0] != "citizens-changelog"] == [
        r for r in _decisions(ref_second) if r[0] != "citizens-changelog"
    ]
    new_records = _changelog(new)
    for key in citizens:
        at = [i for i, (k, _) in enumerate(new_records) if k == json_key(key)]
        binary = [i for i, (k, _) in enumerate(new_records) if k == encode_key(key)]
        assert len(at) == 1 and new_records[at[0]][1] is None, "no tombstone for the JSON key"
        assert binary and binary[-1] < at[0], "the tombstone came before the binary record"
    compacted = _compacted(old_records + new_records)
    assert not [k for k in compacted if k[:1] == b'"' and not k.startswith(b'"__clock')]
    assert _decoded(compacted) == _decoded(
        _compacted(_changelog(ref_first) + _changelog(ref_second))
    )
    # the local state: the reference's, under binary keys only
    if store == "rocksdb":
        on_disk = {k: v for p in range(PARTITIONS) for k, v in state.view(p).items()}
        assert on_disk == _json_form(reference)
        for p in range(PARTITIONS):
            raw_keys = list(state.db(p).keys())
            assert not [k for k in raw_keys if k[:1] == b'"' and not k.startswith(b'"__clock')]
    else:
        assert not [k for k in state if is_legacy(k)]
        assert _json_form(state) == _json_form(reference)


def test_a_citizen_under_both_keys_is_read_under_its_binary_one(table: faust.Table) -> None:
    """A crash between a citizen's binary record and its JSON key's tombstone leaves both:
    the binary one is the newer, wherever it is read (lookups, scans, the timer scan)."""
    from streams.state_codec import legacy
    from streams.state_store import MemoryView

    day = 1_700_000_000_000
    with_timer = {"i": 1, "a": {"a1": ["79001", day, 0, "open", "e1", None, None, None]}}
    a = key_of(1)
    p = citizen_partition(a, PARTITIONS)
    b = next(key_of(n) for n in range(3, 100) if citizen_partition(key_of(n), PARTITIONS) == p)
    state = RocksState(table.data)
    db = state.db(p)
    # as every writer of the database writes (with the timer index: streams.timer_index)
    put_raw(db, encode_json(a), encode_json(1))  # older: integrated only
    put_raw(db, encode_key(a), encode_json(with_timer))  # newer
    put_raw(db, encode_json(b), encode_json(with_timer))  # older: an open appointment
    put_raw(db, encode_key(b), encode_json(1))  # newer: closed since
    view = state.view(p)
    assert view.get(a) == with_timer and view[b] == 1 and a in view and b in view
    assert sorted(view) == sorted([a, b]) and dict(view.items()) == {a: with_timer, b: 1}
    assert dict(view.timer_candidates()) == {a: with_timer}
    assert state.legacy(p, [a, b, key_of(0)]) == {a, b}
    # the memory store after Faust's recovery of such a changelog
    memory = MemoryView({legacy(a): 1, a: with_timer, legacy(b): with_timer, b: 1})
    assert memory.get(a) == with_timer and memory[b] == 1
    assert dict(memory.items()) == {a: with_timer, b: 1} and len(memory) == 2
    assert MemoryView({legacy(a): 1}).get(a) == 1 and a in MemoryView({legacy(a): 1})


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
def test_a_json_writer_keeps_a_binary_citizen_binary(table: faust.Table, store: str) -> None:
    """EHB_STATE_KEY_FORMAT=json (a rolling upgrade) on a state that already holds binary keys:
    those citizens are written under their binary key (a JSON one would be hidden behind the
    older binary value), the others under JSON keys; no tombstone; the reference's state."""
    from streams.state_codec import json_key

    first, second = _events(n_citizens=30, exams=1), _events(n_citizens=30, exams=3)
    reference: dict[str, Any] = {}
    asyncio.run(_agent(RecordingOutput()).process_batch(first, reference))
    asyncio.run(_agent(RecordingOutput()).process_batch(second, reference))

    state: Any = RocksState(table.data) if store == "rocksdb" else {}
    asyncio.run(_agent(RecordingOutput()).process_batch(first, state))  # binary keys
    if store == "memory":
        state = MemoryState(state, binary_keys=False)
    else:
        state = RocksState(table.data, binary_keys=False)
    out = RecordingOutput()
    asyncio.run(_agent_writing(out, binary_keys=False).process_batch(second, state))
    records = _changelog(out)
    assert records and all(v is not None for _, v in records)
    citizens = [decode_key(k) for k, _ in records if not k.startswith(b'"__clock')]
    assert all(json_key(c) is not None for c in citizens)
    assert not [k for k, _ in records if _is_json_citizen(k)], "a binary citizen went JSON"
    if store == "rocksdb":
        on_disk = {k: v for p in range(PARTITIONS) for k, v in state.view(p).items()}
        assert on_disk == _json_form(reference)
        for p in range(PARTITIONS):
            assert not [k for k in state.db(p).keys() if _is_json_citizen(k)]
    else:
        assert _json_form(dict(state.view(0).items())) == _json_form(reference)


def _is_json_citizen(raw: bytes) -> bool:
    from streams.state_codec import json_key

    return raw[:1] == b'"' and json_key(decode_key(raw)) is not None
