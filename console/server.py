"""Serving the console with uvicorn: on ``EHB_CONSOLE_HOST:EHB_CONSOLE_PORT`` (loopback by
default), until SIGINT/SIGTERM."""

from __future__ import annotations

import uvicorn

from console.app import create_app
from ehb.settings import Settings

__all__ = ["serve"]


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host or settings.console_host,
        port=port if port is not None else settings.console_port,
        log_config=None,  # the process's own logging (ehb.logs): one line per record
        access_log=True,
        server_header=False,
        # X-Forwarded-For is believed only from a proxy on this machine
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )
    try:
        uvicorn.Server(config).run()
    finally:
        app.state.database.close()
