"""Iteration-level batching: the sequences of a batch share each decode step, and new ones join
between steps.

One ``Scheduler`` owns a main KV context whose rows are the running sequences, left-padded to
one cache length (the attention mask hides the padding; each sequence keeps its own position
ids). A step is either an admission or a decode:

* admission: waiting requests are prefilled together (left-padded to their longest prompt),
  in the main context when nothing runs, else in a side context whose cache is then merged
  into the main one (both left-padded to the longer length; columns that only padding still
  uses are dropped on the way);
* decode: one token for every running sequence, in one forward pass.

Finished sequences leave the batch at once (``KvContext.keep``; OpenVINO does that inside its
next step). The scheduler is not thread-safe: ``CausalLM.generate`` drives one in the caller's
thread, the ``Engine`` in its own.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_vmm.runtime.llm.sampling import GenerationParams, Sampler
from ai_vmm.runtime.llm.session import DecoderSession, KvContext
from ai_vmm.runtime.llm.tokenizer import StreamDecoder, Tokenizer

MAX_PREFILL_TOKENS = 8192
"""At most this many (padded) prompt tokens are prefilled in one step; one long prompt alone
may exceed it."""

_ids = itertools.count()


@dataclass
class GenerationResult:
    """One finished generation.

    Attributes:
        text: the reply (without the prompt, end-of-sequence tokens or stop strings).
        tokens: the generated token ids (an end-of-sequence token included when it ended it).
        finish_reason: ``stop`` (end of sequence or a stop string), ``length``
            (``max_new_tokens`` or the context is full), ``cancelled`` or ``error``.
        prompt_tokens: tokens of the prompt.
        ttft_s: time to first token (from submission).
        tpot_s: mean time per output token after the first (``None`` for one token).
        total_s: from submission to the last token.
        error: what went wrong, when ``finish_reason`` is ``error``.
    """

    text: str
    tokens: list[int]
    finish_reason: str
    prompt_tokens: int
    ttft_s: float | None
    tpot_s: float | None
    total_s: float
    error: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: ``1 / tpot_s``."""
        return None if not self.tpot_s else 1.0 / self.tpot_s


@dataclass
class TokenEvent:
    """What ``on_event`` receives: one per generated token, then one final event.

    The final event has ``finish_reason`` set, ``token`` ``None``, the last withheld text (if
    any) and ``result``.
    """

    request_id: int
    token: int | None
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    result: GenerationResult | None = None
    error: str | None = None


EventCallback = Callable[[TokenEvent], None]


