"""What every route shares: the server state, request ids and access logs, bodies, errors.

``RequestContext`` travels with each request (in the ASGI scope): the routes fill in the
tenant, model and protocol, the middleware turns it into an access-log line, the metrics and
the ``X-Request-Id`` header. ``EarlyRefusal`` answers, from the headers alone, the infer
requests that quotas or admission would refuse, before routing. Errors are ``Rejected``
exceptions; ``error_response`` gives them the shape of the protocol the request came in on
(OpenAI's under ``/v1``, KServe's elsewhere).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ai_vmm.serve import kserve, openai_protocol
from ai_vmm.serve.admission import Rejected, Ticket, make_ticket
from ai_vmm.serve.allocation import READY, ModelManager
from ai_vmm.serve.config import MODEL_NAME, ServeConfig, Tenant
from ai_vmm.serve.metrics import ServerMetrics
from ai_vmm.serve.tenants import TenantGate, tenant_name

ACCESS_LOG = logging.getLogger("ai_vmm.serve.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TIMEOUT_HEADER = "x-request-timeout-ms"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class ServerState:
    """Everything the routes need, built once per app (no module globals)."""

    config: ServeConfig
    manager: ModelManager
    gate: TenantGate
    metrics: ServerMetrics
    started: bool = False
    draining: bool = False
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class RequestContext:
    """What the access log and the metrics say about one request."""

    request_id: str
    arrival: float
    protocol: str = "http"
    tenant: str = "-"
    model: str = "-"
    reason: str = ""
    queue_s: float | None = None
    infer_s: float | None = None
    batch: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def context(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope["vmm"]
    return ctx


def state(request: Request) -> ServerState:
    server: ServerState = request.app.state.vmm
    return server


class RequestLog:
    """ASGI middleware: request ids, access-log lines and per-request metrics.

    Pure ASGI (not ``BaseHTTPMiddleware``) so streamed responses pass through untouched and
    the latency is measured at the last byte sent.
    """

    def __init__(self, app: ASGIApp, get_state: Callable[[], ServerState | None]) -> None:
        self.app = app
        self._state = get_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        ctx = RequestContext(rid, time.monotonic())
        scope["vmm"] = ctx
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                # Server-Timing (a W3C header): time from arrival to the response's start, and
                # the queue wait, so clients can tell the server's time from the network's.
                timing = f"app;dur={(time.monotonic() - ctx.arrival) * 1000:.2f}"
                if ctx.queue_s is not None:
                    timing += f", queue;dur={ctx.queue_s * 1000:.2f}"
                if ctx.infer_s is not None:
                    timing += f", infer;dur={ctx.infer_s * 1000:.2f}"
                headers.append((b"server-timing", timing.encode()))
                message["headers"] = headers
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._finish(scope, ctx, status)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            self._finish(scope, ctx, 500)
            raise

    def _finish(self, scope: Scope, ctx: RequestContext, status: int) -> None:
        elapsed = time.monotonic() - ctx.arrival
        server = self._state()
        if server is not None and ctx.model != "-":
            m = server.metrics
            m.requests.labels(ctx.model, ctx.tenant, ctx.protocol, str(status)).inc()
            if status >= 400:
                m.failures.labels(ctx.model, ctx.tenant, ctx.reason or str(status)).inc()
            else:
                m.latency.labels(ctx.model, ctx.tenant).observe(elapsed)
        if server is None or server.config.server.access_log:
            record: dict[str, Any] = {
                "ts": round(time.time(), 3),
                "request_id": ctx.request_id,
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "ms": round(elapsed * 1000, 2),
                "tenant": ctx.tenant,
                "model": ctx.model,
            }
            for key in (
                "reason",
                "queue_s",
                "infer_s",
                "batch",
                "prompt_tokens",
                "completion_tokens",
            ):
                value = getattr(ctx, key)
                if value not in (None, ""):
                    record[key] = round(value, 4) if isinstance(value, float) else value
            ACCESS_LOG.info(json.dumps(record, separators=(",", ":")))


_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


class EarlyRefusal:
    """ASGI middleware: refuse from the headers alone what the infer route would refuse anyway.

    Under overload most requests are refused; through the whole framework (routing, the
    endpoint, exception handlers) each refusal cost the event loop about as much as the
    requests it serves, and every request waited behind that work. Here a request whose
    tenant's quota is spent (429), whose class queue is full, or which could not finish by its
    deadline even as one row (503) is answered before routing, from the key, the path and the
    timeout header, without reading the body. The check takes nothing (a refused request is not
    charged to the tenant's rate); anything it cannot decide (no valid key, an unknown or
    unready model, a malformed header) goes on to the route, which checks everything again.
    The OpenAI routes name their model in the body, so there only the tenant's own quota is
    decided from the headers (an OpenAI-shaped 429).
    """

    def __init__(self, app: ASGIApp, get_state: Callable[[], ServerState | None]) -> None:
        self.app = app
        self._state = get_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            match = _INFER_PATH.match(scope.get("path", ""))
            server = self._state()
            if match and server is not None and server.started:
                refusal = _early_refusal(server, scope, match.group(1), match.group(2))
                if refusal is not None:
                    await _send_refusal(send, refusal)
                    return
            elif scope.get("path") in _OPENAI_PATHS and server is not None and server.started:
                refusal = _early_quota_refusal(server, scope)
                if refusal is not None:
                    await _send_refusal(send, refusal, openai=True)
                    return
        await self.app(scope, receive, send)


def _early_refusal(
    server: ServerState, scope: Scope, model: str, version: str | None
) -> Rejected | None:
    try:
        tenant = _key_holder(server, scope)
        server.gate.authorize(tenant, model)
        served = server.manager.find(model, version)
        if served.batcher is None or served.state != READY:
            return None
        ctx = scope.get("vmm")
        ticket = _ticket(
            server,
            tenant,
            _header(scope, TIMEOUT_HEADER.encode()),
            None,
            ctx.arrival if isinstance(ctx, RequestContext) else None,
        )
    except Rejected:
        return None  # the route answers these, with the whole request to go on
    try:
        server.gate.check_quota(tenant)
        served.batcher.precheck(ticket)
    except Rejected as refusal:
        if isinstance(ctx, RequestContext):
            ctx.tenant, ctx.model, ctx.protocol = tenant_name(tenant), model, "kserve"
            ctx.reason = refusal.code
        return refusal
    return None


def _early_quota_refusal(server: ServerState, scope: Scope) -> Rejected | None:
    """The OpenAI routes name their model in the body: from the headers, only the tenant's
    own quota (requests/s, concurrency) can be decided; the route does everything else."""
    try:
        tenant = _key_holder(server, scope)
    except Rejected:
        return None  # the route answers, OpenAI-shaped
    try:
        server.gate.check_quota(tenant)
    except Rejected as refusal:
        ctx = scope.get("vmm")
        if isinstance(ctx, RequestContext):
            ctx.tenant, ctx.protocol, ctx.reason = tenant_name(tenant), "openai", refusal.code
        return refusal
    return None


async def _send_refusal(send: Send, refusal: Rejected, openai: bool = False) -> None:
    error = openai_protocol.error_body(refusal) if openai else kserve.error_body(refusal.message)
    body = json.dumps(error).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in refusal.headers().items()),
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _key_holder(server: ServerState, scope: Scope) -> Tenant | None:
    """The tenant whose key the request carries (``Rejected`` 401 without a valid one): for the
    routes and ``EarlyRefusal`` alike."""
    return server.gate.authenticate(_header(scope, b"authorization"), _header(scope, b"api-key"))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def error_response(request: Request, error: Rejected) -> Response:
    """``error`` in the shape of the request's protocol, with ``Retry-After`` where it helps."""
    ctx = request.scope.get("vmm")
    if isinstance(ctx, RequestContext):
        ctx.reason = error.code
    headers = error.headers()
    if request.url.path.startswith("/v1/"):
        body: dict[str, Any] = openai_protocol.error_body(error)
    else:
        body = kserve.error_body(error.message)
    return JSONResponse(body, status_code=error.status, headers=headers)


