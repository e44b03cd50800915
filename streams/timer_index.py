"""The timer index of a RocksDB partition database: which citizens may have a timer.

After a restart or a rebalance the state machine rebuilds, per partition, the heap of the
times at which citizens' referrals and appointments fall due (``streams.citizen_state``). Most
citizens hold neither: scanning every citizen of a partition to find the few that do took ~3 s
at 10 M citizens, between a worker owning its partitions and its first batch. The index lists
the few, in the partition's own database, so the rebuild reads only them.

* ``INDEX + key`` (empty value) for every stored ``key`` whose value may hold a timer
  (:func:`may_have_timer`: a state with ``"r"`` or ``"a"``, the same byte-level test the full
  scan makes). ``INDEX`` is ``0x02``: binary citizen keys start with ``0x01``, JSON keys with
  ``"``, Faust's offset key with ``_``; the index is one contiguous range of keys.
* ``INDEX`` alone: the marker of a complete index. Its value is Faust's persisted changelog
  offset as of the last write that kept the index (empty before the first): every writer here
  puts the offset and the marker in the same ``WriteBatch`` (:func:`put_offset`). A database
  whose marker is missing or disagrees with its persisted offset was written by something that
  did not keep the index (a worker of an earlier version, after a downgrade and an upgrade
  again): the first rebuild scans it whole and writes the index it found with the marker.
  A database opened empty is marked at once.

Every writer of a partition database puts a key's index entry in the same ``WriteBatch`` as
the key (:func:`put`): the agent (``RocksState.write``), the bulk reader (``read_changelog``)
and Faust's own recovery and standby replication (``apply_changelog_batch``, patched by
:func:`install`). The index is local only: nothing of it goes to the changelog, and a database
rebuilt from the changelog rebuilds its index with it. An entry may outlive its citizen's last
timer (a later value without one does not delete it): the rebuild checks each entry against
the value it names and deletes the stale ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "INDEX",
    "candidates",
    "install",
    "is_index_key",
    "may_have_timer",
    "put",
    "put_offset",
]

log = logging.getLogger(__name__)

#: the first byte of the index's keys, and the marker of a complete index on its own
INDEX = b"\x02"


def may_have_timer(raw: bytes) -> bool:
    """Whether a stored value may hold a timer: a state (a JSON object) with referrals or
    appointments. A false positive costs one lookup at the next rebuild; a false negative would
    lose a timer, so the test is on the bytes, whatever else the value holds."""
    return raw[:1] == b"{" and (b'"r"' in raw or b'"a"' in raw)


def is_index_key(raw_key: bytes) -> bool:
    return raw_key[:1] == INDEX


def put(batch: Any, key: bytes, value: bytes | None) -> None:
    """Write ``key`` (``None``: delete it) into ``batch`` with its index entry."""
    if value is None:
        batch.delete(key)
        batch.delete(INDEX + key)
    else:
        batch.put(key, value)
        if may_have_timer(value):
            batch.put(INDEX + key, b"")


def put_offset(batch: Any, offset_key: bytes, offset: int) -> None:
    """Write Faust's persisted offset into ``batch`` with the marker of a complete index."""
    raw = str(offset).encode()
    batch.put(offset_key, raw)
    batch.put(INDEX, raw)


def mark_if_empty(db: Any) -> None:
    """A database with no key yet: its index is complete from the start."""
    for _ in db.keys():
        return
    db.put(INDEX, b"")


def is_complete(db: Any, offset_key: bytes) -> bool:
    """Whether every write since the database's index was built kept it."""
    marker = db.get(INDEX)
    return marker is not None and marker == (db.get(offset_key) or b"")


def candidates(
    db: Any, offset_key: bytes, shadowed: Callable[[bytes], bool]
) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) of every entry of ``db`` that may have a timer, raw.

    From the index when it is complete (:func:`is_complete`); else from a scan of every entry,
    after which the index found is written with the marker. ``offset_key``: Faust's
    persisted-offset key; ``shadowed``: whether a JSON-keyed entry is hidden by its citizen's
    binary one.
    """
    import rocksdict

    if not is_complete(db, offset_key):
        found = [
            (k, v)
            for k, v in db.items()
            if may_have_timer(v) and k != offset_key and not is_index_key(k) and not shadowed(k)
        ]
        batch = rocksdict.WriteBatch(raw_mode=True)
        for k, _ in found:
            batch.put(INDEX + k, b"")
        batch.put(INDEX, db.get(offset_key) or b"")
        db.write(batch)
        log.info("timer index built: %d of a partition's entries may have a timer", len(found))
        yield from found
        return
    stale = []
    for index_key in _index_keys(db):
        key = index_key[1:]
        value = db.get(key)
        if value is None or not may_have_timer(value):
            stale.append(index_key)
        elif not shadowed(key):
            yield key, value
    if stale:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for index_key in stale:
            batch.delete(index_key)
        db.write(batch)


def _index_keys(db: Any) -> Iterable[bytes]:
    for raw in db.keys(from_key=INDEX + b"\x00"):
        if not is_index_key(raw):
            return
        yield raw


_installed: list[str] = []


def install() -> None:
    """Make Faust's RocksDB store keep the index: its recovery and standby replication
    (``apply_changelog_batch``) write each record's index entry in the record's
    ``WriteBatch``, and the persisted offset with the marker in the same batch; a partition
    database it opens empty is marked complete. Once per process; Faust's implementation is
    otherwise kept as it is in 0.15.3."""
    if _installed:
        return
    from collections import defaultdict

    import rocksdict
    from faust.stores.rocksdb import Store

    if not hasattr(Store, "_open_for_partition") or not hasattr(Store, "apply_changelog_batch"):
        raise RuntimeError("faust's RocksDB store has changed: streams/timer_index.py")
    opened = Store._open_for_partition

    def _open_for_partition(self: Any, partition: int) -> Any:
        db = opened(self, partition)
        if self.use_rocksdict and not self.read_only:
            mark_if_empty(db)
        return db

    original_apply = Store.apply_changelog_batch

    def apply_changelog_batch(
        self: Any,
        batch: Iterable[Any],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        if not self.use_rocksdict:
            return original_apply(self, batch, to_key, to_value)
        batches: defaultdict[int, Any] = defaultdict(lambda: rocksdict.WriteBatch(raw_mode=True))
        tp_offsets: dict[Any, int] = {}
        for event in batch:
            msg = event.message
            tp, offset = msg.tp, msg.offset
            tp_offsets[tp] = offset if tp not in tp_offsets else max(offset, tp_offsets[tp])
            put(batches[msg.partition], msg.key, msg.value)
        # the offset in its records' WriteBatch (Faust writes it after them), with the marker
        for tp, offset in tp_offsets.items():
            put_offset(batches[tp.partition], self.offset_key, offset)
        for partition, write in batches.items():
            self._db_for_partition(partition).write(write)

    Store._open_for_partition = _open_for_partition  # type: ignore[method-assign]
    Store.apply_changelog_batch = apply_changelog_batch  # type: ignore[method-assign]
    _installed.append("faust")
