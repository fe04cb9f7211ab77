"""The continuous-batching engine on real tiny artifacts: shared decode steps, requests joining
while others decode, cancellation, failing listeners, close."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from lm_support import tiny_artifact

import ai_vmm
from ai_vmm.runtime.errors import InputError
from ai_vmm.runtime.llm import CausalLM, GenerationParams, TokenEvent

PROMPTS = [
    "Return a new list containing all items from the iterable in ascending order.",
    "Hi",
    "def f(x):\n    return x * 2",
    "The quick brown fox jumps over the lazy dog, twice, and then once more.",
]


@pytest.fixture(scope="module", params=("onnxruntime:CPU", "openvino:CPU", "openvino:CPU+paged"))
def lm(request: pytest.FixtureRequest) -> Iterator[CausalLM]:
    model = ai_vmm.load(tiny_artifact("llama", request.param))
    yield model
    model.close()


def _alone(lm: CausalLM, prompt: str, n: int) -> list[int]:
    return lm.generate(prompt, max_new_tokens=n, min_new_tokens=n).tokens  # type: ignore[union-attr]


class Collector:
    def __init__(self) -> None:
        self.events: list[TokenEvent] = []
        self.done = threading.Event()

    def __call__(self, event: TokenEvent) -> None:
        self.events.append(event)
        if event.finish_reason is not None:
            self.done.set()

    @property
    def tokens(self) -> list[int]:
        return [e.token for e in self.events if e.token is not None]


def test_concurrent_requests_share_steps_and_match_alone(lm: CausalLM) -> None:
    n = 16
    expected = [_alone(lm, p, n) for p in PROMPTS]
    with lm.engine(max_batch=4) as engine:
        collectors = [Collector() for _ in PROMPTS]
        params = GenerationParams(max_new_tokens=n, min_new_tokens=n)
        handles = [
            engine.submit(lm.encode_prompt(p), params, c)
            for p, c in zip(PROMPTS, collectors, strict=True)
        ]
        results = [h.wait(120) for h in handles]
        stats = engine.stats()
    assert [r.tokens for r in results if r is not None] == expected
    assert all(c.events[-1].finish_reason == "length" for c in collectors)
    assert [c.tokens for c in collectors] == expected
    # Four sequences of 16 tokens: far fewer than 64 decode steps when they share them.
    assert stats["decode_steps"] < 2 * n


def test_request_joins_while_another_decodes(lm: CausalLM) -> None:
    long_n, short_n = 40, 12
    expected_long = _alone(lm, PROMPTS[0], long_n)
    expected_short = _alone(lm, PROMPTS[3], short_n)
    with lm.engine(max_batch=4) as engine:
        first = Collector()
        started = threading.Event()

        def on_first(event: TokenEvent) -> None:
            first(event)
            if len(first.events) == 5:
                started.set()

        long = engine.submit(
            lm.encode_prompt(PROMPTS[0]),
            {"max_new_tokens": long_n, "min_new_tokens": long_n},
            on_first,
        )
        assert started.wait(60)
        second = Collector()
        short = engine.submit(
            lm.encode_prompt(PROMPTS[3]),
            {"max_new_tokens": short_n, "min_new_tokens": short_n},
            second,
        )
        long_result, short_result = long.wait(120), short.wait(120)
    assert long_result is not None and short_result is not None
    assert long_result.tokens == expected_long
    assert short_result.tokens == expected_short
    # The short request finished while the long one was still decoding (it joined mid-way).
    assert short.done and len(first.events) >= 5
    assert second.done.is_set()


def test_cancel_and_failing_listener_end_only_their_request(lm: CausalLM) -> None:
    n = 24
    expected = _alone(lm, PROMPTS[2], n)
    with lm.engine(max_batch=3) as engine:
        good = Collector()

        def explode(event: TokenEvent) -> None:
            if event.token is not None:
                raise RuntimeError("listener bug")

        victim = engine.submit(lm.encode_prompt(PROMPTS[0]), {"max_new_tokens": 200}, explode)
        cancelled_events = Collector()
        cancelled = engine.submit(
            lm.encode_prompt(PROMPTS[1]),
            {"max_new_tokens": 200, "min_new_tokens": 200},
            cancelled_events,
        )
        kept = engine.submit(
            lm.encode_prompt(PROMPTS[2]), {"max_new_tokens": n, "min_new_tokens": n}, good
        )
        cancelled.cancel()
        results = [h.wait(120) for h in (victim, cancelled, kept)]
    assert results[0] is not None and results[0].finish_reason == "cancelled"
    assert results[1] is not None and results[1].finish_reason == "cancelled"
    assert results[2] is not None and results[2].tokens == expected
    assert cancelled_events.events[-1].finish_reason == "cancelled"


def test_close_cancels_waiting_work_and_refuses_new(lm: CausalLM) -> None:
    engine = lm.engine(max_batch=1)
    handles = [
        engine.submit(lm.encode_prompt(p), {"max_new_tokens": 500, "min_new_tokens": 500})
        for p in PROMPTS
    ]
    engine.close()
    results = [h.wait(30) for h in handles]
    assert all(r is not None for r in results)
    assert {r.finish_reason for r in results if r is not None} <= {"cancelled", "length"}
    assert any(r.finish_reason == "cancelled" for r in results if r is not None)
    with pytest.raises(InputError, match="closed"):
        engine.submit([1, 2, 3])


def test_submit_checks_the_prompt(lm: CausalLM) -> None:
    with lm.engine() as engine:
        with pytest.raises(InputError, match="empty"):
            engine.submit([])
        with pytest.raises(InputError, match="context"):
            engine.submit([1] * lm.context_length)
        with pytest.raises(InputError, match="top_p"):
            engine.submit([1, 2], {"top_p": 2.0})


def test_cache_is_compacted_when_a_long_sequence_leaves(lm: CausalLM) -> None:
    long_prompt = " ".join(PROMPTS) * 2  # ~100 tokens: most columns belong to it alone
    expected = _alone(lm, PROMPTS[1], 20)
    with lm.engine(max_batch=2) as engine:
        leaving = engine.submit(lm.encode_prompt(long_prompt), {"max_new_tokens": 2})
        staying = engine.submit(
            lm.encode_prompt(PROMPTS[1]), {"max_new_tokens": 20, "min_new_tokens": 20}
        )
        assert leaving.wait(120) is not None
        result = staying.wait(120)
    assert result is not None and result.tokens == expected
