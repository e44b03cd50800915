"""The producer's durable outbox: nothing a facility handed over is lost to a crash or an outage.

Every event the publisher accepts is written to a local SQLite database (WAL mode) *before* it
is sent to Kafka, and deleted only once the broker has acknowledged the message that carries
it. A producer that crashes, is killed or loses the broker keeps its events on disk; the next
producer with the same identity resends what was never acknowledged, with the same event ids,
so downstream (idempotent sinks keyed by facility + MA_LK and by event id) a resend is
recognised and leaves exactly one row::

    outbox = Outbox.open(settings.state_dir / "outbox", "simulate")
    seq = outbox.stage("79001", EVENT, 1, wire_value)   # buffered, not yet durable
    outbox.commit()                                     # one transaction: now accepted
    ...  produce, and in the delivery report:
    outbox.acknowledge([seq], events=1)                 # deleted at the next commit

* One file per producer identity, ``EHB_DATA_DIR/outbox/<identity>.sqlite3``, held with an
  exclusive lock (``<identity>.lock``): two live processes never share an outbox.
* Writes are batched: :meth:`Outbox.stage` only buffers; :meth:`Outbox.commit` inserts every
  staged row and deletes every acknowledged one in ONE transaction (``executemany``). The
  publisher commits before it produces anything, so an event on the wire is always on disk.
* ``synchronous=NORMAL`` (default) survives a crash or ``kill -9`` of the producer (the WAL is
  in the operating system's cache); ``FULL`` also survives a power loss, at the price of an
  fsync per transaction (``EHB_OUTBOX_SYNCHRONOUS``).
* Rows are either one event (``EVENT``: an ExaminationEvent in the wire format; on a resend
  the events of a facility are batched again) or a whole message (``MESSAGE``: a value sent
  as it is, with its headers, e.g. a dossier that must stay in one message).
* ``marks`` are small named values written in the same transaction as the rows (a source
  position: a producer that resumes from its mark never skips an event it did not store).

Metrics (this process's open outboxes): ``ehb_outbox_pending_events`` and
``ehb_outbox_oldest_pending_age_seconds``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from prometheus_client import Gauge

from ehb import faultpoints
from producers.errors import OutboxBusy
from schemas.errors import EhbError

__all__ = [
    "EVENT",
    "MESSAGE",
    "Outbox",
    "OutboxBusy",
    "OutboxRow",
    "OUTBOX_OLDEST_AGE",
    "OUTBOX_PENDING",
]

log = logging.getLogger(__name__)

EVENT = 0
MESSAGE = 1

_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq          INTEGER PRIMARY KEY,                -- acceptance order, never reused
    facility     TEXT    NOT NULL,                   -- the Kafka key (MA_CSKCB)
    kind         INTEGER NOT NULL,                   -- 0 one event, 1 a whole message
    events       INTEGER NOT NULL,                   -- events it carries
    body         BLOB    NOT NULL,                   -- Confluent wire format
    headers      TEXT,                               -- JSON [[name, hex value], ...]
    accepted_at  REAL    NOT NULL                    -- unix time
);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_LAST_SEQ = "__last_seq__"  # a mark: sequence numbers are never reused, even once deleted
_INSERT = (
    "INSERT INTO pending (seq, facility, kind, events, body, headers, accepted_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM pending WHERE seq = ?"

_open_outboxes: weakref.WeakSet[Outbox] = weakref.WeakSet()


def _total_pending() -> float:
    return float(sum(o.pending_events for o in list(_open_outboxes)))


def _oldest_age() -> float:
    return max((o.oldest_pending_age() for o in list(_open_outboxes)), default=0.0)


OUTBOX_PENDING = Gauge(
    "ehb_outbox_pending_events",
    "Events accepted into this producer's outbox and not yet acknowledged by the broker.",
)
OUTBOX_PENDING.set_function(_total_pending)
OUTBOX_OLDEST_AGE = Gauge(
    "ehb_outbox_oldest_pending_age_seconds",
    "Age of the oldest event in the outbox not yet acknowledged by the broker (0: empty).",
)
OUTBOX_OLDEST_AGE.set_function(_oldest_age)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    facility: str
    kind: int
    events: int
    body: bytes
    headers: list[tuple[str, bytes]] | None
    accepted_at: float


def _encode_headers(headers: list[tuple[str, bytes]] | None) -> str | None:
    if not headers:
        return None
    return json.dumps([[name, bytes(value).hex()] for name, value in headers])


def _decode_headers(text: str | None) -> list[tuple[str, bytes]] | None:
    if not text:
        return None
    return [(name, bytes.fromhex(value)) for name, value in json.loads(text)]


class Outbox:
    """Events accepted but not yet acknowledged by the broker; see the module docstring."""

    def __init__(
        self,
        path: Path | None,
        *,
        synchronous: str = "NORMAL",
        identity: str = "memory",
        lock: IO[str] | None = None,
    ) -> None:
        self.path = path
        self.identity = identity
        self._lock_file = lock
        self._mutex = threading.Lock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            isolation_level=None,
            check_same_thread=False,
            timeout=30,
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # a bigger WAL between checkpoints: fewer copies back into the database file
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        self._db.executescript(_SCHEMA)
        row = self._db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM pending), 0), coalesce((SELECT "
            "CAST(value AS INTEGER) FROM marks WHERE name = ?), 0)), "
            "coalesce((SELECT sum(events) FROM pending), 0), (SELECT count(*) FROM pending)",
            (_LAST_SEQ,),
        ).fetchone()
        self._next_seq = int(row[0]) + 1
        #: events stored and not acknowledged (the gauge)
        self.pending_events = int(row[1])
        #: rows and events a previous process left behind (resent by the publisher)
        self.recovered_rows = int(row[2])
        self.recovered_events = int(row[1])
        self._staged: list[tuple[int, str, int, int, bytes, str | None, float]] = []
        self._acked: list[tuple[int]] = []
        self._last_commit = time.monotonic()
        self.transactions = 0
        self.closed = False
        _open_outboxes.add(self)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path, identity: str, *, synchronous: str = "NORMAL") -> Outbox:
        """The outbox of ``identity`` under ``directory``; :class:`OutboxBusy` if in use."""
        if _IDENTITY.match(identity) is None:
            raise EhbError(
                f"invalid producer identity {identity!r}: letters, digits, '.', '_' and '-' only"
            )
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / f"{identity}.lock", "a+")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise OutboxBusy(
                f"outbox {identity!r} in {directory} is used by another live "
                "producer; give this one its own identity (EHB_PRODUCER_ID)"
            ) from None
        try:
            return cls(
                directory / f"{identity}.sqlite3",
                synchronous=synchronous,
                identity=identity,
                lock=lock,
            )
        except BaseException:
            lock.close()
            raise

    @classmethod
    def open_first_free(
        cls, directory: Path, identity: str, *, synchronous: str = "NORMAL"
    ) -> Outbox:
        """``identity``, or ``identity.2``, ``.3``... when a live process holds it."""
        for n in range(1, 1000):
            name = identity if n == 1 else f"{identity}.{n}"
            try:
                return cls.open(directory, name, synchronous=synchronous)
            except OutboxBusy:
                continue
        raise OutboxBusy(f"no free outbox for {identity!r} in {directory}")

    @classmethod
    def in_memory(cls) -> Outbox:
        """Not durable: for tools and benchmarks that explicitly opt out."""
        return cls(None)

    # -- writing --------------------------------------------------------------------------------
    def stage(
        self,
        facility: str,
        kind: int,
        events: int,
        body: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> int:
        """Buffer a row; returns its sequence number. Durable only after :meth:`commit`."""
        seq = self._next_seq
        self._next_seq += 1
        self._staged.append(
            (seq, facility, kind, events, body, _encode_headers(headers), time.time())
        )
        return seq

    @property
    def staged(self) -> int:
        return len(self._staged)

    def commit(self, marks: dict[str, str] | None = None) -> None:
        """Insert the staged rows, delete the acknowledged ones, set ``marks``: one transaction."""
        with self._mutex:
            self._commit_locked(marks)

    def _commit_locked(self, marks: dict[str, str] | None = None) -> None:
        if not (self._staged or self._acked or marks):
            return
        staged, acked = self._staged, self._acked
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if staged:
                db.executemany(_INSERT, staged)
            if acked:
                db.executemany(_DELETE, acked)
            values = [(_LAST_SEQ, str(self._next_seq - 1)), *(marks or {}).items()]
            db.executemany("INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)", values)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._staged, self._acked = [], []
        self.pending_events += sum(row[3] for row in staged)
        self.transactions += 1
        self._last_commit = time.monotonic()
        if staged:
            faultpoints.reach("producer.outbox_committed")
        if acked:
            faultpoints.reach("producer.outbox_deleted")

    def acknowledge(self, seqs: Iterable[int], events: int) -> None:
        """The broker acknowledged the message carrying these rows: delete them (lazily)."""
        self._acked.extend((seq,) for seq in seqs)
        self.pending_events -= events

    def commit_due(self, max_rows: int = 5000, max_age_s: float = 1.0) -> None:
        """Commit when enough acknowledgements wait, or the last commit is old enough."""
        if (self._acked or self._staged) and (
            len(self._acked) + len(self._staged) >= max_rows
            or time.monotonic() - self._last_commit >= max_age_s
        ):
            self.commit()

    # -- reading --------------------------------------------------------------------------------
    def rows(self, after: int = 0, limit: int = 10_000) -> list[OutboxRow]:
        """Durable, unacknowledged rows with ``seq > after``, in acceptance order."""
        with self._mutex:
            fetched = self._db.execute(
                "SELECT seq, facility, kind, events, body, headers, accepted_at FROM pending "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [
            OutboxRow(
                seq, facility, kind, events, bytes(body), _decode_headers(headers), accepted_at
            )
            for seq, facility, kind, events, body, headers, accepted_at in fetched
        ]

    def iter_rows(self, upto: int | None = None, chunk: int = 10_000) -> Iterator[OutboxRow]:
        """Every durable unacknowledged row (``seq <= upto`` when given), read in chunks."""
        after = 0
        while True:
            rows = self.rows(after, chunk)
            for row in rows:
                if upto is not None and row.seq > upto:
                    return
                yield row
            if len(rows) < chunk:
                return
            after = rows[-1].seq

    @property
    def last_seq(self) -> int:
        """The highest sequence number handed out so far."""
        return self._next_seq - 1

    def mark(self, name: str) -> str | None:
        with self._mutex:
            row = self._db.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest unacknowledged row was accepted (0 when none)."""
        # Read only: the producer's thread alone writes (rows acknowledged since its last
        # commit still count, for at most ``commit_due``'s age).
        with self._mutex:
            if self.closed:
                return 0.0
            row = self._db.execute(
                "SELECT accepted_at FROM pending ORDER BY seq LIMIT 1"
            ).fetchone()
        return max(0.0, time.time() - row[0]) if row else 0.0

    # -- closing --------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        with self._mutex:
            try:
                self._commit_locked()
            finally:
                self.closed = True
                self._db.close()
                _open_outboxes.discard(self)
                if self._lock_file is not None:
                    self._lock_file.close()
        if self.pending_events:
            log.warning(
                "outbox %s closed with %d events not yet acknowledged; the next "
                "producer with this identity resends them",
                self.identity,
                self.pending_events,
            )

    def discard(self) -> None:
        """Forget every pending row (``ehb demo --fresh``: a new broker, a new world)."""
        with self._mutex:
            self._staged, self._acked = [], []
            self._db.execute("DELETE FROM pending")
            self._db.execute("DELETE FROM marks")
            self.pending_events = 0
            self.recovered_rows = self.recovered_events = 0


def outbox_files(directory: Path) -> list[Path]:
    """The outbox databases under ``directory`` (for ``ehb outbox``)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".sqlite3")


def read_status(path: Path) -> dict[str, float | int | str]:
    """Pending rows/events and the oldest age of an outbox file, read-only (WAL readers do not
    block the producer)."""
    uri = f"file:{os.fspath(path)}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        rows, events, oldest = db.execute(
            "SELECT count(*), coalesce(sum(events), 0), min(accepted_at) FROM pending"
        ).fetchone()
    return {
        "identity": path.stem,
        "rows": rows,
        "events": events,
        "oldest_age_s": round(time.time() - oldest, 1) if oldest else 0.0,
    }
