"""The ASGI app: ``create_app(repository)`` builds one server's routes and state.

Nothing lives in module globals: each app owns its model manager, tenant gate and metrics
registry, so tests, several apps in one process, and the Ray Serve replicas of issue 17
(``serve.ingress(create_app(...))``) each get their own. Models load in the background after
start-up; ``/v2/health/ready`` turns true once every eager model has been tried (a model that
failed stays not ready on its own and the server stays up).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ai_vmm.runtime.errors import InputError
from ai_vmm.serve import backend, routes_kserve, routes_openai
from ai_vmm.serve.admission import Rejected
from ai_vmm.serve.allocation import ModelManager
from ai_vmm.serve.batching import BatchStats
from ai_vmm.serve.config import ServeConfig
from ai_vmm.serve.http import (
    EarlyRefusal,
    RequestLog,
    ServerState,
    authenticate,
    error_response,
    state,
)
from ai_vmm.serve.metrics import ServerMetrics
from ai_vmm.serve.repository import Repository, open_repository
from ai_vmm.serve.tenants import TenantGate

LOG = logging.getLogger("ai_vmm.serve")


def create_app(
    repository: str | Path | Repository,
    *,
    config: ServeConfig | dict[str, Any] | None = None,
    vmm: Any = None,
    load: Any = None,
) -> FastAPI:
    """The serving app for a model repository.

    Args:
        repository: the repository directory, or an already opened ``Repository``.
        config: a config to use instead of the repository's ``serve.toml``.
        vmm: the ``ai_vmm.VMM`` that deploys the models (default: one with deploy's defaults).
        load: the model loader (default ``ai_vmm.serve.backend.load_model``).

    Raises:
        ServeConfigError: the repository or its config is invalid (before anything starts).
    """
    repo = repository if isinstance(repository, Repository) else open_repository(repository, config)
    holder: dict[str, ServerState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = ServerMetrics(allocation=lambda: manager.snapshot())
        on_batch = _batch_recorder(metrics)
        loader = load or functools.partial(backend.load_model, vmm=vmm)
        manager = ModelManager(repo, on_batch, loader)
        server = ServerState(repo.config, manager, TenantGate(repo.config), metrics)
        app.state.vmm = server
        holder["state"] = server
        if server.gate.open:
            LOG.warning("no tenants configured: every request is served without an API key")
        loading = asyncio.create_task(_start(server))
        try:
            yield
        finally:
            server.draining = True
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await manager.close()

    app = FastAPI(
        title="ai-vmm serve",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(routes_kserve.router)
    app.include_router(routes_openai.router)
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    app.add_exception_handler(Rejected, _rejected)  # type: ignore[arg-type]
    app.add_exception_handler(InputError, _input_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    # Starlette runs the middleware added last first: RequestLog sees every answer, early
    # refusals included.
    app.add_middleware(EarlyRefusal, get_state=lambda: holder.get("state"))  # type: ignore[arg-type]
    app.add_middleware(RequestLog, get_state=lambda: holder.get("state"))  # type: ignore[arg-type]
    return app


async def _start(server: ServerState) -> None:
    try:
        await server.manager.start()
    except Exception:  # a bug in loading must not keep the server from answering
        LOG.exception("loading the repository's models failed")
    # What start-up left alive (libraries, the models' runtimes: about 143,000 objects) goes to
    # the permanent generation, so that full collections stop walking it: under a flood they
    # ran every second or two and stopped the event loop 64-76 ms each on 2 cores, the whole of
    # a high-priority request's p99 tail (3-5 ms each once frozen). Objects of models unloaded
    # later are freed by reference counting as before; only cycles among them would stay.
    gc.freeze()
    server.started = True
    for row in server.manager.snapshot()["models"]:
        if row["state"] == "FAILED":
            LOG.error("model %s/%s failed to load: %s", row["name"], row["version"], row["reason"])


def _batch_recorder(metrics: ServerMetrics) -> Any:
    def record(stats: BatchStats) -> None:
        metrics.batch_size.labels(stats.model).observe(stats.rows)
        metrics.inference_time.labels(stats.model).observe(stats.seconds)

    return record


async def _metrics(request: Request) -> Response:
    server = state(request)
    if server.config.server.metrics_auth:
        server.gate.require_admin(authenticate(request))
    for versions in server.manager.models.values():
        for served in versions.values():
            if served.batcher is not None:
                for name, count in served.batcher.queued_by_class().items():
                    server.metrics.queue_depth.labels(served.name, name).set(count)
            if served.generator is not None:
                server.metrics.active_sequences.labels(served.name).set(served.generator.active)
    return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")


async def _rejected(request: Request, exc: Rejected) -> Response:
    return error_response(request, exc)


async def _input_error(request: Request, exc: InputError) -> Response:
    return error_response(request, Rejected(400, "bad_input", str(exc)))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = (
        str(exc.detail)
        if exc.status_code not in (404, 405)
        else (f"no route {request.method} {request.url.path}")
    )
    return error_response(request, Rejected(exc.status_code, code, message))


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return error_response(request, Rejected(400, "bad_request", "the request is malformed"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    ctx = request.scope.get("vmm")
    rid = getattr(ctx, "request_id", "-")
    LOG.error("request %s failed", rid, exc_info=exc)
    return error_response(
        request, Rejected(500, "internal_error", f"internal error (request id {rid})")
    )


__all__ = ["create_app"]
