"""The continuous-batching engine for servers: a ``Scheduler`` driven by its own thread.

``engine.submit(prompt_token_ids, params, on_event)`` queues a request and returns a
``RequestHandle`` at once; the engine thread admits it at its next step, so a request joins
while others are decoding, and all running requests share every decode step. ``on_event`` runs
on the engine thread (keep it short: hand the event to your own loop or queue).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ai_vmm.runtime.errors import InputError
from ai_vmm.runtime.llm.sampling import GenerationParams
from ai_vmm.runtime.llm.scheduler import EventCallback, RequestHandle, Scheduler, _ids


class Engine:
    """Iteration-level batching over one decoder (see the module doc).

    Made by ``CausalLM.engine(max_batch=...)``; ``close()`` (or ``with``) stops the thread and
    ends requests still queued or running with ``cancelled``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        check_prompt: Callable[[Sequence[int], GenerationParams], None],
        on_close: Callable[[Scheduler], None] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._check_prompt = check_prompt
        self._on_close = on_close
        self._inbox: list[tuple[list[int], GenerationParams, EventCallback | None, Any, float]]
        self._inbox = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ai-vmm-lm-engine", daemon=True)
        self._thread.start()

    @property
    def max_batch(self) -> int:
        return self._scheduler.max_batch

    def submit(
        self,
        prompt_token_ids: Sequence[int],
        params: GenerationParams | Any = None,
        on_event: EventCallback | None = None,
    ) -> RequestHandle:
        """Queue one request; ``on_event`` gets a ``TokenEvent`` per token and a final one.

        Raises:
            InputError: the engine is closed, the prompt is empty or longer than the context,
                or a parameter is out of range.
        """
        params = GenerationParams.coerce(params)
        ids = [int(t) for t in prompt_token_ids]
        self._check_prompt(ids, params)
        handle = RequestHandle(next(_ids))
        with self._wake:
            if self._closed:
                raise InputError("the engine is closed")
            self._inbox.append((ids, params, on_event, handle, time.perf_counter()))
            self._wake.notify()
        return handle

    def stats(self) -> dict[str, int]:
        """Running and waiting sequences, steps taken (a snapshot; no lock on the counters)."""
        scheduler = self._scheduler
        return {
            "running": scheduler.running,
            "waiting": scheduler.waiting + len(self._inbox),
            "steps": scheduler.steps,
            "decode_steps": scheduler.decode_steps,
            "max_batch": scheduler.max_batch,
        }

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the engine thread; requests not finished end with ``cancelled``."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        scheduler = self._scheduler
        try:
            while True:
                with self._wake:
                    while not self._closed and not self._inbox and not scheduler.has_work():
                        self._wake.wait()
                    if self._closed:
                        break
                    inbox, self._inbox = self._inbox, []
                for ids, params, on_event, handle, submitted in inbox:
                    scheduler.submit(ids, params, on_event, handle, submitted)
                try:
                    scheduler.step()
                except Exception as exc:  # a bug or a dead backend: fail requests, keep serving
                    scheduler.fail_all(f"engine step failed: {type(exc).__name__}: {exc}")
        finally:
            with self._wake:
                self._closed = True
                inbox, self._inbox = self._inbox, []
            for ids, params, on_event, handle, submitted in inbox:
                scheduler.submit(ids, params, on_event, handle, submitted)
            with contextlib.suppress(Exception):
                scheduler.cancel_all()
            if self._on_close is not None:
                self._on_close(scheduler)
