"""The citizens table's local state, read and written per partition by the health-book agent.

The agent writes the table outside Faust's table API: it sends the changelog itself (librdkafka,
``streams.health_book_agent``) and updates the local data directly, per input partition of a
batch that mixes partitions. Two stores:

* **memory** (:class:`MemoryState`): the table's dict, as before; every partition reads and
  writes the same mapping (the state machine keeps to its partition's keys).
* **rocksdb** (:class:`RocksState`): Faust's RocksDB store with the rocksdict driver, one
  database per changelog partition. Faust's own ``_set``/``_get``/``_contains`` pick the
  database from ``current_event()`` -- the last event of the stream, whatever partition the
  key belongs to -- so nothing here goes through them: :meth:`RocksState.view` reads the
  database of the partition given, :meth:`RocksState.write` writes one ``WriteBatch`` to it.
  Keys and values are stored as the changelog's bytes (``streams.state_codec``: binary citizen
  keys, JSON values; JSON keys written before that still read), which is what Faust's recovery
  (``apply_changelog_batch``) and the bulk reader write there too.

Faust records a partition's changelog offset in its database (``set_persisted_offset``) only
when Faust itself sends or recovers a changelog record; the agent's own sends would leave it at
the end of the last recovery (or unset: a restart would replay the whole changelog over the
kept state). The agent therefore sends the changelog with a producer that reports delivered
offsets and writes the last one with the partition's changes, in the same ``WriteBatch``
(docs/state-store.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Protocol

from streams import timer_index
from streams.state_codec import (
    decode_key,
    decode_value,
    encode_json,
    encode_key,
    encode_value,
    is_legacy,
    json_key,
)
from streams.state_codec import legacy as _legacy
from streams.timer_index import is_index_key

__all__ = [
    "PERSISTED_OFFSET_KEY",
    "MemoryState",
    "MemoryView",
    "PartitionedState",
    "RocksPartitionView",
    "RocksState",
    "as_state",
    "claim_table_dir",
    "encode_json",
    "encode_key",
    "persisted_offsets",
    "read_changelog",
    "share_memory",
]

log = logging.getLogger(__name__)


#: the lock files of the table directories this process holds (kept open: the lock lives as long
#: as the process, ``kill -9`` included)
_claimed: dict[Path, int] = {}


def claim_table_dir(base: Path, name: str | None = None) -> Path:
    """This worker process's table directory under ``base``.

    ``name`` given (a static member's instance id): ``base/name``. Otherwise the first
    ``base/worker-N`` whose lock no running process holds: two workers on one host never share
    a directory (Faust would wait 30 s for the partition databases' locks and stop), and a
    worker restarted on the host takes the directory a dead one left, with its state.
    """
    base.mkdir(parents=True, exist_ok=True)
    candidates = [name] if name else (f"worker-{n}" for n in range(1024))
    for candidate in candidates:
        directory = base / candidate
        if directory in _claimed:
            return directory
        fd = os.open(base / f"{candidate}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if name:
                raise RuntimeError(
                    f"another worker process on this host holds {directory}"
                ) from None
            continue
        directory.mkdir(exist_ok=True)
        _claimed[directory] = fd
        return directory
    raise RuntimeError(f"no free table directory under {base}")


#: Faust's key of a partition database's persisted changelog offset
PERSISTED_OFFSET_KEY = b"__faust\0offset__"


def persisted_offsets(table_dir: Path, partitions: int) -> dict[int, int]:
    """The persisted changelog offset of each partition database under ``table_dir``, opened
    read-only (-1: no database, or no offset yet). For tools and tests, not the worker."""
    import rocksdict

    offsets = dict.fromkeys(range(partitions), -1)
    for p in range(partitions):
        path = table_dir / f"citizens-{p}.db"
        if not path.exists():
            continue
        db = rocksdict.Rdict(
            str(path),
            options=rocksdict.Options(raw_mode=True),
            access_type=rocksdict.AccessType.read_only(),
        )
        try:
            raw = db.get(PERSISTED_OFFSET_KEY)
        finally:
            db.close()
        offsets[p] = -1 if raw is None else int(raw)
    return offsets


_encode_key = encode_key
_json_key = json_key


class PartitionedState(Protocol):
    """The table's local data, addressed by the partition a key belongs to."""

    def view(self, partition: int) -> Mapping[str, Any]:
        """What the state machine reads for ``partition`` (keys of other partitions may show)."""
        ...

    def legacy(self, partition: int, keys: Iterable[str]) -> set[str]:
        """The ``keys`` that ``partition``'s data holds in the format this worker does not
        write: under their JSON key (written before the binary keys, ``streams.state_codec``);
        with ``EHB_STATE_KEY_FORMAT=json``, under their binary key (such a citizen stays
        binary: its JSON key would be hidden behind the binary one)."""
        ...

    def write(
        self,
        partition: int,
        changes: Mapping[str, Any],
        changelog_offset: int | None = None,
        legacy: Collection[str] = (),
    ) -> None:
        """Apply ``changes`` (``None`` deletes) to ``partition``'s data; ``changelog_offset``:
        the offset of the last changelog record they were sent in (persisted with them where
        the store keeps it); ``legacy``: keys whose JSON-keyed entry goes (their changelog
        tombstones were sent with ``changes``)."""
        ...


class MemoryView(Mapping[str, Any]):
    """The memory store's mapping as the state machine reads it: a citizen's entry under its
    key, else the one Faust recovered from a JSON-keyed changelog record
    (``streams.state_codec.legacy``)."""

    def __init__(self, data: Mapping[Any, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        data = self._data
        if key in data:
            return data[key]
        return data[_legacy(key)]

    def get(self, key: str, default: Any = None) -> Any:
        data = self._data
        value = data.get(key, _MISSING)
        if value is _MISSING:
            value = data.get(_legacy(key), default) if _json_key(key) is not None else default
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._data or (isinstance(key, str) and _legacy(key) in self._data)

    def __iter__(self) -> Iterator[str]:
        data = self._data
        for key in data:
            if is_legacy(key):
                if key[1] not in data:
                    yield key[1]
            else:
                yield key

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        data = self._data
        for key, value in data.items():
            if is_legacy(key):
                if key[1] not in data:
                    yield key[1], value
            else:
                yield key, value

    def __len__(self) -> int:
        return sum(1 for _ in self)


_MISSING = object()


class MemoryState:
    """The memory store: one mapping for every partition.

    ``binary_keys`` false (``EHB_STATE_KEY_FORMAT=json``): the agent writes the changelog as
    workers did before issue 17, and nothing here replaces a JSON-keyed entry.
    """

    def __init__(self, data: MutableMapping[Any, Any], binary_keys: bool = True) -> None:
        self.data = data
        self.binary_keys = binary_keys

    def view(self, partition: int) -> Mapping[str, Any]:
        return MemoryView(self.data)

    def legacy(self, partition: int, keys: Iterable[str]) -> set[str]:
        data = self.data
        if not self.binary_keys:  # json: a citizen's str key is a binary record's
            return {key for key in keys if key in data and _json_key(key) is not None}
        return {key for key in keys if _legacy(key) in data}

    def write(
        self,
        partition: int,
        changes: Mapping[str, Any],
        changelog_offset: int | None = None,
        legacy: Collection[str] = (),
    ) -> None:
        data = self.data
        binary = self.binary_keys
        for key, value in changes.items():
            # json: a citizen's entry goes where Faust's recovery of its JSON record puts it,
            # unless it has a binary one
            slot = key if binary or key in data or _json_key(key) is None else _legacy(key)
            if value is None:
                data.pop(slot, None)
            else:
                data[slot] = value
        if binary:
            for key in legacy:
                data.pop(_legacy(key), None)


class RocksPartitionView(MutableMapping[str, Any]):
    """One partition's RocksDB database as a mapping of decoded keys and values.

    Keys in both formats (``streams.state_codec``): a citizen is looked up under its binary key,
    then under its JSON key; a JSON-keyed entry whose binary key exists is stale (a crash
    between the two changelog records of a migration) and is not shown.

    Short-lived (one batch): Faust closes a revoked partition's database by dropping its
    reference, so a view kept across a rebalance would keep the database locked.
    """

    def __init__(self, db: Any, skip: bytes) -> None:
        self._db = db
        self._skip = skip  # Faust's persisted-offset key

    def _raw(self, key: str) -> bytes | None:
        db = self._db
        raw: bytes | None = db.get(_encode_key(key))
        if raw is None:
            old = _json_key(key)
            if old is not None:
                raw = db.get(old)
        return raw

    def __getitem__(self, key: str) -> Any:
        raw = self._raw(key)
        if raw is None:
            raise KeyError(key)
        return decode_value(raw)

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._raw(key)
        return default if raw is None else decode_value(raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._raw(key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        self._db.put(_encode_key(key), encode_value(value))
        old = _json_key(key)
        if old is not None and self._db.get(old) is not None:
            self._db.delete(old)

    def __delitem__(self, key: str) -> None:
        if self._raw(key) is None:
            raise KeyError(key)
        self._db.delete(_encode_key(key))
        old = _json_key(key)
        if old is not None:
            self._db.delete(old)

    def _shadowed(self, raw_key: bytes) -> bool:
        """A JSON-keyed citizen entry whose binary key exists (the binary one is current)."""
        if raw_key[:1] != b'"':
            return False
        key = decode_key(raw_key)
        return _json_key(key) is not None and self._db.get(_encode_key(key)) is not None

    def __iter__(self) -> Iterator[str]:
        skip = self._skip
        for raw in self._db.keys():
            if raw != skip and not is_index_key(raw) and not self._shadowed(raw):
                yield decode_key(raw)

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        skip = self._skip
        for raw_key, raw in self._db.items():
            if raw_key != skip and not is_index_key(raw_key) and not self._shadowed(raw_key):
                yield decode_key(raw_key), decode_value(raw)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def timer_candidates(self) -> Iterator[tuple[str, Any]]:
        """The entries that may have a timer: states holding referrals or appointments.

        What rebuilds the state machine's timer index after a rebalance or restart reads them
        from the database's timer index (``streams.timer_index``), not from a scan of every
        citizen of the partition.
        """
        for raw_key, raw in timer_index.candidates(self._db, self._skip, self._shadowed):
            yield decode_key(raw_key), decode_value(raw)


class RocksState:
    """Faust's RocksDB store (rocksdict driver), every read and write routed by partition.

    ``binary_keys`` false (``EHB_STATE_KEY_FORMAT=json``): keys written in JSON, as workers
    did before issue 17, and no JSON-keyed entry replaced (the first phase of a rolling
    upgrade, docs/state-store.md).
    """

    def __init__(self, store: Any, binary_keys: bool = True) -> None:
        if not getattr(store, "use_rocksdict", False):
            raise TypeError(f"not a rocksdict-backed Faust RocksDB store: {store!r}")
        timer_index.install()
        self.store = store
        self.binary_keys = binary_keys

    def db(self, partition: int) -> Any:
        """The partition's database (opened on first use, as Faust does)."""
        return self.store._db_for_partition(partition)

    def view(self, partition: int) -> RocksPartitionView:
        return RocksPartitionView(self.db(partition), self.store.offset_key)

    def legacy(self, partition: int, keys: Iterable[str]) -> set[str]:
        db = self.store._dbs.get(partition)
        if db is None:
            return set()
        binary = self.binary_keys
        found = set()
        for key in keys:
            old = _json_key(key)
            if old is not None and db.get(old if binary else _encode_key(key)) is not None:
                found.add(key)
        return found

    def write(
        self,
        partition: int,
        changes: Mapping[str, Any],
        changelog_offset: int | None = None,
        legacy: Collection[str] = (),
    ) -> None:
        """One ``WriteBatch``: the changes, the deletion of the JSON-keyed entries ``legacy``
        names and, given ``changelog_offset``, Faust's persisted offset (what
        ``set_persisted_offset`` writes), atomically: a restart on this state recovers the
        changelog from that offset on.

        Only into a database that is open (:meth:`view` opened it for the batch): one that a
        rebalance closed meanwhile (the partition was revoked while the batch awaited its
        flush) is not opened again; its changelog has the changes, and whoever owns the
        partition next recovers them from there.
        """
        if not changes and changelog_offset is None:
            return
        db = self.store._dbs.get(partition)
        if db is None:
            log.info("partition %d was revoked: its state goes to the changelog only", partition)
            return
        import rocksdict

        binary = self.binary_keys
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in changes.items():
            raw = _encode_key(key)
            if not binary and (_json_key(key) is None or db.get(raw) is None):
                raw = encode_json(key)  # json: unless the citizen has a binary key already
            timer_index.put(batch, raw, None if value is None else encode_value(value))
        for key in legacy if binary else ():
            old = _json_key(key)
            if old is not None:
                timer_index.put(batch, old, None)
        if changelog_offset is not None:
            timer_index.put_offset(batch, self.store.offset_key, changelog_offset)
        db.write(batch)


def as_state(data: Any, binary_keys: bool = True) -> PartitionedState:
    """The table's ``data`` (a Faust store) as a :class:`PartitionedState` (``binary_keys``:
    written in the binary key format, ``streams.state_codec``)."""
    if isinstance(data, MemoryState | RocksState):
        return data
    if hasattr(data, "_db_for_partition"):
        return RocksState(data, binary_keys)
    return MemoryState(data, binary_keys)


#: records of one partition per WriteBatch of :func:`read_changelog`
BULK_BATCH_RECORDS = 20_000


def read_changelog(
    consumer_config: dict[str, Any],
    todo: Mapping[Any, tuple[Any, bytes, int, int]],
    budget_s: float,
    cancelled: threading.Event,
) -> dict[Any, int]:
    """Read changelog records straight into RocksDB partition databases, in bulk.

    ``todo``: tp (``faust.types.TP``) -> (its partition database, Faust's persisted-offset key,
    first offset to read, last offset to read). Each ``WriteBatch`` holds up to
    :data:`BULK_BATCH_RECORDS` records of one partition *and* the offset of its last record as
    Faust's persisted offset, so the database is always a prefix of its changelog, whenever
    this stops. Stops at each partition's last offset (or its end), at ``budget_s``, or when
    ``cancelled`` is set (a rebalance). Returns tp -> last offset written.

    What Faust's recovery does record by record through its event loop (~7,000 records/s
    here), this does with librdkafka and rocksdict: it is the same data in the same place.
    """
    import rocksdict
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from ehb.kafka import position

    deadline = time.monotonic() + budget_s
    consumer = Consumer(
        {
            **consumer_config,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": 16384,
        }
    )
    by_partition = {(tp.topic, tp.partition): tp for tp in todo}
    written: dict[Any, int] = {}
    pending = set(todo)
    batches = {tp: rocksdict.WriteBatch(raw_mode=True) for tp in todo}
    counts = dict.fromkeys(todo, 0)
    last: dict[Any, int] = {}

    def write(tp: Any) -> None:
        if not counts[tp]:
            return
        db, offset_key, _, _ = todo[tp]
        batch = batches[tp]
        timer_index.put_offset(batch, offset_key, last[tp])
        db.write(batch)
        written[tp] = last[tp]
        batches[tp] = rocksdict.WriteBatch(raw_mode=True)
        counts[tp] = 0

    try:
        consumer.assign(
            [TopicPartition(tp.topic, tp.partition, start) for tp, (_, _, start, _) in todo.items()]
        )
        while pending and not cancelled.is_set() and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.5):
                error = message.error()
                tp = by_partition.get((message.topic(), message.partition()))
                if tp is None or tp not in pending:
                    continue
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(tp)
                    continue
                _, _, offset = position(message)
                end = todo[tp][3]
                if offset > end:
                    pending.discard(tp)
                    continue
                key, value = message.key(), message.value()
                if key is None:  # nothing a changelog record could apply
                    log.warning("changelog %s[%d]@%d has no key", tp.topic, tp.partition, offset)
                else:
                    timer_index.put(batches[tp], key, value)
                last[tp] = offset
                counts[tp] += 1
                if offset == end:
                    pending.discard(tp)
                if counts[tp] >= BULK_BATCH_RECORDS:
                    write(tp)
        for tp in todo:
            write(tp)
    finally:
        consumer.close()
    return written


#: the cache and write-buffer manager every partition database of this process shares
_shared: dict[str, Any] = {}


def share_memory(cache_bytes: int, memtables_bytes: int) -> None:
    """Make every rocksdict database Faust opens in this process share one block cache of
    ``cache_bytes`` and one write-buffer budget of ``memtables_bytes``.

    Faust's ``RocksDBOptions.as_options`` gives each partition database a block cache of its
    own (2 GiB by default) and its own memtables, so the memory a worker may use grows with the
    partitions it holds, actives and standbys alike. Here it is bounded per process, whatever
    the partitions: the options are otherwise Faust's (bloom filter, binary-search index, the
    table's sizes).
    """
    import rocksdict
    from faust.stores.rocksdb import RocksDBOptions

    _shared["cache"] = rocksdict.Cache(cache_bytes)
    _shared["memtables"] = rocksdict.WriteBufferManager(memtables_bytes, False)
    if _shared.get("installed"):
        return
    original = RocksDBOptions.as_options

    def as_options(self: Any) -> Any:
        if not self.use_rocksdict:
            return original(self)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_write_buffer_manager(_shared["memtables"])
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(_shared["cache"])
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options

    RocksDBOptions.as_options = as_options  # type: ignore[method-assign]
    _shared["installed"] = True
