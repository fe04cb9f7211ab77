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
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ai_vmm.serve.admission import Rejected, Ticket, refuse_late
from ai_vmm.serve.config import GenerationConfig, PriorityClass


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
    min_tokens: int = 0
    """End-of-sequence cannot end the reply before this many tokens (vLLM's ``min_tokens``;
    its ``ignore_eos`` sets it to ``max_tokens``)."""


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


@dataclass(eq=False)
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
    """Admission, a priority queue for engine slots, and event plumbing for one LM engine.

    The engine decodes at most ``generation.max_batch`` sequences at once. Requests beyond
    that wait here, not in the engine's own queue, so the waiting order follows priority
    classes (rank, then arrival) and a request whose deadline passes while it waits gets 504
    without ever reaching the engine. Per class, ``max_queue`` waiting requests are allowed;
    beyond that ``overflow = "reject"`` refuses at once (503), ``"delay"`` queues anyway.
    """

    def __init__(
        self,
        name: str,
        lm: LanguageModel,
        config: GenerationConfig,
        classes: dict[str, PriorityClass] | None = None,
    ) -> None:
        self.name = name
        self.lm = lm
        self.config = config
        self.classes = classes or {}
        self.engine: Any = None
        self._running: list[_Running] = []
        self._waiting: list[tuple[int, int, asyncio.Future[None], _Running, Ticket]] = []
        self._seq = itertools.count()
        self._prefill_per_token: float | None = None
        self._tpot: float | None = None
        self._closing = False

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def engine_stats(self) -> dict[str, Any]:
        """The engine's counters (running and waiting sequences, steps) and this scheduler's."""
        stats = getattr(self.engine, "stats", None)
        data: dict[str, Any] = dict(stats()) if callable(stats) else {}
        data["active_requests"] = len(self._running)
        data["queued_requests"] = len(self._waiting)
        return data

    def start(self) -> None:
        self.engine = self.lm.start_engine(self.config.max_batch)

    async def close(self) -> None:
        self._closing = True
        while self._running or self._waiting:
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

    def estimate(self, prompt_tokens: int, max_tokens: int, rank: int = 0) -> float:
        """Seconds until a request admitted now would have its last token (worst case).

        Engine slots free up as running sequences reach their token limit; the requests
        waiting at ``rank`` or better take the next ones first.
        """
        if self._tpot is None or self._prefill_per_token is None:
            return 0.0  # nothing measured yet: admit, and learn
        tpot, prefill = self._tpot, self._prefill_per_token
        free = [max(r.max_tokens - r.produced, 0) * tpot for r in self._running]
        free += [0.0] * max(self.config.max_batch - len(free), 0)
        heapq.heapify(free)
        for r, _, _, ahead, _ in sorted(self._waiting, key=lambda w: (w[0], w[1])):
            if r <= rank:
                start = heapq.heappop(free)
                heapq.heappush(free, start + ahead.max_tokens * tpot)
        start = heapq.heappop(free)
        return start + prefill * prompt_tokens + max_tokens * tpot

    def admit(self, ids: list[int], params: SamplingParams, ticket: Ticket) -> None:
        """Refuse now (before any response is sent) what cannot be served in time.

        Raises:
            Rejected: 400 for prompts or ``max_tokens`` out of bounds, 503 (with Retry-After)
                when the class queue is full, when the sequences ahead and the measured token
                times put the end past the deadline, or when the model is being unloaded.
        """
        if self._closing or self.engine is None:
            raise Rejected(503, "shutting_down", "the model is being unloaded", retry_after=1.0)
        self.check_request(ids, params.max_tokens)
        policy = self.classes.get(ticket.priority_class)
        if policy is not None and policy.overflow == "reject" and self._free_slots() == 0:
            queued = sum(1 for w in self._waiting if w[4].priority_class == ticket.priority_class)
            if queued >= policy.max_queue:
                raise Rejected(
                    503,
                    "queue_full",
                    f"the queue of model '{self.name}' for class '{ticket.priority_class}' is "
                    f"full ({policy.max_queue} requests)",
                    retry_after=max(self.estimate(len(ids), 1, ticket.rank), 0.05),
                )
        estimate = self.estimate(len(ids), params.max_tokens, ticket.rank)
        refuse_late(estimate, ticket, f"model '{self.name}'")

    def _free_slots(self) -> int:
        return self.config.max_batch - len(self._running)

    async def _take_slot(self, running: _Running, ticket: Ticket) -> None:
        """Wait (in priority order) for an engine slot; 504 if the deadline passes first."""
        if self._free_slots() > 0 and not self._waiting:
            self._running.append(running)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (ticket.rank, next(self._seq), future, running, ticket)
        heapq.heappush(self._waiting, entry)
        try:
            await asyncio.wait_for(future, timeout=max(ticket.budget_s, 0.0))
        except TimeoutError:
            raise Rejected(
                504,
                "deadline",
                f"the request's deadline passed while it waited for model '{self.name}'",
            ) from None
        finally:
            if entry in self._waiting:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)

    def _give_slot(self, running: _Running) -> None:
        """``running`` is done: hand its slot to the best waiting request, if any."""
        if running in self._running:
            self._running.remove(running)
        while self._waiting and self._free_slots() > 0:
            _, _, future, waiter, _ = heapq.heappop(self._waiting)
            if not future.done():
                self._running.append(waiter)
                future.set_result(None)

    async def generate(
        self, ids: list[int], params: SamplingParams, ticket: Ticket, stats: GenerationStats
    ) -> AsyncIterator[GenEvent]:
        """Run one sequence in the engine and yield its events as they come.

        Call ``admit`` first, before the response starts; this checks again (the queue may have
        grown in between), then waits for an engine slot in priority order.

        Raises:
            Rejected: as ``admit``; 504 when the deadline passes while waiting or generating.
        """
        self.admit(ids, params, ticket)
        running = _Running(params.max_tokens)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenEvent] = asyncio.Queue()

        def on_event(event: GenEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        finished = False
        handle = None
        try:
            # Inside the try: a request cancelled just after it was handed a slot gives it back.
            await self._take_slot(running, ticket)
            start = time.monotonic()
            handle = self.lm.submit(self.engine, ids, params, on_event)
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
            self._give_slot(running)
            if not finished and handle is not None:
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
