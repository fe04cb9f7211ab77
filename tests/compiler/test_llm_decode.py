"""A tuned cuda LM compile times plain decode steps against Inductor-compiled ones and keeps
the faster (``compiler/llm_decode.py``), on the CPU through ``target="cuda:cpu"``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lm_support import hf_dir, hf_greedy

import ai_vmm

pytest.importorskip("torch")


@pytest.mark.parametrize("faster", ["inductor", "none"])
def test_tuned_compile_keeps_the_faster_decode_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faster: str
) -> None:
    """The choice follows the measurements (scripted here: a tiny model's timings are host
    noise); the artifact and the loaded decoder follow it, and Inductor's steps (really
    compiled here, on the CPU) keep transformers' greedy tokens."""
    from ai_vmm import llm_decode
    from ai_vmm.llm_quality import Speed

    monkeypatch.delenv("AI_VMM_CUDA_LM_COMPILE", raising=False)
    seen: list[str] = []

    def scripted(lm: Any, prompt: Any, new_tokens: int, runs: int = 3) -> Speed:
        mode = lm.decode_compile[0]
        seen.append(mode)
        lm.generate(list(prompt)[:8], max_new_tokens=2, min_new_tokens=2)  # it really runs
        return Speed(len(prompt), new_tokens, 0.05, 100.0 if mode == faster else 50.0, runs)

    monkeypatch.setattr(llm_decode, "measure_speed", scripted)
    result = ai_vmm.compile(
        hf_dir("llama"), target="cuda:cpu", output=tmp_path / "tuned.vmm", cache_dir=tmp_path
    )
    choice = result.report["decode_compile"]
    assert seen.count("none") == seen.count("inductor") == llm_decode.CHOICE_ROUNDS + 1  # + warm-up
    assert choice["chosen"] == faster, choice
    assert choice["inductor"]["decode_tok_s"] == (100.0 if faster == "inductor" else 50.0)
    config = result.manifest["partitions"][0]["config"]
    assert config.get("decode_compile", "none") == faster
    with ai_vmm.load(result.path) as lm:
        assert lm.decode_compile == (faster, None)
        prompt = "Return a new list containing all items from the iterable."
        reply = lm.generate(prompt, max_new_tokens=16, min_new_tokens=16)
        assert reply.tokens == hf_greedy("llama", lm.encode_prompt(prompt), 16)  # type: ignore[union-attr]


def test_a_failing_inductor_keeps_plain_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ai_vmm.runtime.executors import cuda_lm

    monkeypatch.delenv("AI_VMM_CUDA_LM_COMPILE", raising=False)

    class Broken(cuda_lm.CudaDecoder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.decode_compile == "inductor":
                raise RuntimeError("no C++ compiler for Inductor here")

    monkeypatch.setattr(cuda_lm, "CudaDecoder", Broken)
    result = ai_vmm.compile(
        hf_dir("llama"), target="cuda:cpu", output=tmp_path / "plain.vmm", cache_dir=tmp_path
    )
    choice = result.report["decode_compile"]
    assert choice["chosen"] == "none" and "no C++ compiler" in choice["why"]
    assert result.manifest["partitions"][0]["config"].get("decode_compile", "none") == "none"


def test_inductor_that_fails_at_its_first_steps_keeps_plain_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inductor compiles at the first decode step: where that fails (patched here), the
    runtime goes on with plain steps and says why, and the compile keeps plain steps."""
    import torch

    monkeypatch.delenv("AI_VMM_CUDA_LM_COMPILE", raising=False)

    def no_compiler(module: Any, **kwargs: Any) -> Any:
        def fails(*args: Any) -> Any:
            raise RuntimeError("InductorError: no working C++ compiler")

        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(RuntimeWarning, match="plain steps"):
        result = ai_vmm.compile(
            hf_dir("llama"), target="cuda:cpu", output=tmp_path / "plain.vmm", cache_dir=tmp_path
        )
    choice = result.report["decode_compile"]
    assert choice["chosen"] == "none" and "no working C++ compiler" in choice["why"]
    monkeypatch.setenv("AI_VMM_CUDA_LM_COMPILE", "inductor")  # the runtime alone, forced
    with ai_vmm.load(result.path) as lm:
        prompt = "Return a new list containing all items from the iterable."
        with pytest.warns(RuntimeWarning, match="no working C\\+\\+ compiler"):
            reply = lm.generate(prompt, max_new_tokens=12, min_new_tokens=12)
        assert reply.tokens == hf_greedy("llama", lm.encode_prompt(prompt), 12)  # type: ignore[union-attr]
        mode, note = lm.decode_compile
        assert mode == "inductor" and note is not None and "plain steps" in note
