"""A restarted worker rejoins its consumer group under the member id of the process it replaces.

A worker killed with ``kill -9`` stays a member of the group until its session times out. A
new process that joins with a fresh member id then waits for that: the coordinator keeps the
dead member, rebalances once its session expires, and Tansu holds the join for another session
timeout on top (measured on Tansu 0.6.0, 6 s sessions, four partitions: 11.3 s from the kill to
the partitions assigned). A process that joins under the dead one's member id *is* that member
rejoining: 3.2 s.

The member id is kept beside the worker's table directory, which one process holds at a time
(``streams.state_store.claim_table_dir``, a lock held for the life of the process): two live
processes never share a member id. A stored id the coordinator no longer knows (its session
expired) is refused with UNKNOWN_MEMBER_ID, and aiokafka then joins as a new member, as
without this. Static membership (``EHB_WORKER_INSTANCE_ID``, Apache Kafka) does the same job
through the protocol and takes precedence: a consumer with a group instance id is left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: group id -> the file of its member id (one group per worker process)
_files: dict[str, Path] = {}
_installed = False


def remember(group_id: str, path: Path) -> None:
    """Rejoin ``group_id`` under the member id kept in ``path`` and keep every new one there.

    ``path`` must belong to this process alone (inside a claimed table directory)."""
    _files[group_id] = path
    _install()


def load(path: Path) -> str | None:
    try:
        member_id = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return member_id or None


def store(path: Path, member_id: str) -> None:
    """Atomically: a crash leaves the old id or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(member_id, encoding="ascii")
    os.replace(tmp, path)


def _install() -> None:
    global _installed
    if _installed:
        return
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    init = GroupCoordinator.__init__
    on_join_complete = GroupCoordinator._on_join_complete

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        path = _files.get(self.group_id)
        if path is None or self._group_instance_id is not None:
            return
        previous = load(path)
        if previous is not None:
            log.info("rejoining group %s as its previous member", self.group_id)
            self.member_id = previous

    async def _on_join_complete(
        self: Any, generation: int, member_id: str, *args: Any, **kwargs: Any
    ) -> None:
        path = _files.get(self.group_id)
        if path is not None and self._group_instance_id is None and load(path) != member_id:
            store(path, member_id)
        await on_join_complete(self, generation, member_id, *args, **kwargs)

    GroupCoordinator.__init__ = __init__
    GroupCoordinator._on_join_complete = _on_join_complete
    _installed = True
