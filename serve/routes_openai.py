"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

The protocol shapes live in ``openai_protocol``; generation scheduling in ``generation``. A
streamed answer holds its tenant slot and its model until the last event is sent, so quotas,
evictions and graceful shutdown all see it as in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ai_vmm.serve import openai_protocol as oai
from ai_vmm.serve.admission import Rejected, Ticket
from ai_vmm.serve.allocation import READY, ServedModel
from ai_vmm.serve.config import Tenant
from ai_vmm.serve.generation import GenerationStats, Generator, SamplingParams
from ai_vmm.serve.http import (
    RequestContext,
    ServerState,
    authenticate,
    authorize,
    context,
    read_body,
    state,
    ticket_for,
)

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    server = state(request)
    tenant = authenticate(request)
    names = [
        name
        for name, versions in sorted(server.manager.models.items())
        if any(s.spec.kind == "causal-lm" for s in versions.values())
    ]
    data = [oai.model_card(n, server.created) for n in server.gate.visible(tenant, names)]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model}")
async def get_model(request: Request, model: str) -> Response:
    server = state(request)
    tenant = authenticate(request)
    authorize(request, tenant, model)
    served = server.manager.find(model)
    if served.spec.kind != "causal-lm":
        raise Rejected(404, "model_not_found", f"model '{model}' is not a language model")
    return JSONResponse(oai.model_card(model, server.created))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, chat=True)


async def _serve(request: Request, chat: bool) -> Response:
    server = state(request)
    ctx = context(request)
    ctx.protocol = "openai"
    tenant = authenticate(request)
    body = await read_body(request)
    parsed: Any = oai.parse(oai.ChatRequest if chat else oai.CompletionRequest, body)
    authorize(request, tenant, parsed.model)
    ticket = ticket_for(request, tenant, None)
    # Everything held for the request (tenant slot, model, charged tokens) is released by this
    # stack: at the end of this function for JSON answers, after the last event for streams.
    stack = contextlib.AsyncExitStack()
    try:
        stack.enter_context(server.gate.admit(tenant))
        served = await stack.enter_async_context(server.manager.use(parsed.model))
        generator = _generator(served, parsed.model)
        ids = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: (
                generator.lm.encode_chat(parsed.plain_messages())
                if chat
                else _encode_prompt(generator, parsed.single_prompt())
            ),
        )
        max_tokens = parsed.new_tokens(generator.config.default_max_tokens)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=parsed.temperature,
            top_p=parsed.top_p,
            top_k=parsed.top_k,
            stop=parsed.stops,
            seed=parsed.seed,
            repetition_penalty=parsed.repetition_penalty,
            # vLLM's extensions, for benchmarks that need replies of a fixed length.
            min_tokens=max_tokens if parsed.ignore_eos else min(parsed.min_tokens, max_tokens),
        )
        generator.admit(ids, params, ticket)
        charged = len(ids) + params.max_tokens
        server.gate.take_tokens(tenant, charged)
        stats = GenerationStats()
        stack.callback(_settle, server, tenant, ctx, stats, charged)
        if parsed.stream:
            events = _stream(generator, ids, params, ticket, stats, chat, parsed, stack)
            return _HeldStream(events, stack)
        async with stack:
            text = []
            async for event in generator.generate(ids, params, ticket, stats):
                if event.error:
                    raise Rejected(500, "generation_failed", event.error)
                text.append(event.text)
        make = oai.chat_completion if chat else oai.completion
        rid = oai.new_id("chatcmpl" if chat else "cmpl")
        return JSONResponse(
            make(
                rid,
                parsed.model,
                "".join(text),
                stats.finish_reason,
                stats.prompt_tokens,
                stats.completion_tokens,
            )
        )
    except BaseException:
        await stack.aclose()
        raise


class _HeldStream(StreamingResponse):
    """A server-sent-event stream that releases what its request holds however it ends.

    A client that disconnects before the first event means the body generator never starts
    (so its own ``async with`` never runs): the release happens here instead.
    """

    def __init__(self, events: AsyncIterator[bytes], stack: contextlib.AsyncExitStack) -> None:
        super().__init__(events, media_type="text/event-stream")
        self._stack = stack
        self._events = events

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._events.aclose()  # type: ignore[attr-defined]
            await self._stack.aclose()


def _generator(served: ServedModel, name: str) -> Generator:
    if served.generator is None or served.state != READY:
        raise Rejected(
            400,
            "wrong_protocol",
            f"model '{name}' is not a language model; use /v2/models/{name}/infer",
            param="model",
        )
    return served.generator


def _encode_prompt(generator: Generator, prompt: str | list[int]) -> list[int]:
    return list(prompt) if isinstance(prompt, list) else generator.lm.encode(prompt)


def _settle(
    server: ServerState,
    tenant: Tenant | None,
    ctx: RequestContext,
    stats: GenerationStats,
    charged: int,
) -> None:
    """After a generation: refund unused tokens, record token counts, TTFT and TPOT."""
    used = stats.prompt_tokens + stats.completion_tokens
    server.gate.refund_tokens(tenant, charged - used)
    ctx.prompt_tokens, ctx.completion_tokens = stats.prompt_tokens, stats.completion_tokens
    m = server.metrics
    m.tokens.labels(ctx.model, ctx.tenant, "prompt").inc(stats.prompt_tokens)
    m.tokens.labels(ctx.model, ctx.tenant, "completion").inc(stats.completion_tokens)
    if stats.ttft_s is not None:
        m.ttft.labels(ctx.model, ctx.tenant).observe(stats.ttft_s)
    if stats.tpot_s is not None:
        m.tpot.labels(ctx.model, ctx.tenant).observe(stats.tpot_s)


async def _stream(
    generator: Generator,
    ids: list[int],
    params: SamplingParams,
    ticket: Ticket,
    stats: GenerationStats,
    chat: bool,
    parsed: Any,
    stack: contextlib.AsyncExitStack,
) -> AsyncIterator[bytes]:
    rid = oai.new_id("chatcmpl" if chat else "cmpl")
    created = int(time.time())
    model = parsed.model
    async with stack:
        try:
            if chat:
                yield oai.sse(
                    oai.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None)
                )
            async for event in generator.generate(ids, params, ticket, stats):
                if event.error:
                    raise Rejected(500, "generation_failed", event.error)
                if event.text:
                    chunk = (
                        oai.chat_chunk(rid, model, created, {"content": event.text}, None)
                        if chat
                        else oai.completion_chunk(rid, model, created, event.text, None)
                    )
                    yield oai.sse(chunk)
                if event.finish_reason is not None:
                    final = (
                        oai.chat_chunk(rid, model, created, {}, event.finish_reason)
                        if chat
                        else oai.completion_chunk(rid, model, created, "", event.finish_reason)
                    )
                    yield oai.sse(final)
            if parsed.include_usage:
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield oai.sse(
                    oai.usage_chunk(
                        rid, model, created, obj, stats.prompt_tokens, stats.completion_tokens
                    )
                )
        except Rejected as error:
            # The status line has gone out: the error travels as an event the client raises.
            yield oai.sse(oai.error_body(error))
        yield oai.DONE


__all__ = ["router"]
