"""The worker's facility registry: PostgreSQL's ``facilities`` table when reachable (refreshed
periodically by ``streams.app``), else the reference file shipped in ``schemas/reference``."""

from __future__ import annotations

import logging

from ehb.settings import Settings
from schemas.errors import EhbError
from schemas.reference import FacilityRegistry

__all__ = ["initial_registry"]

log = logging.getLogger(__name__)


def initial_registry(settings: Settings) -> FacilityRegistry:
    from ehb.db import connect, fetch_facilities

    try:
        conn = connect(settings, timeout=10, application_name="ehb-worker-registry")
    except EhbError as exc:
        log.warning("facility registry from the reference file (%s)", exc)
        return FacilityRegistry.from_reference()
    try:
        facilities = fetch_facilities(conn)
    except Exception as exc:  # table not migrated yet
        log.warning("facility registry from the reference file (%s)", type(exc).__name__)
        return FacilityRegistry.from_reference()
    finally:
        conn.close()
    return FacilityRegistry(facilities) if facilities else FacilityRegistry.from_reference()
