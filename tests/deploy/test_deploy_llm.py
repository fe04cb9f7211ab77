"""Deploying causal LMs: ``Deployment.generate`` delegates to the LM runtime object, the search
measures time to first token and generated tokens/s. A tiny random-weight Llama
(``models/tiny_lms.py``: random weights, a real tokenizer) keeps this test small; the real
SmolLM2 GGUF runs in the heavy test and in docs/deploy.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ai_vmm
from ai_vmm import VMM, ConstraintError, InputError
from tests_support import load_module

REPO = Path(__file__).resolve().parents[2]
GGUF = (
    Path(os.environ.get("AI_VMM_REALMODELS", Path.home() / ".cache/ai-vmm/realmodels"))
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama compiled for ONNX Runtime (the export is the slow part: done once)."""
    tiny = load_module(REPO / "models" / "tiny_lms.py", "ai_vmm_models_tiny_lms")
    folder = tmp_path_factory.mktemp("lm") / "tiny-llama"
    tiny.save("llama", folder)
    out = folder.parent / "tiny-llama.vmm"
    ai_vmm.compile(folder, "onnxruntime:CPU", out, tune=False)
    return out


def test_deploy_generate_stats(tiny_lm: Path, tmp_path: Path) -> None:
    vmm = VMM(store=tmp_path / "store", measure_seconds=0.2)
    prompts = ["What is the capital of France?", "def add(a, b):"]
    model = vmm.deploy(tiny_lm, {"max_latency_ms": 10_000}, samples=prompts)
    assert model.kind == "causal-lm"
    record = model.explanation
    assert record["samples"]["description"] == "2 prompts"
    assert any("time to first token" in note for note in record["notes"])
    keys = [row["key"] for row in record["candidates"]]
    assert any(k.startswith("onnxruntime:CPU fp32, 1 thread") for k in keys)
    for row in record["candidates"]:
        assert row["figures"]["throughput_per_s"] > 0  # generated tokens per second
    direct = ai_vmm.runtime.load(tiny_lm)
    expected = direct.generate(prompts[0], max_new_tokens=6)
    direct.close()
    got = model.generate(prompts[0], max_new_tokens=6)
    assert got.tokens == expected.tokens  # greedy: the same tokens as the runtime object
    stream = model.generate(prompts[1], max_new_tokens=4, stream=True)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text  # the runtime's stream, passed through
    stats = model.stats()
    assert stats["calls"] == 2
    assert stats["tokens_generated"] == len(got.tokens) + len(stream.result.tokens)
    # An LM call's latency is its time to first token (what max_latency_ms bounds for LMs).
    assert model._monitor.latencies[0] == pytest.approx(1000.0 * got.ttft_s)
    with pytest.raises(InputError, match="call generate"):
        model.run({"input_ids": [[1]]})
    model.close()


def test_nothing_meets_for_an_lm(tiny_lm: Path, tmp_path: Path) -> None:
    vmm = VMM(store=tmp_path / "store", measure_seconds=0.1)
    with pytest.raises(ConstraintError, match=r"best throughput [\d.]+/s < 1e\+09/s"):
        vmm.deploy(tiny_lm, {"min_throughput": 1e9}, samples=["Hello"])


def test_prompts_must_be_text(tiny_lm: Path, tmp_path: Path) -> None:
    vmm = VMM(store=tmp_path / "store", measure_seconds=0.1)
    with pytest.raises(InputError, match="samples for a causal LM are prompts"):
        vmm.deploy(tiny_lm, samples=[{"input_ids": 1}])


@pytest.mark.heavy
@pytest.mark.skipif(not GGUF.is_file(), reason=f"{GGUF} not fetched (shared/realmodels/fetch.sh)")
def test_quick_start_gguf(tmp_path: Path) -> None:
    """The issue's quick start, first half, on the real SmolLM2 GGUF (minutes: the export)."""
    vmm = VMM(store=tmp_path / "store", measure_seconds=0.5)
    model = vmm.deploy(str(GGUF))
    response = model.generate("Hello, how are you?")  # as written: a raw string, no template
    assert response.finish_reason in ("stop", "length")
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    reply = model.generate(chat, max_new_tokens=16)
    assert "Paris" in reply.text
    assert model.stats()["calls"] == 2
    model.close()


def test_prompts_from_lists_strings_and_files(tmp_path: Path) -> None:
    from ai_vmm.deploy.llm import DEFAULT_PROMPTS, prompts_of

    assert prompts_of(None) == (list(DEFAULT_PROMPTS), True)
    assert prompts_of("Hi") == (["Hi"], False)
    chat = [{"role": "user", "content": "Hi"}]
    assert prompts_of([chat, "Yo"]) == ([chat, "Yo"], False)
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond one\n")
    assert prompts_of(tmp_path / "p.txt") == (["first prompt", "second one"], False)
    assert prompts_of(str(tmp_path / "p.txt"))[0] == ["first prompt", "second one"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InputError, match="holds no prompt"):
        prompts_of(tmp_path / "empty.txt")
