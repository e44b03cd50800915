"""``ehb gateway DIR``: the XML dossier gateway between hospital systems and the pipeline.

A facility's HIS drops QĐ 130/4750 envelope files (parsed by :mod:`producers.dossier`) into a
directory; the gateway publishes each file's episodes whole or not at all, as ONE
``ExaminationBatch`` message keyed by the facility, marks the file done only once the broker
has acknowledged it, and never publishes the same content twice (a SQLite ledger keyed by the
content's SHA-256, checked again after a crash). The full description (the drop directory,
the ledger and its recovery, the size limits, the rejection reasons) is docs/gateway.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from rich.console import Console
from rich.markup import escape

from ehb.exceptions import ServiceUnavailable
from ehb.kafka import consumer_config, position, producer_config
from ehb.settings import Settings
from producers.dossier import Limits, parse_dossier
from producers.errors import BatchTooLarge, DossierRejected, GatewayError
from producers.publisher import ExaminationPublisher
from producers.withdrawals import is_withdrawal_list, parse_withdrawals
from schemas.partitioning import partition_for
from schemas.reasons import REASON_CODES, Language
from schemas.registry import codec_for
from schemas.time import VN_TZ
from schemas.topics import EXAMINATIONS

__all__ = [
    "Gateway",
    "GatewayError",
    "GatewayReport",
    "Ledger",
    "Outcome",
    "HASH_HEADER",
    "MAX_MESSAGE_BYTES",
    "complete_files",
    "print_report",
    "publish_dossier_file",
    "reason_note",
    "run_gateway",
]

log = logging.getLogger(__name__)

HASH_HEADER = "ehb-dossier-sha256"
MAX_MESSAGE_BYTES = 900_000
LOCK_FILE = ".ehb-gateway.lock"


@dataclass
class Outcome:
    """What became of one file. ``status``: published, empty (no episode), skipped (already
    published), rejected."""

    file: str
    status: str
    sha256: str | None = None
    facility: str | None = None
    episodes: int = 0
    reason: str | None = None
    detail: str | None = None
    moved_to: Path | None = None


@dataclass
class GatewayReport:
    outcomes: list[Outcome] = field(default_factory=list)
    #: files left in place because they were still being written
    waiting: list[str] = field(default_factory=list)
    recovered: int = 0
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def episodes(self) -> int:
        return sum(o.episodes for o in self.outcomes if o.status == "published")

    def summary(self) -> dict[str, Any]:
        published = self.count("published")
        return {
            "files": len(self.outcomes),
            "published": published,
            "episodes": self.episodes,
            "empty": self.count("empty"),
            "skipped_already_published": self.count("skipped"),
            "rejected": dict(Counter(o.reason for o in self.outcomes if o.status == "rejected")),
            "waiting": len(self.waiting),
            "recovered_after_crash": self.recovered,
            "seconds": round(self.seconds, 3),
            "dossiers_per_second": round(published / self.seconds, 1) if self.seconds else None,
            "episodes_per_second": round(self.episodes / self.seconds, 1) if self.seconds else None,
        }


# -- the ledger ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerEntry:
    topic: str
    sha256: str
    file: str
    state: str
    partition: int | None
    scan_from: int | None
    offset: int | None


class Ledger:
    """Which file contents went to which topic: SQLite, WAL, synchronous=FULL."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS dossiers (
            topic TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            file TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'rejected')),
            facility TEXT,
            episodes INTEGER,
            partition INTEGER,
            scan_from INTEGER,
            "offset" INTEGER,
            reason TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (topic, sha256)
        )"""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(self._SCHEMA)

    @classmethod
    def for_settings(cls, settings: Settings) -> Ledger:
        return cls(settings.state_dir / "gateway" / "ledger.sqlite3")

    def get(self, topic: str, sha256: str) -> LedgerEntry | None:
        row = self._db.execute(
            'SELECT topic, sha256, file, state, partition, scan_from, "offset" FROM dossiers '
            "WHERE topic = ? AND sha256 = ?",
            (topic, sha256),
        ).fetchone()
        return LedgerEntry(*row) if row else None

    def pending(self, topic: str) -> list[LedgerEntry]:
        rows = self._db.execute(
            'SELECT topic, sha256, file, state, partition, scan_from, "offset" FROM dossiers '
            "WHERE topic = ? AND state = 'pending' ORDER BY updated_at",
            (topic,),
        ).fetchall()
        return [LedgerEntry(*row) for row in rows]

    def _upsert(self, topic: str, sha256: str, file: str, state: str, **values: Any) -> None:
        columns = {
            "facility": None,
            "episodes": None,
            "partition": None,
            "scan_from": None,
            "offset": None,
            "reason": None,
            **values,
        }
        self._db.execute(
            "INSERT OR REPLACE INTO dossiers (topic, sha256, file, state, facility, episodes, "
            'partition, scan_from, "offset", reason, updated_at) '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                topic,
                sha256,
                file,
                state,
                columns["facility"],
                columns["episodes"],
                columns["partition"],
                columns["scan_from"],
                columns["offset"],
                columns["reason"],
                datetime.now(UTC).isoformat(),
            ),
        )

    def begin(
        self,
        topic: str,
        sha256: str,
        file: str,
        *,
        facility: str,
        episodes: int,
        partition: int,
        scan_from: int,
    ) -> None:
        self._upsert(
            topic,
            sha256,
            file,
            "pending",
            facility=facility,
            episodes=episodes,
            partition=partition,
            scan_from=scan_from,
        )

    def done(
        self,
        topic: str,
        sha256: str,
        file: str,
        *,
        facility: str | None = None,
        episodes: int = 0,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self._upsert(
            topic,
            sha256,
            file,
            "done",
            facility=facility,
            episodes=episodes,
            partition=partition,
            offset=offset,
        )

    def confirm(self, topic: str, sha256: str, offset: int) -> None:
        self._db.execute(
            "UPDATE dossiers SET state = 'done', \"offset\" = ?, updated_at = ? "
            "WHERE topic = ? AND sha256 = ?",
            (offset, datetime.now(UTC).isoformat(), topic, sha256),
        )

    def rejected(self, topic: str, sha256: str, file: str, reason: str) -> None:
        self._upsert(topic, sha256, file, "rejected", reason=reason)

    def forget(self, topic: str, sha256: str) -> None:
        self._db.execute("DELETE FROM dossiers WHERE topic = ? AND sha256 = ?", (topic, sha256))

    def close(self) -> None:
        self._db.close()


# -- the topic, as the gateway needs it ---------------------------------------------------
class _TopicProbe:
    """Partition of a facility, a lower bound of the next offset, and the crash-recovery scan."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer(consumer_config(settings, "ehb-gateway-probe"))
        metadata = self._consumer.list_topics(timeout=15).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            self._consumer.close()
            raise ServiceUnavailable(f"topic {topic} does not exist (run `ehb topics`)")
        self.partitions = len(metadata.partitions)
        self._next: dict[int, int] = {}

    def partition_of(self, facility: str) -> int:
        return partition_for(facility.encode(), self.partitions)

    def _high(self, partition: int) -> int:
        return int(
            self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=15)[
                1
            ]
        )

    def next_offset_bound(self, partition: int) -> int:
        """An offset not above the one the next message to ``partition`` will get."""
        if partition not in self._next:
            self._next[partition] = self._high(partition)
        return self._next[partition]

    def delivered(self, partition: int, offset: int) -> None:
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def find(self, partition: int, start: int, sha256: str, timeout: float = 60.0) -> int | None:
        """Offset of the message carrying ``sha256`` in [start, end of partition), or None."""
        end = self._high(partition)
        if start >= end:
            return None
        wanted = sha256.encode()
        self._consumer.assign([TopicPartition(self.topic, partition, start)])
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for message in self._consumer.consume(500, 0.5):
                    if message.error():
                        continue
                    _, _, offset = position(message)
                    if (HASH_HEADER, wanted) in (message.headers() or []):
                        return offset
                    if offset + 1 >= end:
                        return None
        finally:
            self._consumer.unassign()
        raise GatewayError(
            f"could not read {self.topic}[{partition}] up to offset {end} "
            f"within {timeout:.0f}s to check an unconfirmed dossier"
        )

    def close(self) -> None:
        self._consumer.close()


