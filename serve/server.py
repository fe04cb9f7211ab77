"""Running the app: ``serve(repository, port=8000)`` (what ``vmmc serve`` calls).

uvicorn serves the app on one event loop; models run on their replicas' threads. On SIGINT or
SIGTERM the server stops accepting connections, reports not ready, lets requests in flight
(streams included) finish for up to ``server.shutdown_grace_s``, then drains the model queues
and releases the models.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from ai_vmm.serve.app import create_app
from ai_vmm.serve.config import ServeConfig
from ai_vmm.serve.repository import open_repository

LOG = logging.getLogger("ai_vmm.serve")


def serve(
    repository: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | dict[str, Any] | None = None,
    log_level: str = "info",
    access_log: bool | None = None,
    vmm: Any = None,
) -> None:
    """Serve a model repository over HTTP until interrupted.

    Args:
        repository: the model repository directory (see ``ai_vmm.serve.repository``).
        host: the address to bind; ``127.0.0.1`` (default) serves this machine only.
        port: the TCP port (0: any free port; the log line says which).
        config: a config to use instead of the repository's ``serve.toml``.
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        access_log: override ``server.access_log`` (one JSON line per request on stderr).
        vmm: the ``ai_vmm.VMM`` that deploys the models (its store, measuring time,
            telemetry); default: one with deploy's defaults.

    Raises:
        ServeConfigError: the repository or its config is invalid.
    """
    import uvicorn

    repo = open_repository(repository, config)
    if access_log is not None:
        settings = repo.config.server.model_copy(update={"access_log": access_log})
        repo = type(repo)(
            repo.root, repo.config.model_copy(update={"server": settings}), repo.models
        )
    _configure_logging(log_level)
    app = create_app(repo, vmm=vmm)
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # our own structured access log replaces uvicorn's
        timeout_graceful_shutdown=int(max(repo.config.server.shutdown_grace_s, 1)),
        lifespan="on",
    )
    server = _DrainingServer(uv_config, app)
    LOG.info(
        "serving %d model(s) from %s on http://%s:%s",
        len(repo.models),
        repo.root,
        host,
        port,
    )
    server.run()


class _DrainingServer:
    """uvicorn's server, reporting not ready as soon as a shutdown starts."""

    def __init__(self, config: Any, app: Any) -> None:
        import uvicorn

        app_ref = app

        class Server(uvicorn.Server):
            async def shutdown(self, sockets: Any = None) -> None:
                server_state = getattr(app_ref.state, "vmm", None)
                if server_state is not None:
                    server_state.draining = True
                await super().shutdown(sockets=sockets)

        self._server = Server(config)

    def run(self) -> None:
        self._server.run()


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("ai_vmm.serve", "ai_vmm.serve.access"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False


__all__ = ["serve"]