def authenticate(request: Request) -> Tenant | None:
    """The calling tenant (401 without a valid key); records it for the access log."""
    tenant = _key_holder(state(request), request.scope)
    context(request).tenant = tenant_name(tenant)
    return tenant


def check_model_name(name: str) -> str:
    """400 for a model name that could never be one (slashes, dots first, control bytes)."""
    if not MODEL_NAME.match(name):
        raise Rejected(
            400,
            "invalid_model_name",
            "model names are 1-128 characters of letters, digits, '.', '_' and '-', starting "
            "with a letter or digit",
            param="model",
        )
    return name


def authorize(request: Request, tenant: Tenant | None, model: str) -> None:
    check_model_name(model)
    state(request).gate.authorize(tenant, model)
    context(request).model = model


def ticket_for(request: Request, tenant: Tenant | None, extra_timeout_s: float | None) -> Ticket:
    """The request's class, rank and deadline (its own timeout can only shorten the class's)."""
    return _ticket(
        state(request),
        tenant,
        request.headers.get(TIMEOUT_HEADER),
        extra_timeout_s,
        context(request).arrival,
    )


def _ticket(
    server: ServerState,
    tenant: Tenant | None,
    header: str | None,
    extra_timeout_s: float | None,
    arrival: float | None,
) -> Ticket:
    """``ticket_for`` from its parts: the one way both the route and ``EarlyRefusal`` make a
    ticket, so that the two agree on the class and the deadline."""
    class_name = server.config.server.default_class if tenant is None else tenant.priority_class
    requested = extra_timeout_s
    if header is not None:
        try:
            header_s = float(header) / 1000.0
        except ValueError:
            raise Rejected(400, "bad_deadline", f"{TIMEOUT_HEADER} must be milliseconds") from None
        requested = header_s if requested is None else min(requested, header_s)
    # The deadline counts from arrival, not from when the body was read.
    return make_ticket(class_name, server.config.classes[class_name], requested, arrival)


async def read_body(request: Request) -> bytes:
    """The request body, decompressed, refused with 413 beyond ``server.max_body_bytes``."""
    limit = state(request).config.server.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise Rejected(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported"
        )
    # wbits 47: zlib or gzip framing; max_length stops a small bomb from inflating unbounded.
    inflater = zlib.decompressobj(47)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Rejected(
            400, "bad_encoding", f"the {encoding} body does not decompress: {exc}"
        ) from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise _too_large(limit)
    return plain


def _too_large(limit: int) -> Rejected:
    return Rejected(
        413,
        "body_too_large",
        f"the request body is larger than this server's limit of {limit} bytes",
    )


__all__ = [
    "ACCESS_LOG",
    "TIMEOUT_HEADER",
    "EarlyRefusal",
    "RequestContext",
    "RequestLog",
    "ServerState",
    "authenticate",
    "authorize",
    "check_model_name",
    "context",
    "error_response",
    "read_body",
    "state",
    "ticket_for",
]