# -- files ----------------------------------------------------------------------------------
def complete_files(
    directory: Path, settle_s: float, now: float | None = None
) -> tuple[list[Path], list[Path]]:
    """(complete, still being written) ``*.xml`` files directly in ``directory``, by name."""
    now = time.time() if now is None else now
    complete: list[Path] = []
    growing: list[Path] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".xml":
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if not path.is_file():
            continue
        (complete if now - stat.st_mtime >= settle_s else growing).append(path)
    return complete, growing


def _move(path: Path, subdir: str, sha256: str | None) -> Path:
    target = path.parent / subdir
    target.mkdir(exist_ok=True)
    dest = target / path.name
    n = 0
    while dest.exists():  # never overwrite an earlier file of the same name
        n += 1
        tag = (sha256 or "unreadable")[:12] + (f"-{n}" if n > 1 else "")
        dest = target / f"{path.stem}.{tag}{path.suffix}"
    os.replace(path, dest)
    return dest


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    with open(directory / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GatewayError(f"another gateway is working on {directory}") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- the gateway ------------------------------------------------------------------------------
class Gateway:
    """Publishes dossier files; see the module docstring. Not thread-safe: one per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        limits: Limits | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        ledger: Ledger | None = None,
        publisher: ExaminationPublisher | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits or Limits()
        self.max_message_bytes = max_message_bytes
        self.codec = codec_for(settings)
        self.topic = settings.topic(EXAMINATIONS)
        self._probe = _TopicProbe(settings, self.topic)
        self.ledger = ledger or Ledger.for_settings(settings)
        self.publisher = publisher or self._publisher(settings)
        self._given_up: set[tuple[str, int, float]] = set()

    def _publisher(self, settings: Settings) -> ExaminationPublisher:
        # one message, then wait for its acknowledgement: lingering would only add latency.
        # Through the producer outbox like every publisher (``gateway`` identity): a dossier
        # the outbox resends after a crash is acknowledged before the ledger's recovery scan
        # (see :meth:`recover`), so the scan finds it instead of publishing the file again.
        return ExaminationPublisher(
            settings,
            codec=self.codec,
            linger_s=0,
            identity="gateway",
            producer=Producer(producer_config(settings, **{"linger.ms": 0})),
        )

    # -- crash recovery -------------------------------------------------------------------
    def recover(self) -> int:
        """Settle ``pending`` ledger entries left by a gateway that died; returns how many
        turned out to be published."""
        confirmed = 0
        self._await_ack()  # what the outbox resent at start is on the topic before the scan
        for entry in self.ledger.pending(self.topic):
            assert entry.partition is not None and entry.scan_from is not None
            offset = self._probe.find(entry.partition, entry.scan_from, entry.sha256)
            if offset is None:
                log.info("dossier %s was not published before the restart; it will be", entry.file)
                self.ledger.forget(self.topic, entry.sha256)
            else:
                log.info(
                    "dossier %s was published (offset %d) before the restart", entry.file, offset
                )
                self.ledger.confirm(self.topic, entry.sha256, offset)
                confirmed += 1
        return confirmed

    # -- one file ---------------------------------------------------------------------------
    def publish_file(self, path: Path, *, move: bool = True) -> Outcome:
        """Publish one dossier file; never raises for a bad file (see :class:`Outcome`)."""
        name = path.name
        data = self._read(path, move)
        if isinstance(data, Outcome):
            return data
        sha256 = hashlib.sha256(data).hexdigest()
        entry = self.ledger.get(self.topic, sha256)
        if entry is not None and entry.state == "done":
            return Outcome(
                name,
                "skipped",
                sha256,
                detail=f"already published as {entry.file}",
                moved_to=self._done(path, sha256) if move else None,
            )
        if is_withdrawal_list(data):
            try:
                facility, withdrawals = parse_withdrawals(data)
            except DossierRejected as exc:
                return self._reject(path, sha256, exc.reason, exc.message, move)
            if not withdrawals:
                self.ledger.done(self.topic, sha256, name, facility=facility)
                return Outcome(
                    name,
                    "empty",
                    sha256,
                    facility,
                    moved_to=self._done(path, sha256) if move else None,
                )
            return self._publish_events(
                path, sha256, facility, withdrawals, move, self.publisher.publish_withdrawals
            )
        try:
            dossier = parse_dossier(data, self.limits, self.codec.catalog)
        except DossierRejected as exc:
            return self._reject(path, sha256, exc.reason, exc.message, move)
        facility, events = dossier.facility, dossier.events
        if not events:  # a day without episodes: nothing to publish
            self.ledger.done(self.topic, sha256, name, facility=facility)
            return Outcome(
                name, "empty", sha256, facility, moved_to=self._done(path, sha256) if move else None
            )
        return self._publish_events(path, sha256, facility, events, move)

    def _read(self, path: Path, move: bool) -> bytes | Outcome:
        """The file's bytes, or its rejection when it cannot be read or is over the limit."""
        limit = self.limits.max_file_bytes
        try:
            with open(path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                data = src.read(limit + 1) if size <= limit else b""
        except OSError as exc:
            return self._reject(path, None, "file_unreadable", exc.strerror or str(exc), move)
        if size > limit:
            return self._reject(path, None, "file_too_large", f"{size} bytes (limit {limit})", move)
        return data

    def _publish_events(
        self,
        path: Path,
        sha256: str,
        facility: str,
        events: list[dict[str, Any]],
        move: bool,
        publish: Callable[..., int] | None = None,
    ) -> Outcome:
        """One parsed dossier's events (or a HUYHOSO file's withdrawals, with ``publish``) as
        one message: in the ledger, sent, acknowledged."""
        name = path.name
        partition = self._probe.partition_of(facility)
        self.ledger.begin(
            self.topic,
            sha256,
            name,
            facility=facility,
            episodes=len(events),
            partition=partition,
            scan_from=self._probe.next_offset_bound(partition),
        )
        report: list[tuple[KafkaError | None, Message]] = []
        try:
            (publish or self.publisher.publish_batch)(
                facility,
                events,
                max_bytes=self.max_message_bytes,
                headers=[(HASH_HEADER, sha256.encode())],
                on_delivery=lambda err, msg: report.append((err, msg)),
            )
        except BatchTooLarge as exc:
            self.ledger.forget(self.topic, sha256)
            return self._reject(
                path, sha256, "dossier_too_large", f"{len(events)} episodes, {exc}", move
            )
        self._await_ack()
        self._after_ack(name, path, sha256, facility, len(events), partition, report)
        err, msg = report[0]
        if err is not None:
            return self._reject(
                path,
                sha256,
                "dossier_too_large",
                f"{len(events)} episodes; the broker refused it: {err.str()}",
                move,
            )
        self.ledger.done(
            self.topic,
            sha256,
            name,
            facility=facility,
            episodes=len(events),
            partition=msg.partition(),
            offset=msg.offset(),
        )
        return Outcome(
            name,
            "published",
            sha256,
            facility,
            len(events),
            moved_to=self._done(path, sha256) if move else None,
        )

    def _done(self, path: Path, sha256: str) -> Path | None:
        try:
            return _move(path, "done", sha256)
        except OSError as exc:  # the ledger already knows: it is skipped when seen again
            log.error("cannot move %s to done/: %s", path.name, exc)
            self._remember_given_up(path)
            return None

    def _await_ack(self) -> None:
        # message.timeout.ms=0: a broker outage is waited out here, not turned into a loss
        while self.publisher.flush(5.0):
            log.warning("waiting for the broker to acknowledge a dossier")

    def _after_ack(
        self,
        name: str,
        path: Path,
        sha256: str,
        facility: str,
        episodes: int,
        partition: int,
        report: list[tuple[KafkaError | None, Message]],
    ) -> None:
        """Hook between the acknowledgement and the ledger (tests simulate a crash here)."""
        assert len(report) == 1
        err, msg = report[0]
        if err is None:
            _, delivered_to, offset = position(msg)
            if delivered_to != partition:  # the recovery scan would look in the wrong place
                raise GatewayError(
                    f"{name}: delivered to partition {delivered_to}, "
                    f"expected {partition} (partitioner mismatch)"
                )
            self._probe.delivered(partition, offset)
            return
        self.ledger.forget(self.topic, sha256)
        if err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
            raise GatewayError(
                f"{name}: the broker refused the dossier of {facility} "
                f"({episodes} episodes): {err.str()}; the file stays in place"
            )

    def _reject(
        self, path: Path, sha256: str | None, reason: str, detail: str, move: bool
    ) -> Outcome:
        name = path.name
        log.warning("dossier %s rejected: %s (%s)", name, reason, detail)
        if sha256 is not None:
            self.ledger.rejected(self.topic, sha256, name, reason)
        moved = None
        if move:
            try:
                moved = _move(path, "rejected", sha256)
                moved.with_name(moved.name + ".reason.txt").write_text(
                    reason_note(name, reason, detail, sha256, datetime.now(VN_TZ)),
                    encoding="utf-8",
                )
            except OSError as exc:
                log.error("cannot move %s aside: %s; it is skipped until it changes", name, exc)
                self._remember_given_up(path)
        return Outcome(name, "rejected", sha256, reason=reason, detail=detail, moved_to=moved)

    def _remember_given_up(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            stat = path.stat()
            self._given_up.add((path.name, stat.st_size, stat.st_mtime))

    def _given_up_on(self, path: Path) -> bool:
        try:
            stat = path.stat()
        except OSError:
            return True
        return (path.name, stat.st_size, stat.st_mtime) in self._given_up

    # -- a directory ------------------------------------------------------------------------
    def run(
        self,
        directory: Path,
        *,
        watch: bool = False,
        interval: float = 2.0,
        settle_s: float = 2.0,
        stop: threading.Event | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        on_found: Callable[[int], None] | None = None,
    ) -> GatewayReport:
        """Publish the complete files of ``directory``; with ``watch``, until ``stop`` is set.

        Without ``watch``, files still being written are waited for (up to ``settle_s`` + 30 s)
        and then reported in ``waiting``. ``on_found(n)`` is told how many files are known.
        """
        if not directory.is_dir():
            raise GatewayError(f"{directory} is not a directory")
        stop = stop or threading.Event()
        report = GatewayReport()
        started = time.monotonic()
        deadline = started + settle_s + 30
        seen: set[str] = set()
        with _directory_lock(directory):
            report.recovered = self.recover()
            while not stop.is_set():
                complete, growing = complete_files(directory, settle_s)
                complete = [p for p in complete if not self._given_up_on(p)]
                new = {p.name for p in complete + growing} - seen
                if new and on_found is not None:
                    seen |= new
                    on_found(len(seen))
                for path in complete:
                    if stop.is_set():
                        break
                    outcome = self.publish_file(path)
                    report.outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)
                if not watch and not complete and (not growing or time.monotonic() > deadline):
                    report.waiting = [p.name for p in growing]
                    break
                if watch or growing:
                    stop.wait(interval if watch else min(interval, max(settle_s, 0.05)))
        report.seconds = time.monotonic() - started
        return report

    def close(self) -> None:
        self.publisher.close()
        self._probe.close()
        self.ledger.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- command-line front ends ------------------------------------------------------------------
def run_gateway(
    settings: Settings,
    directory: Path,
    *,
    watch: bool = False,
    interval: float = 2.0,
    settle_s: float = 2.0,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    limits: Limits | None = None,
    console: Console | None = None,
    stop: threading.Event | None = None,
) -> GatewayReport:
    """``ehb gateway``: a progress bar (one-shot) or a line per file (watch), then a summary.
    In watch mode SIGINT/SIGTERM stop it after the file in hand."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    if watch and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    bar = Progress(
        TextColumn("dossiers"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[episodes]} episodes"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=watch,
    )
    task = bar.add_task("files", total=None, episodes=0)
    episodes = 0

    def on_outcome(outcome: Outcome) -> None:
        nonlocal episodes
        episodes += outcome.episodes if outcome.status == "published" else 0
        bar.update(task, advance=1, episodes=episodes)
        if outcome.status == "rejected":
            # file names and details are the facilities' text: never read as markup
            console.print(
                f"[red]rejected[/] {escape(outcome.file)}: {outcome.reason} "
                f"({escape(outcome.detail or '')})"
            )
        elif watch:
            console.print(
                f"{outcome.status} {outcome.file}: {outcome.episodes} episodes"
                + (f" ({outcome.detail})" if outcome.detail else ""),
                markup=False,
                highlight=False,
            )

    with Gateway(settings, limits=limits, max_message_bytes=max_message_bytes) as gateway, bar:
        if watch:
            console.print(f"watching {directory} every {interval:g}s (Ctrl-C to stop)")
        return gateway.run(
            directory,
            watch=watch,
            interval=interval,
            settle_s=settle_s,
            stop=stop,
            on_outcome=on_outcome,
            on_found=lambda n: bar.update(task, total=n),
        )


#: the labels of the meaning and the fix in ``NAME.reason.txt``, Vietnamese first
_NOTE_LABELS: dict[Language, tuple[str, str]] = {
    "vi": ("ý nghĩa", "cách khắc phục"),
    "en": ("meaning", "fix"),
}


def reason_note(
    file: str, reason: str, detail: str, sha256: str | None, rejected_at: datetime
) -> str:
    """The text of ``NAME.reason.txt`` beside a rejected file, one ``key: value`` a line: the
    file and reason code, what the code means and what to fix in Vietnamese (the language of
    the people who fix the data at the facility), then in English, the parser's detail, the
    content's SHA-256 and when it was rejected (Vietnam time)."""
    code = REASON_CODES[reason]
    lines = [f"file: {file}", f"reason: {reason}"]
    for language, (meaning_label, fix_label) in _NOTE_LABELS.items():
        meaning, fix = code.text(language)
        lines += [f"{meaning_label}: {meaning}", f"{fix_label}: {fix}"]
    lines += [
        f"detail: {detail}",
        f"sha256: {sha256 or '-'}",
        f"rejected_at: {rejected_at.astimezone(VN_TZ).isoformat()}",
    ]
    return "\n".join(lines) + "\n"


def print_report(report: GatewayReport, console: Console) -> None:
    from rich.table import Table

    summary = report.summary()
    table = Table("gateway", "", show_header=False)
    for label, value in (
        ("files", summary["files"]),
        ("published", summary["published"]),
        ("episodes", summary["episodes"]),
        ("empty (no episode)", summary["empty"]),
        ("already published", summary["skipped_already_published"]),
        ("rejected", sum(summary["rejected"].values())),
        ("seconds", summary["seconds"]),
        ("dossiers/s", summary["dossiers_per_second"]),
        ("episodes/s", summary["episodes_per_second"]),
    ):
        table.add_row(label, "-" if value is None else str(value))
    console.print(table)
    for reason, n in sorted(summary["rejected"].items()):
        code = REASON_CODES[reason]
        console.print(f"  rejected {reason}: {n} ({code.fix_vi} / {code.fix})", markup=False)
    if report.waiting:
        console.print(f"  still being written, left in place: {', '.join(report.waiting)}")
    if report.recovered:
        console.print(f"  {report.recovered} dossier(s) found published after a crash")


def publish_dossier_file(settings: Settings, path: Path) -> Outcome:
    """``ehb publish FILE.xml``: one dossier through the gateway path (ledger included); the
    file stays where it is."""
    with Gateway(settings) as gateway:
        gateway.recover()
        return gateway.publish_file(path, move=False)
