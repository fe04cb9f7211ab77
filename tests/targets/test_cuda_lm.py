"""The cuda LM path (static KV cache, ``torch.export``) run on the CPU (``target="cuda:cpu"``):
the code the GPU runs, minus CUDA graphs (those run with ``-m gpu`` on the GPU machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lm_support import hf_dir, hf_greedy

import ai_vmm
from ai_vmm.runtime.errors import InputError
from ai_vmm.runtime.llm import CausalLM, GenerationParams

PROMPT = "Return a new list containing all items from the iterable in ascending order."


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CausalLM]:
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("cuda-lm") / "llama-cuda.vmm"
    result = ai_vmm.compile(hf_dir("llama"), target="cuda:cpu", output=out, tune=False)
    assert result.report["candidates"][0]["parity"]["identical"] == 24
    model = ai_vmm.load(out)
    yield model
    model.close()


def test_static_cache_greedy_matches_transformers(lm: CausalLM) -> None:
    assert lm.target == "cuda" and lm.spec.decoder_kind == "static"
    config = lm.spec.partition.config
    assert config["device_type"] == "cpu" and config["max_cache_len"] == lm.context_length
    ids = lm.encode_prompt(PROMPT)
    assert lm.generate(PROMPT, max_new_tokens=40, min_new_tokens=40).tokens == hf_greedy(  # type: ignore[union-attr]
        "llama", ids, 40
    )


def test_static_cache_batches_and_joins(lm: CausalLM) -> None:
    prompts = [PROMPT, "Hi", "def f(x):\n    return x * 2"]
    alone = [lm.generate(p, max_new_tokens=12, min_new_tokens=12).tokens for p in prompts]  # type: ignore[union-attr]
    batch = lm.generate(prompts, max_new_tokens=12, min_new_tokens=12)
    assert [r.tokens for r in batch] == alone  # type: ignore[union-attr]
    with lm.engine(max_batch=3) as engine:
        params = GenerationParams(max_new_tokens=12, min_new_tokens=12)
        first = engine.submit(lm.encode_prompt(prompts[0]), params)
        assert first.wait(120) is not None
        handles = [engine.submit(lm.encode_prompt(p), params) for p in prompts[1:]]
        results = [h.wait(120) for h in handles]
    assert [r.tokens for r in results if r is not None] == alone[1:]


def test_steps_attend_over_windows_of_the_cache(
    lm: CausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generation that crosses several cache windows (4, 8, ... columns here) keeps
    transformers' tokens, alone and batched; an artifact without windows attends over the
    whole cache and gives the same."""
    from ai_vmm.runtime.executors import cuda_lm as executor

    config = lm.spec.partition.config
    assert config["window"] is True and config["attention"] == "grouped"
    assert "export_note" not in config  # named dims exported at once: no guard refused them
    monkeypatch.setattr(executor, "MIN_WINDOW", 4)
    decoder = lm._session  # the CudaDecoder
    assert [decoder.window(n) for n in (1, 4, 5, 9, 10**6)] == [4, 4, 8, 16, decoder.max_len]
    ids = lm.encode_prompt(PROMPT)
    expected = hf_greedy("llama", ids, 40)
    assert lm.generate(PROMPT, max_new_tokens=40, min_new_tokens=40).tokens == expected  # type: ignore[union-attr]
    prompts = [PROMPT, "Hi"]
    batch = lm.generate(prompts, max_new_tokens=20, min_new_tokens=20)
    assert batch[0].tokens == expected[:20]  # type: ignore[index]
    monkeypatch.setattr(decoder, "windowed", False)
    assert decoder.window(5) == decoder.max_len
    assert lm.generate(PROMPT, max_new_tokens=40, min_new_tokens=40).tokens == expected  # type: ignore[union-attr]


