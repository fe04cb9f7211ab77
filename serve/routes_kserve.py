"""KServe v2 routes: health, server and model metadata, readiness, infer, the repository.

The routes wire the protocol (``kserve``) to scheduling (``allocation``, ``batching``): parse,
check the tenant, queue, encode. Paths follow the Open Inference Protocol and Triton's
repository extension, so ``tritonclient.http`` works against them unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ai_vmm import __version__
from ai_vmm.runtime.errors import InputError
from ai_vmm.serve import kserve
from ai_vmm.serve.admission import Rejected
from ai_vmm.serve.allocation import READY, ServedModel
from ai_vmm.serve.http import (
    authenticate,
    authorize,
    context,
    read_body,
    state,
    ticket_for,
)

router = APIRouter()
EXTENSIONS = ["binary_tensor_data", "model_repository", "schedule_policy"]


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    server = state(request)
    is_ready = server.started and not server.draining
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {"name": "ai-vmm", "version": __version__, "extensions": EXTENSIONS}


def _find(request: Request, model: str, version: str | None) -> ServedModel:
    tenant = authenticate(request)
    authorize(request, tenant, model)
    context(request).protocol = "kserve"
    return state(request).manager.find(model, version)


@router.get("/v2/models/{model}")
@router.get("/v2/models/{model}/versions/{version}")
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    served = _find(request, model, version)
    body: dict[str, Any] = {
        "name": model,
        "versions": sorted(state(request).manager.models[model], key=_version_key),
        "platform": "ai-vmm",
    }
    if served.signature is not None:
        body["platform"] = getattr(served.signature, "platform", "ai-vmm")
        if served.spec.kind != "causal-lm":
            body["inputs"] = kserve.tensor_metadata(served.signature.inputs)
            body["outputs"] = kserve.tensor_metadata(served.signature.outputs)
    else:
        body["inputs"], body["outputs"] = [], []
    return JSONResponse(body)


@router.get("/v2/models/{model}/ready")
@router.get("/v2/models/{model}/versions/{version}/ready")
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    served = _find(request, model, version)
    is_ready = served.state == READY
    return JSONResponse(
        {"name": model, "ready": is_ready, "state": served.state},
        status_code=200 if is_ready else 503,
    )


@router.get("/v2/models/{model}/config")
@router.get("/v2/models/{model}/versions/{version}/config")
async def model_config(request: Request, model: str, version: str | None = None) -> Response:
    served = _find(request, model, version)
    config = served.spec.config.model_dump(mode="json", exclude={"source"})
    return JSONResponse({"name": model, "version": served.version, **config})


@router.post("/v2/models/{model}/infer")
@router.post("/v2/models/{model}/versions/{version}/infer")
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    server = state(request)
    ctx = context(request)
    ctx.protocol = "kserve"
    tenant = authenticate(request)
    authorize(request, tenant, model)
    ticket = ticket_for(request, tenant, None)
    with server.gate.admit(tenant):
        async with server.manager.use(model, version) as served:
            batcher = served.batcher
            if batcher is None:
                raise Rejected(
                    400,
                    "wrong_protocol",
                    f"model '{model}' is a causal LM; use /v1/completions or /v1/chat/completions",
                )
            # Refuse before reading and parsing the body what could not be served even as one
            # row: under overload, refusals must stay cheap.
            batcher.precheck(ticket)
            body = await read_body(request)
            header_length = _header_length(request)
            signature = served.signature
            parsed = kserve.parse_infer_request(body, header_length, signature.inputs)
            timeout_us = parsed.parameters.get("timeout")
            if timeout_us is not None:
                if not isinstance(timeout_us, int | float) or isinstance(timeout_us, bool):
                    raise Rejected(400, "bad_deadline", "parameters.timeout is in microseconds")
                ticket = ticket_for(request, tenant, float(timeout_us) / 1e6)
            rows = _rows(parsed.inputs, signature.inputs)
            try:
                signature.check(parsed.inputs)
            except InputError as exc:
                raise Rejected(400, "bad_input", str(exc)) from None
            outputs, item = await batcher.infer(parsed.inputs, rows, ticket)
            ctx.queue_s = item.dispatched_at - item.queued_at
            ctx.infer_s = item.finished_at - item.dispatched_at
            ctx.batch = item.batch_size
            server.metrics.queue_time.labels(model, ctx.tenant).observe(ctx.queue_s)
            payload, json_length = kserve.encode_infer_response(
                model, served.version, parsed, outputs, signature.outputs
            )
            batcher.observe_reply(item)
    headers = {}
    if json_length is not None:
        headers["Inference-Header-Content-Length"] = str(json_length)
        media = "application/octet-stream"
    else:
        media = "application/json"
    return Response(payload, media_type=media, headers=headers)


def _header_length(request: Request) -> int | None:
    value = request.headers.get("inference-header-content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise Rejected(400, "bad_request", "Inference-Header-Content-Length must be a byte count")
    return int(value)


def _rows(inputs: dict[str, Any], specs: Any) -> int:
    for spec in specs:
        if spec.batch_axis:
            array = inputs[spec.name]
            rows = array.shape[0] if array.ndim else 1
            if any(inputs[s.name].shape[:1] != (rows,) for s in specs if s.batch_axis):
                raise Rejected(400, "bad_request", "inputs disagree on the batch size (axis 0)")
            if rows == 0:
                raise Rejected(400, "bad_request", "the batch is empty (axis 0 is 0)")
            return int(rows)
    return 1


def _version_key(version: str) -> int:
    return int(version) if version.isdigit() else -1


@router.post("/v2/repository/index")
@router.get("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    """Triton's repository index, plus where each model is loaded and what it holds."""
    tenant = authenticate(request)
    server = state(request)
    snapshot = server.manager.snapshot()
    allowed = set(server.gate.visible(tenant, [m["name"] for m in snapshot["models"]]))
    rows = [m for m in snapshot["models"] if m["name"] in allowed]
    return JSONResponse(rows)


@router.post("/v2/repository/models/{model}/load")
async def load_model(request: Request, model: str) -> Response:
    server = state(request)
    tenant = authenticate(request)
    server.gate.require_admin(tenant)
    authorize(request, tenant, model)
    for served in server.manager.models.get(model, {}).values():
        await server.manager.load(served)
    served = server.manager.find(model)
    if served.state != READY:
        raise Rejected(400, "load_failed", f"model '{model}' failed to load: {served.reason}")
    return JSONResponse({})


@router.post("/v2/repository/models/{model}/unload")
async def unload_model(request: Request, model: str) -> Response:
    server = state(request)
    tenant = authenticate(request)
    server.gate.require_admin(tenant)
    authorize(request, tenant, model)
    server.manager.find(model)
    for served in server.manager.models[model].values():
        if served.state == READY:
            await server.manager.unload(served)
    return JSONResponse({})


@router.get("/admin/allocation")
async def allocation(request: Request) -> Response:
    """The whole allocation: models, replicas, memory per device, budgets, evictions."""
    server = state(request)
    server.gate.require_admin(authenticate(request))
    snapshot = server.manager.snapshot()
    snapshot["tenants_in_flight"] = server.gate.in_flight()
    snapshot["time"] = time.time()
    return JSONResponse(snapshot)


__all__ = ["router"]
