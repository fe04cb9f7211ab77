"""Generation scheduling on a real LM engine (a tiny random-weight Llama, compiled for ONNX
Runtime): engine slots go by priority, deadlines expire in the queue, admission refuses what
cannot finish in time, a full class queue refuses at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from ai_vmm.serve.admission import Rejected, Ticket
from ai_vmm.serve.backend import load_model
from ai_vmm.serve.config import GenerationConfig, PriorityClass
from ai_vmm.serve.generation import GenerationStats, Generator, SamplingParams

CLASSES = {
    "high": PriorityClass(rank=0, max_queue=8, timeout_ms=60_000),
    "low": PriorityClass(rank=1, max_queue=1, timeout_ms=60_000),
}


@pytest.fixture(scope="module")
def lm() -> Any:
    from lm_support import tiny_artifact

    model = load_model(Path(tiny_artifact("llama", "onnxruntime:CPU")), kind="causal-lm")
    yield model


def _ticket(cls: str, timeout: float = 60.0) -> Ticket:
    now = time.monotonic()
    return Ticket(cls, CLASSES[cls].rank, now, now + timeout)


async def _generate(
    gen: Generator, prompt: str, cls: str, tokens: int, timeout: float = 60.0
) -> tuple[float, GenerationStats]:
    ids = gen.lm.encode(prompt)
    stats = GenerationStats()
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens)  # random weights: no early EOS
    async for _ in gen.generate(ids, params, _ticket(cls, timeout), stats):
        pass
    assert stats.first_at is not None
    return stats.first_at, stats


def test_slots_by_priority_deadlines_and_queue_limits(lm: Any) -> None:
    async def main() -> None:
        gen = Generator("tiny", lm, GenerationConfig(max_batch=1), CLASSES)
        gen.start()
        running = asyncio.create_task(_generate(gen, "one two three", "low", 600))
        await asyncio.sleep(0.05)  # it holds the only engine slot
        low = asyncio.create_task(_generate(gen, "a low one", "low", 4))
        await asyncio.sleep(0.01)
        high = asyncio.create_task(_generate(gen, "a high one", "high", 4))
        await asyncio.sleep(0.01)
        # A second waiting request of class "low" (max_queue 1, reject) is refused at once.
        with pytest.raises(Rejected) as full:
            gen.admit(gen.lm.encode("more"), SamplingParams(max_tokens=4), _ticket("low"))
        assert full.value.status == 503 and full.value.code == "queue_full"
        # A high-priority request whose deadline passes while it waits gets 504.
        with pytest.raises(Rejected) as expired:
            await _generate(gen, "in a hurry", "high", 4, timeout=0.02)
        assert expired.value.status == 504
        (low_first, _), (high_first, _), _ = await asyncio.gather(low, high, running)
        assert high_first < low_first  # queued later, served first
        # Token times are measured now: 400 tokens in 10 ms cannot be promised.
        with pytest.raises(Rejected) as late:
            gen.admit(gen.lm.encode("long"), SamplingParams(max_tokens=400), _ticket("high", 0.01))
        assert late.value.status == 503 and late.value.code == "deadline"
        assert gen.active == 0 and gen.waiting == 0
        await gen.close()

    asyncio.run(main())