def test_greedy_steps_choose_on_the_device(lm: CausalLM) -> None:
    """``forward_greedy`` returns what an argmax over ``forward``'s logits gives, with the
    blocked tokens skipped (the scheduler takes it when every row is greedy)."""
    import numpy as np

    prompt = lm.encode_prompt(PROMPT)
    ids = np.array([prompt[-6:], prompt[:6]])
    mask = np.ones_like(ids)
    positions = np.tile(np.arange(ids.shape[1]), (2, 1))
    plain, greedy = lm._session.context(), lm._session.context()  # type: ignore[attr-defined]
    for context in (plain, greedy):
        context.forward(ids, mask, positions, np.array([ids.shape[1] - 1]))
    step = ids[:, -1:]
    wider = np.ones((2, ids.shape[1] + 1), np.int64)
    at = np.full((2, 1), ids.shape[1])
    logits = plain.forward(step, wider, at, np.zeros(1, np.int64))[:, -1]
    best = logits.argmax(axis=1)
    blocked = [np.array([best[0]]), np.array([], np.int64)]
    tokens = greedy.forward_greedy(step, wider, at, blocked)
    assert tokens.tolist() == [int(np.argsort(-logits[0])[1]), int(best[1])]
    assert greedy.length == plain.length == ids.shape[1] + 1