class RequestHandle:
    """A submitted request: ``cancel()`` it, ``wait()`` for its result."""

    def __init__(self, request_id: int) -> None:
        self.id = request_id
        self._cancelled = False
        self._done = threading.Event()
        self._result: GenerationResult | None = None

    def cancel(self) -> None:
        """Stop the request at the next step (its final event says ``cancelled``)."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> GenerationResult | None:
        """The result once finished (``None`` if ``timeout`` passes first)."""
        self._done.wait(timeout)
        return self._result

    def _finish(self, result: GenerationResult) -> None:
        self._result = result
        self._done.set()


@dataclass
class _Sequence:
    prompt: list[int]
    params: GenerationParams
    sampler: Sampler
    decoder: StreamDecoder
    on_event: EventCallback | None
    handle: RequestHandle
    submitted: float
    tokens: list[int] = field(default_factory=list)
    raw: str = ""
    emitted: int = 0
    position: int = 0
    first_at: float | None = None
    last_at: float | None = None
    finish: str | None = None
    error: str | None = None
    stopped_by_string: bool = False


class Scheduler:
    """Runs sequences on one decoder session, iteration by iteration (see the module doc)."""

    def __init__(
        self,
        session: DecoderSession,
        tokenizer: Tokenizer,
        *,
        vocab_size: int,
        context_length: int,
        pad_token_id: int,
        max_batch: int,
        contexts: Callable[[], KvContext] | None = None,
    ) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._vocab = vocab_size
        self._context_length = context_length
        self._pad = pad_token_id
        self.max_batch = max(1, int(max_batch))
        self._new_context = contexts or session.context
        self._main: KvContext | None = None
        self._side: KvContext | None = None
        self._running: list[_Sequence] = []
        self._mask = np.zeros((0, 0), dtype=np.int64)
        self._waiting: deque[_Sequence] = deque()
        self._eos = frozenset(tokenizer.eos_token_ids)
        self.steps = 0
        self.decode_steps = 0

    # -- requests ------------------------------------------------------------------------

    def submit(
        self,
        prompt: Sequence[int],
        params: GenerationParams,
        on_event: EventCallback | None = None,
        handle: RequestHandle | None = None,
        submitted: float | None = None,
    ) -> RequestHandle:
        """Queue a request (its token ids are checked by the caller)."""
        handle = handle or RequestHandle(next(_ids))
        prompt = list(prompt)
        seq = _Sequence(
            prompt=prompt,
            params=params,
            sampler=Sampler(params, prompt, self._vocab, tuple(self._eos)),
            decoder=self._tokenizer.stream(),
            on_event=on_event,
            handle=handle,
            submitted=time.perf_counter() if submitted is None else submitted,
            position=len(prompt),
        )
        self._waiting.append(seq)
        return handle

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def step(self) -> None:
        """One iteration: admit waiting requests (a prefill) if there is room, else decode."""
        self._drop_cancelled()
        if self._waiting and len(self._running) < self.max_batch:
            self._admit()
        elif self._running:
            self._decode()
        self.steps += 1

    def fail_all(self, message: str) -> None:
        """End every request with ``error`` (the backend failed, or the engine is closing)."""
        for seq in [*self._running, *self._waiting]:
            seq.finish, seq.error = "error", message
            self._final(seq)
        self._running.clear()
        self._waiting.clear()
        self._reset_main()

    def cancel_all(self) -> None:
        for seq in [*self._running, *self._waiting]:
            seq.finish = "cancelled"
            self._final(seq)
        self._running.clear()
        self._waiting.clear()
        self._reset_main()

    # -- steps ---------------------------------------------------------------------------

    def _admit(self) -> None:
        room = self.max_batch - len(self._running)
        batch: list[_Sequence] = []
        longest = 0
        while self._waiting and len(batch) < room:
            length = max(longest, len(self._waiting[0].prompt))
            if batch and length * (len(batch) + 1) > MAX_PREFILL_TOKENS:
                break
            batch.append(self._waiting.popleft())
            longest = length
        joining = bool(self._running)
        context = self._side_context() if joining else self._main_context()
        context.reset()
        ids = np.full((len(batch), longest), self._pad, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        positions = np.zeros((len(batch), longest), dtype=np.int64)
        for row, seq in enumerate(batch):
            n = len(seq.prompt)
            ids[row, longest - n :] = seq.prompt
            mask[row, longest - n :] = 1
            positions[row, longest - n :] = np.arange(n)
        try:
            logits = context.forward(ids, mask, positions, np.array([longest - 1], np.int64))
        except Exception as exc:
            context.reset()
            for seq in batch:
                seq.finish, seq.error = "error", f"prefill failed: {exc}"
                self._final(seq)
            return
        now = time.perf_counter()
        for row, seq in enumerate(batch):
            self._accept(seq, seq.sampler.choose(logits[row, -1]), now)
        if joining:
            self._merge(context, mask)
            self._running.extend(batch)
        else:
            self._mask = mask
            self._running = batch
        self._retire()

    def _decode(self) -> None:
        main = self._main_context()
        rows = len(self._running)
        ids = np.array([[seq.tokens[-1]] for seq in self._running], dtype=np.int64)
        positions = np.array([[seq.position - 1] for seq in self._running], dtype=np.int64)
        mask = np.concatenate([self._mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
        # Every row greedy and a backend that takes the argmax itself (cuda): tokens come
        # back instead of the vocabulary-wide logits.
        greedy = getattr(main, "forward_greedy", None)
        blocked = [s.sampler.blocked_if_greedy() for s in self._running] if greedy else []
        try:
            if greedy is not None and all(b is not None for b in blocked):
                tokens = greedy(ids, mask, positions, blocked)
                running = zip(self._running, tokens, strict=True)
                choices = [seq.sampler.took(token) for seq, token in running]
            else:
                logits = main.forward(ids, mask, positions, np.zeros(1, dtype=np.int64))
                choices = [s.sampler.choose(logits[r, -1]) for r, s in enumerate(self._running)]
        except Exception as exc:
            self.fail_all(f"decode step failed: {exc}")
            return
        self._mask = mask
        now = time.perf_counter()
        for seq, token in zip(self._running, choices, strict=True):
            self._accept(seq, token, now)
        self.decode_steps += 1
        self._retire()

    def _merge(self, side: KvContext, side_mask: np.ndarray) -> None:
        """Append the side context's rows to the main cache (left-padded to one length)."""
        main = self._main_context()
        used = np.flatnonzero(self._mask.any(axis=0))
        start = int(used[0]) if used.size else self._mask.shape[1]
        ours = [array[:, :, start:, :] for array in main.read_cache()]
        theirs = side.read_cache()
        old_mask = self._mask[:, start:]
        length = max(old_mask.shape[1], side_mask.shape[1])
        merged = []
        for a, b in zip(ours, theirs, strict=True):
            out = np.zeros((a.shape[0] + b.shape[0], a.shape[1], length, a.shape[3]), a.dtype)
            out[: a.shape[0], :, length - a.shape[2] :] = a
            out[a.shape[0] :, :, length - b.shape[2] :] = b
            merged.append(out)
        main.write_cache(merged)
        mask = np.zeros((old_mask.shape[0] + side_mask.shape[0], length), dtype=np.int64)
        mask[: old_mask.shape[0], length - old_mask.shape[1] :] = old_mask
        mask[old_mask.shape[0] :, length - side_mask.shape[1] :] = side_mask
        self._mask = mask
        side.reset()

    # -- per sequence --------------------------------------------------------------------

    def _accept(self, seq: _Sequence, token: int, now: float) -> None:
        """Record ``token`` for ``seq``: its text piece, stop checks, the event."""
        if seq.finish is not None:
            return
        seq.tokens.append(token)
        seq.position += 1
        seq.first_at = seq.first_at or now
        seq.last_at = now
        params = seq.params
        piece = ""
        if token in self._eos:
            seq.finish = "stop"
        else:
            seq.raw += seq.decoder.push(token)
            piece = self._release(seq)
            if seq.finish is None and len(seq.tokens) >= params.max_new_tokens:
                seq.finish = "length"
            if seq.finish is None and seq.position > self._context_length:
                seq.finish = "length"
        self._emit(
            seq,
            TokenEvent(seq.handle.id, token, piece, None, len(seq.prompt), len(seq.tokens)),
        )

    def _release(self, seq: _Sequence, final: bool = False) -> str:
        """The text that can be shown now: up to a stop string (which ends the reply), and
        (unless ``final``) short of a tail that could still become one."""
        stops = seq.params.stop
        if not stops:
            piece = seq.raw[seq.emitted :]
            seq.emitted = len(seq.raw)
            return piece
        longest = max(len(s) for s in stops)
        search_from = max(0, seq.emitted - longest + 1)
        hits = [i for s in stops if (i := seq.raw.find(s, search_from)) >= 0]
        if hits:
            end = min(hits)
            seq.raw = seq.raw[:end]
            seq.finish = seq.finish or "stop"
            seq.stopped_by_string = True
        else:
            end = len(seq.raw)
            for size in () if final else range(min(longest - 1, len(seq.raw)), 0, -1):
                tail = seq.raw[-size:]
                if any(s.startswith(tail) for s in stops):
                    end = len(seq.raw) - size
                    break
        piece = seq.raw[seq.emitted : max(end, seq.emitted)]
        seq.emitted = max(end, seq.emitted)
        return piece

    def _retire(self) -> None:
        """Send final events and take finished sequences out of the batch."""
        keep = [row for row, seq in enumerate(self._running) if seq.finish is None]
        if len(keep) == len(self._running):
            return
        for seq in self._running:
            if seq.finish is not None:
                self._final(seq)
        self._running = [self._running[row] for row in keep]
        if not keep:
            self._reset_main()
            return
        self._main_context().keep(keep)
        self._mask = self._mask[keep]
        self._compact()

    def _compact(self) -> None:
        """Drop leading cache columns that only finished sequences used, once they are a
        quarter of the cache (fewer columns to attend to; a static cache needs the room)."""
        used = np.flatnonzero(self._mask.any(axis=0))
        start = int(used[0]) if used.size else 0
        if start < max(16, self._mask.shape[1] // 4):
            return
        main = self._main_context()
        main.write_cache([array[:, :, start:, :] for array in main.read_cache()])
        self._mask = self._mask[:, start:]

    def _drop_cancelled(self) -> None:
        if any(seq.handle.cancelled for seq in self._waiting):
            for seq in [s for s in self._waiting if s.handle.cancelled]:
                seq.finish = "cancelled"
                self._final(seq)
            self._waiting = deque(s for s in self._waiting if not s.handle.cancelled)
        for seq in self._running:
            if seq.handle.cancelled and seq.finish is None:
                seq.finish = "cancelled"
        self._retire()

    def _final(self, seq: _Sequence) -> None:
        tail = ""
        if not seq.stopped_by_string:
            seq.raw += seq.decoder.flush()
            tail = self._release(seq, final=True)
        end = seq.last_at or time.perf_counter()
        steps = len(seq.tokens) - 1
        result = GenerationResult(
            text=seq.raw[: seq.emitted],
            tokens=list(seq.tokens),
            finish_reason=seq.finish or "error",
            prompt_tokens=len(seq.prompt),
            ttft_s=None if seq.first_at is None else seq.first_at - seq.submitted,
            tpot_s=(end - seq.first_at) / steps if seq.first_at is not None and steps > 0 else None,
            total_s=end - seq.submitted,
            error=seq.error,
        )
        self._emit(
            seq,
            TokenEvent(
                seq.handle.id,
                None,
                tail,
                result.finish_reason,
                len(seq.prompt),
                len(seq.tokens),
                result=result,
                error=seq.error,
            ),
        )
        seq.handle._finish(result)

    def _emit(self, seq: _Sequence, event: TokenEvent) -> None:
        if seq.on_event is None:
            return
        try:
            seq.on_event(event)
        except Exception as exc:
            # A failing listener ends its own request, never the batch.
            seq.handle.cancel()
            seq.error = f"on_event raised {type(exc).__name__}: {exc}"

    # -- contexts ------------------------------------------------------------------------

    def _main_context(self) -> KvContext:
        if self._main is None:
            self._main = self._new_context()
        return self._main

    def _side_context(self) -> KvContext:
        if self._side is None:
            self._side = self._new_context()
        return self._side

    def _reset_main(self) -> None:
        if self._main is not None:
            self._main.reset()
        self._mask = np.zeros((0, 0), dtype=np.int64)

    def contexts(self) -> list[Any]:
        """The contexts this scheduler opened (to hand back to a pool)."""
        return [c for c in (self._main, self._side) if c is not None]
