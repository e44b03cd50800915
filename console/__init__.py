"""The web console of the pipeline (``ehb console``): the campaign's counters, the facilities'
daily-report completeness and the pipeline's throughput for the Department of Health; its
rejected episodes, corrections, daily reports and episode look-up for each facility.

Server-rendered (Starlette + Jinja2, no JavaScript), in Vietnamese and English, reading
PostgreSQL with the rights of the role ehb_console (migration 091_console). Quick start::

    ehb console add-user doh --role operator          # the password is asked for
    ehb console                                       # http://127.0.0.1:8400

Accounts, roles and the access rules: docs/console.md.
"""

from __future__ import annotations

from console.app import create_app
from console.server import serve

__all__ = ["create_app", "serve"]
