"""``CausalLM.generate`` on tiny random-weight artifacts, both CPU targets, against transformers.

Lean on purpose: one architecture (Llama, with grouped-query attention), 40 greedy tokens. The
200-token run over six architectures is ``tests/runtime/llm/test_parity_heavy.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lm_support import hf_greedy, reference_model, tiny_artifact

import ai_vmm
from ai_vmm.runtime.errors import InputError
from ai_vmm.runtime.llm import CausalLM, GenerationResult

TARGETS = ("onnxruntime:CPU", "openvino:CPU", "openvino:CPU+paged")
PROMPT = "Return a new list containing all items from the iterable in ascending order."


@pytest.fixture(scope="module", params=TARGETS)
def lm(request: pytest.FixtureRequest) -> Iterator[CausalLM]:
    model = ai_vmm.load(tiny_artifact("llama", request.param))
    yield model
    model.close()


def test_greedy_matches_transformers(lm: CausalLM) -> None:
    ids = lm.encode_prompt(PROMPT)
    result = lm.generate(PROMPT, max_new_tokens=40, min_new_tokens=40)
    assert isinstance(result, GenerationResult)
    assert result.tokens == hf_greedy("llama", ids, 40)
    assert result.finish_reason == "length" and result.prompt_tokens == len(ids)
    assert result.ttft_s is not None and result.ttft_s > 0 and result.tpot_s is not None
    assert result.text == lm.tokenizer.decode(result.tokens)


def test_batch_of_different_lengths_equals_each_alone(lm: CausalLM) -> None:
    prompts = [PROMPT, "Hi", "def f(x):\n    return x * 2  # doubled and more text to pad"]
    alone = [lm.generate(p, max_new_tokens=24, min_new_tokens=24).tokens for p in prompts]
    batch = lm.generate(prompts, max_new_tokens=24, min_new_tokens=24)
    assert isinstance(batch, list)
    assert [r.tokens for r in batch] == alone


def test_chat_messages_use_the_template(lm: CausalLM) -> None:
    _, tokenizer = reference_model("llama")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert lm.encode_prompt(messages) == expected
    result = lm.generate(messages, max_new_tokens=8, min_new_tokens=8)
    assert result.tokens == hf_greedy("llama", expected, 8)  # type: ignore[union-attr]


def test_stream_yields_the_same_text(lm: CausalLM) -> None:
    full = lm.generate(PROMPT, max_new_tokens=30, min_new_tokens=30)
    stream = lm.generate(PROMPT, max_new_tokens=30, min_new_tokens=30, stream=True)
    pieces = list(stream)  # type: ignore[call-overload]
    assert len(pieces) > 1
    assert "".join(pieces) == full.text  # type: ignore[union-attr]
    assert stream.result is not None and stream.result.tokens == full.tokens  # type: ignore[union-attr]


def test_stop_strings_and_eos(lm: CausalLM) -> None:
    full = lm.generate(PROMPT, max_new_tokens=30, min_new_tokens=30)
    text = full.text  # type: ignore[union-attr]
    cut = text[len(text) // 2 : len(text) // 2 + 3]
    if cut.strip():
        stopped = lm.generate(PROMPT, max_new_tokens=30, min_new_tokens=30, stop=[cut])
        assert stopped.finish_reason == "stop"  # type: ignore[union-attr]
        assert stopped.text == text[: text.index(cut)]  # type: ignore[union-attr]
    free = lm.generate(PROMPT, max_new_tokens=200)
    assert free.finish_reason in ("stop", "length")  # type: ignore[union-attr]
    if free.finish_reason == "stop":  # type: ignore[union-attr]
        assert free.tokens[-1] in lm.tokenizer.eos_token_ids  # type: ignore[union-attr]


def test_seeded_sampling_is_reproducible(lm: CausalLM) -> None:
    kwargs = {"max_new_tokens": 20, "temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 11}
    first = lm.generate(PROMPT, **kwargs)  # type: ignore[arg-type]
    again = lm.generate(PROMPT, **kwargs)  # type: ignore[arg-type]
    assert first.tokens == again.tokens  # type: ignore[union-attr]
    in_batch = lm.generate([PROMPT, "another prompt, sampled too"], **kwargs)  # type: ignore[arg-type]
    assert in_batch[0].tokens == first.tokens  # type: ignore[index,union-attr]
    other = lm.generate(PROMPT, **{**kwargs, "seed": 12})  # type: ignore[arg-type]
    assert other.tokens != first.tokens  # type: ignore[union-attr]


def test_bad_requests_are_input_errors(lm: CausalLM) -> None:
    with pytest.raises(InputError, match="empty"):
        lm.generate("")
    with pytest.raises(InputError, match="context"):
        lm.generate([1] * lm.context_length)
    with pytest.raises(InputError, match="vocabulary"):
        lm.generate([10**9])
    with pytest.raises(InputError, match="temperature"):
        lm.generate(PROMPT, temperature=-1)
    with pytest.raises(InputError, match="one prompt"):
        lm.generate([PROMPT, PROMPT], stream=True)
    with pytest.raises(InputError, match="prompt"):
        lm.generate(3.5)  # type: ignore[arg-type]


def test_log_likelihood_matches_transformers(lm: CausalLM) -> None:
    torch = pytest.importorskip("torch")
    model, _ = reference_model("llama")
    ids = lm.tokenizer.encode(PROMPT * 3)
    total, count = lm.log_likelihood(ids, window=16)
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert count == len(ids) - 1
    assert abs(total / count - loss) < 1e-3
