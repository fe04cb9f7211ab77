"""Token choice: greedy, seeded sampling, top-k/top-p, repetition penalty against transformers."""

from __future__ import annotations

import numpy as np
import pytest

from ai_vmm.runtime.errors import InputError
from ai_vmm.runtime.llm import GenerationParams
from ai_vmm.runtime.llm.sampling import Sampler

VOCAB = 50


def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, VOCAB).astype(np.float32)


def test_greedy_is_argmax() -> None:
    logits = _logits()
    assert Sampler(GenerationParams(), [], VOCAB).choose(logits) == int(np.argmax(logits))


def test_seeded_sampling_reproduces_and_seeds_differ() -> None:
    params = GenerationParams(temperature=1.0, seed=7)
    runs = [[Sampler(params, [], VOCAB).choose(_logits(i)) for i in range(40)] for _ in range(2)]
    assert runs[0] == runs[1]
    other = [
        Sampler(GenerationParams(temperature=1.0, seed=8), [], VOCAB).choose(_logits(i))
        for i in range(40)
    ]
    assert other != runs[0]


def test_top_k_1_and_tiny_top_p_are_greedy() -> None:
    for i in range(10):
        logits = _logits(i)
        best = int(np.argmax(logits))
        assert (
            Sampler(GenerationParams(temperature=1.5, top_k=1, seed=i), [], VOCAB).choose(logits)
            == best
        )
        assert (
            Sampler(GenerationParams(temperature=1.5, top_p=1e-6, seed=i), [], VOCAB).choose(logits)
            == best
        )


def test_sampling_follows_the_distribution() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2] + [1e-9] * (VOCAB - 3), dtype=np.float64)).astype(
        np.float32
    )
    sampler = Sampler(GenerationParams(temperature=1.0, seed=1), [], VOCAB)
    counts = np.bincount([sampler.choose(logits) for _ in range(4000)], minlength=VOCAB)
    assert abs(counts[0] / 4000 - 0.5) < 0.03 and abs(counts[2] / 4000 - 0.2) < 0.03
    top_k = Sampler(GenerationParams(temperature=1.0, top_k=2, seed=1), [], VOCAB)
    picks = {top_k.choose(logits) for _ in range(500)}
    assert picks == {0, 1}
    top_p = Sampler(GenerationParams(temperature=1.0, top_p=0.75, seed=1), [], VOCAB)
    assert {top_p.choose(logits) for _ in range(500)} == {0, 1}


def test_repetition_penalty_matches_transformers() -> None:
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = _logits(3)
    prompt = [1, 4, 4, 9, int(np.argmax(logits))]
    expected = RepetitionPenaltyLogitsProcessor(2.0)(
        torch.tensor([prompt]), torch.tensor(logits)[None]
    )[0].numpy()
    sampler = Sampler(GenerationParams(repetition_penalty=2.0), prompt, VOCAB)
    assert sampler.choose(logits) == int(np.argmax(expected))
    assert sampler.choose(logits) != int(np.argmax(logits))  # the top token was in the prompt


def test_min_new_tokens_masks_eos() -> None:
    logits = np.zeros(VOCAB, np.float32)
    logits[2] = 10.0
    sampler = Sampler(GenerationParams(min_new_tokens=2), [], VOCAB, eos_token_ids=(2,))
    assert [sampler.choose(logits) for _ in range(3)] == [0, 0, 2]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": [""]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"bogus": 1}, "unknown"),
    ],
)
def test_bad_parameters_are_input_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        GenerationParams.coerce(values)


def test_coerce_reads_openai_names() -> None:
    class Request:
        max_tokens = 5
        temperature = 0.5
        stop = None
        seed = 3

    params = GenerationParams.coerce(Request())
    assert (params.max_new_tokens, params.temperature, params.stop, params.seed) == (5, 0.5, (), 3)
    assert GenerationParams.coerce({"stop": "END"}).stop == ("END",)