def test_rows_that_finish_early_leave_the_cache(
    lm: CausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row that stops first leaves the batch (``keep``: the cache rows gathered over the
    written columns); the others go on with their own keys and values."""
    from ai_vmm.runtime.executors import cuda_lm as executor

    kept: list[list[int]] = []
    real_keep = executor.CudaContext.keep

    def keep(self: Any, rows: Any) -> None:
        kept.append(list(rows))
        real_keep(self, rows)

    monkeypatch.setattr(executor.CudaContext, "keep", keep)
    prompts = [PROMPT, "def f(x):\n    return x * 2"]
    lengths = [5, 14]
    alone = [
        lm.generate(p, max_new_tokens=n, min_new_tokens=n).tokens  # type: ignore[union-attr]
        for p, n in zip(prompts, lengths, strict=True)
    ]
    with lm.engine(max_batch=2) as engine:
        handles = [
            engine.submit(lm.encode_prompt(p), GenerationParams(max_new_tokens=n, min_new_tokens=n))
            for p, n in zip(prompts, lengths, strict=True)
        ]
        results = [h.wait(120) for h in handles]
    assert [r.tokens for r in results if r is not None] == alone
    assert [1] in kept  # the first row left, the second stayed


def test_static_cache_is_bounded(lm: CausalLM, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="context"):
        lm.generate([5] * lm.context_length)


def test_export_falls_back_to_dynamic_hints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where torch.export cannot prove a guard on the named dims (torch 2.11 on the GPU
    machine), the step is exported with DYNAMIC hints, still dynamic in batch and sequence,
    and says so."""
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from ai_vmm.targets import cuda_lm

    real = cuda_lm._dynamic_shapes

    def named_refused(torch: object, layers: int, max_seq: int, *, hints: bool) -> object:
        if not hints:
            raise RuntimeError("Constraints violated (seq)! min(64*seq, 192*seq) == 64*seq")
        return real(torch, layers, max_seq, hints=hints)

    monkeypatch.setattr(cuda_lm, "_dynamic_shapes", named_refused)
    model = AutoModelForCausalLM.from_pretrained(hf_dir("llama"))
    config = model.config
    heads = (config.num_key_value_heads,) * config.num_hidden_layers
    dims = (config.hidden_size // config.num_attention_heads,) * config.num_hidden_layers
    entry, out, note = cuda_lm.build(
        model, heads, dims, tmp_path, precision="fp32", device="cpu", max_cache_len=64
    )
    assert "DYNAMIC hints" in note and "64*seq" in out["export_note"]
    assert (tmp_path / entry).is_file()


def test_the_cache_reaches_a_model_that_takes_past_key_values(tmp_path: Path) -> None:
    """transformers 5.17 (the GPU machine's) takes the cache as ``past_key_values``: the step
    must hand it over under that name, or decode steps see only their own token (the GPU run
    differed from transformers at token 1)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from ai_vmm.targets import cuda_lm

    inner = AutoModelForCausalLM.from_pretrained(hf_dir("llama")).eval()

    class OlderApi(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(
            self,
            input_ids: Any,
            attention_mask: Any = None,
            position_ids: Any = None,
            past_key_values: Any = None,
            use_cache: Any = None,
            logits_to_keep: Any = 0,
            **kwargs: Any,
        ) -> Any:
            assert "cache" not in kwargs, "the cache came under the newer name"
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=past_key_values,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
            )

    config = inner.config
    layers, max_len = config.num_hidden_layers, 32
    heads = (config.num_key_value_heads,) * layers
    dims = (config.hidden_size // config.num_attention_heads,) * layers
    entry, _, _ = cuda_lm.build(
        OlderApi(), heads, dims, tmp_path, precision="fp32", device="cpu", max_cache_len=max_len
    )
    step = torch.export.load(str(tmp_path / entry)).module()
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    kv = [torch.zeros(1, h, max_len, d) for h, d in zip(heads, dims, strict=True) for _ in (0, 1)]

    def run(tokens: Any, start: int) -> Any:
        seq = tokens.shape[1]
        mask = torch.zeros(1, max_len, dtype=torch.int64)
        mask[:, : start + seq] = 1
        positions = torch.arange(start, start + seq).unsqueeze(0)
        with torch.no_grad():
            return step(tokens, mask, positions, torch.tensor(start), torch.tensor([seq - 1]), *kv)

    run(ids[:, :5], 0)
    decoded = run(ids[:, 5:], 5)[0, -1]
    with torch.no_grad():
        full = inner(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(decoded, full, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cuda_graph_decode_on_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the GPU machine: decode steps replayed as CUDA graphs give transformers' tokens
    (fp32: identical, eager and through Inductor; bf16: same first token), alone, in a batch
    and joining an engine, with windows small enough that a generation crosses several."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    from ai_vmm.runtime.executors import cuda_lm as executor

    monkeypatch.setattr(executor, "MIN_WINDOW", 16)
    ids = None
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"llama-{precision}.vmm"
        ai_vmm.compile(
            hf_dir("llama"), target="cuda:0", output=out, precision=precision, tune=False
        )
        with ai_vmm.load(out) as lm:
            assert lm.spec.partition.config["cuda_graphs"] is True
            ids = lm.encode_prompt(PROMPT)
            tokens = lm.generate(PROMPT, max_new_tokens=40, min_new_tokens=40).tokens  # type: ignore[union-attr]
            expected = hf_greedy("llama", ids, 40)
            if precision == "fp32":
                assert tokens == expected
            else:
                assert tokens[0] == expected[0]
        if precision == "fp32":  # decode steps through Inductor, inside the graphs
            monkeypatch.setenv("AI_VMM_CUDA_LM_COMPILE", "inductor")
            with ai_vmm.load(out) as fused:
                got = fused.generate(PROMPT, max_new_tokens=40, min_new_tokens=40).tokens  # type: ignore[union-attr]
            monkeypatch.delenv("AI_VMM_CUDA_LM_COMPILE")
            assert got == expected
        with ai_vmm.load(out) as lm:
            prompts = [PROMPT, "Hi", "def f(x):\n    return x * 2"]
            alone = [lm.generate(p, max_new_tokens=12, min_new_tokens=12).tokens for p in prompts]  # type: ignore[union-attr]
            batch = lm.generate(prompts, max_new_tokens=12, min_new_tokens=12)
            got = [r.tokens for r in batch]  # type: ignore[union-attr]
            # bf16 kernels differ by batch shape: only the first tokens must agree there.
            assert (
                got == alone
                if precision == "fp32"
                else [g[0] for g in got] == [a[0] for a in alone]
            )


def test_fused_steps_give_up_only_when_the_plain_steps_run() -> None:
    """Inductor's steps fall back to the plain ones when those run the same inputs; when the
    plain steps fail too, the inputs were wrong: their error is raised and Inductor stays."""
    from ai_vmm.runtime.executors.cuda_lm import _FusedSteps

    def broken(*args: Any) -> Any:
        raise RuntimeError("InductorError: no C++ compiler")

    def bad_inputs(*args: Any) -> Any:
        raise ValueError("shape mismatch")

    steps = _FusedSteps(broken, bad_inputs)
    with pytest.raises(ValueError, match="shape mismatch"):
        steps(1)
    assert steps.note is None
    steps = _FusedSteps(broken, lambda x: x + 1)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert steps(1) == 2
    assert steps.note is not None and steps(2) == 3  # plain from then on, no second warning
