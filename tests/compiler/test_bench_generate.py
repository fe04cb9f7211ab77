"""``vmmc bench --generate``'s measuring loop on a real (tiny, random-weight) Llama: our artifact
against transformers eager, one process, the same clock for both."""

from __future__ import annotations

from typing import Any

import pytest
from lm_support import reference_model, tiny_artifact

from ai_vmm.bench_generate import Engine, Row, TransformersEngine, VmmEngine, run_bench


def test_both_engines_are_timed_alike_and_agree_token_for_token() -> None:
    artifact = tiny_artifact("llama", "onnxruntime:CPU")
    model, _ = reference_model("llama")
    cases = {"short": [1, 5, 9, 13, 17], "long": [(7 * i + 3) % 200 + 1 for i in range(40)]}
    said: list[str] = []
    engines: list[Any] = [
        lambda: VmmEngine(artifact, "ai-vmm", "fp32", "tiny"),
        lambda: TransformersEngine(model),
    ]
    rows: list[Row] = run_bench(engines, cases, new_tokens=12, rounds=2, say=said.append)
    assert [r.engine for r in rows] == ["ai-vmm", "transformers eager"]
    for row in rows:
        assert row.error is None
        assert set(row.decode_tok_s) == {5, 40} and set(row.ttft_ms) == {5, 40}
        for length, speed in row.decode_tok_s.items():
            low, high = row.decode_spread[length]
            assert 0 < low <= speed <= high
            assert row.ttft_ms[length] > 0
    # Greedy float32: our artifact's 12 tokens are transformers' own.
    assert rows[0].agreement == 12
    assert any("round 2/2" in line for line in said)


def test_an_engine_that_fails_to_load_is_skipped_with_its_reason() -> None:
    def broken() -> Engine:
        raise RuntimeError("no such model")

    said: list[str] = []
    assert run_bench([broken], {"short": [1, 2, 3]}, 4, 1, said.append) == []
    assert said == ["skipped an engine: RuntimeError: no such model"]


@pytest.mark.parametrize("tokens", [2, 12])
def test_the_decode_rate_leaves_the_first_token_out(tokens: int) -> None:
    import time

    from ai_vmm import bench_generate

    start = time.perf_counter() - 1.0  # a call that took a second, its first token at 0.5 s
    rate = bench_generate._decode_rate(tokens, start, 0.5)
    assert rate == pytest.approx((tokens - 1) / 0.5, rel=0.05)
