"""Generation scheduling: requests of a causal LM share the LM engine's decode steps.

The LM runtime's engine does iteration-level (continuous) batching: a new sequence joins the
running batch at the next decode step instead of waiting for the others to finish. This module
admits requests into it (refusing at once those that cannot finish before their deadline,
given the measured prefill and per-token times and the sequences ahead), carries the engine's
events from its thread onto the event loop, and measures time to first token and time per
output token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ai_vmm.serve.admission import Rejected, Ticket, refuse_late
from ai_vmm.serve.config import GenerationConfig


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of the decoder (OpenAI's names)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0


@dataclass
class GenEvent:
    """One step of a generation as the protocols see it."""

    text: str = ""
    token: int | None = None
    """The generated token (``None`` on the final event)."""
    finish_reason: str | None = None
    """``stop`` / ``length`` on the last event."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class LanguageModel(Protocol):
    """A loaded causal LM as the scheduler sees it (``ai_vmm.serve.backend`` makes one)."""

    kind: str
    device: str
    memory: dict[str, int]
    platform: str
    context_length: int

    def encode(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]: ...

    def start_engine(self, max_batch: int) -> Any: ...

    def submit(self, engine: Any, ids: list[int], params: SamplingParams, on_event: Any) -> Any:
        """Start a sequence; ``on_event(GenEvent)`` runs on the engine's thread; returns a
        handle with ``cancel()``."""
        ...

    def stop_engine(self, engine: Any) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Running:
    max_tokens: int
    produced: int = 0


@dataclass
class GenerationStats:
    """What a finished generation measured."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    first_at: float | None = None
    events: int = field(default=0, repr=False)


class Generator:
    """Admission and event plumbing in front of one LM engine."""

    def __init__(self, name: str, lm: LanguageModel, config: GenerationConfig) -> None:
        self.name = name
        self.lm = lm
        self.config = config
        self.engine: Any = None
        self._running: list[_Running] = []
        self._prefill_per_token: float | None = None
        self._tpot: float | None = None
        self._closing = False

    @property
    def active(self) -> int:
        return len(self._running)

    def engine_stats(self) -> dict[str, Any]:
        """The engine's counters (running and waiting sequences, steps) and this scheduler's."""
        stats = getattr(self.engine, "stats", None)
        data: dict[str, Any] = dict(stats()) if callable(stats) else {}
        data["active_requests"] = len(self._running)
        return data

    def start(self) -> None:
        self.engine = self.lm.start_engine(self.config.max_batch)

    async def close(self) -> None:
        self._closing = True
        while self._running:
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        engine, self.engine = self.engine, None
        await loop.run_in_executor(None, self.lm.stop_engine, engine)
        await loop.run_in_executor(None, self.lm.close)

    def check_request(self, ids: list[int], max_tokens: int) -> None:
        """400 for requests no deadline could help (too long for the context, too many tokens)."""
        if not ids:
            raise Rejected(400, "empty_prompt", "the prompt is empty")
        if max_tokens > self.config.max_tokens_limit:
            raise Rejected(
                400,
                "max_tokens",
                f"max_tokens {max_tokens} is above this model's limit "
                f"({self.config.max_tokens_limit})",
            )
        limit = self.lm.context_length
        if limit and len(ids) + max_tokens > limit:
            raise Rejected(
                400,
                "context_length_exceeded",
                f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"model's context of {limit} tokens",
            )

    def estimate(self, prompt_tokens: int, max_tokens: int) -> float:
        """Seconds until a request admitted now would have its last token (worst case)."""
        if self._tpot is None or self._prefill_per_token is None:
            return 0.0  # nothing measured yet: admit, and learn
        wait = 0.0
        if len(self._running) >= self.config.max_batch:
            # The next free slot: the running sequence closest to its token limit.
            left = min(r.max_tokens - r.produced for r in self._running)
            wait = max(left, 0) * self._tpot
        return wait + self._prefill_per_token * prompt_tokens + max_tokens * self._tpot

    def admit(self, ids: list[int], params: SamplingParams, ticket: Ticket) -> None:
        """Refuse now (before any response is sent) what cannot be served in time.

        Raises:
            Rejected: 400 for prompts or ``max_tokens`` out of bounds, 503 (with Retry-After)
                when the sequences ahead and the measured token times put the end past the
                deadline or the model is being unloaded.
        """
        if self._closing or self.engine is None:
            raise Rejected(503, "shutting_down", "the model is being unloaded", retry_after=1.0)
        self.check_request(ids, params.max_tokens)
        refuse_late(self.estimate(len(ids), params.max_tokens), ticket, f"model '{self.name}'")

    async def generate(
        self, ids: list[int], params: SamplingParams, ticket: Ticket, stats: GenerationStats
    ) -> AsyncIterator[GenEvent]:
        """Run one sequence in the engine and yield its events as they come.

        Call ``admit`` first, before the response starts; this checks again (the queue may have
        grown in between).

        Raises:
            Rejected: as ``admit``; 504 when the deadline passes mid-generation.
        """
        self.admit(ids, params, ticket)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenEvent] = asyncio.Queue()

        def on_event(event: GenEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        running = _Running(params.max_tokens)
        self._running.append(running)
        start = time.monotonic()
        handle = self.lm.submit(self.engine, ids, params, on_event)
        finished = False
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=max(ticket.budget_s, 0))
                except TimeoutError:
                    raise Rejected(
                        504, "deadline", "the request's deadline passed during generation"
                    ) from None
                now = time.monotonic()
                if event.token is not None and stats.first_at is None:
                    stats.first_at = now
                    stats.ttft_s = now - ticket.arrival
                    self._learn_prefill(now - start, len(ids))
                running.produced = max(running.produced, event.completion_tokens)
                if event.finish_reason is not None or event.error is not None:
                    finished = True
                    stats.prompt_tokens = event.prompt_tokens or len(ids)
                    stats.completion_tokens = event.completion_tokens
                    stats.finish_reason = event.finish_reason
                    if stats.first_at is not None and stats.completion_tokens > 1:
                        stats.tpot_s = (now - stats.first_at) / (stats.completion_tokens - 1)
                        self._learn_tpot(stats.tpot_s)
                    yield event
                    return
                yield event
        finally:
            self._running.remove(running)
            if not finished:
                with contextlib.suppress(Exception):
                    handle.cancel()

    def _learn_prefill(self, seconds: float, tokens: int) -> None:
        value = seconds / max(tokens, 1)
        old = self._prefill_per_token
        self._prefill_per_token = value if old is None else 0.8 * old + 0.2 * value

    def _learn_tpot(self, seconds: float) -> None:
        old = self._tpot
        self._tpot = seconds if old is None else 0.8 * old + 0.2 * seconds


__all__ = ["GenEvent", "GenerationStats", "Generator", "LanguageModel", "SamplingParams"]
