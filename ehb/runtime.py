"""Process-level tuning of the long-running services (stream worker, sink).

Python's cyclic garbage collector runs a young-generation pass every 700 container
allocations by default and, every few of those, an older-generation pass that walks every
object that survived. A worker allocates dozens of dicts and lists per event and keeps a
large, slowly growing heap (Faust, the citizens table), so with the defaults it spends about
a third of its time in the collector (figures: benchmarks/README.md). Reference counting still
frees nearly everything at once; the threshold only spaces out the passes that look for
reference cycles, at the cost of a few MB of cyclic garbage living a little longer.

glibc's malloc gives every thread that allocates an arena of its own (up to 8 per core), and
an arena's freed memory mostly stays resident: the worker's native threads (RocksDB's
flushes and compactions, librdkafka's) each kept 30-65 MB of them. ``limit_malloc_arenas``
caps their number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

__all__ = ["limit_malloc_arenas", "tune_gc"]

#: glibc's mallopt parameter for the number of arenas
_M_ARENA_MAX = -8

log = logging.getLogger(__name__)


def tune_gc(young_threshold: int) -> None:
    """Freeze what start-up allocated and space out the collector's passes.

    ``young_threshold`` 0 leaves Python's defaults. Call it once the service is built and
    before it starts processing: ``gc.freeze()`` moves every object alive at that point
    (modules, settings, registries, the app) out of the collector's sight for good.
    """
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, max(middle, 20), max(old, 100))
    log.debug("gc thresholds %s, %d objects frozen", gc.get_threshold(), gc.get_freeze_count())


def limit_malloc_arenas(arenas: int) -> bool:
    """At most ``arenas`` malloc arenas for the process (glibc; 0 keeps glibc's default).

    Call it before the service starts its threads. Returns whether it applied.
    """
    if arenas <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        applied = bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc
        applied = False
    log.debug("malloc arenas limited to %d: %s", arenas, applied)
    return applied
