"""The order of the quality gate's attempts (``llm_build.gate_weights``), with the builds and
the measurements replaced by fakes: which share of INT4 layers and which activation groups are
tried, and which attempt ships. (The gate itself runs on real models in test_llm_compile.py.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ai_vmm import llm_build
from ai_vmm.runtime.devices import Device

CPU = Device("openvino", "CPU", "cpu", "CPU (test)", {})


class FakeLM:
    def __init__(self, ratio: float | None) -> None:
        self.ratio = ratio
        self.group: int | None = None
        self.tokenizer = SimpleNamespace(encode=lambda text: list(range(64)))


class FakeBuilt:
    def __init__(self, ratio: float | None, tried: list[Any]) -> None:
        self.lm, self.weights, self.device = FakeLM(ratio), ratio, CPU
        self.notes: list[str] = []
        self.parity: Any = None
        self.quality: Any = None
        self.closed = False
        self._tried = tried
        if ratio is not None:
            tried.append((ratio, None))

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.lm.group = config["dynamic_quantization_group_size"]
        self._tried.append((self.lm.ratio, self.lm.group))

    def close(self) -> None:
        self.closed = True


def _gate(monkeypatch: pytest.MonkeyPatch, passes: Any) -> tuple[Any, list[Any]]:
    """Run ``gate_weights`` for INT4 where an attempt passes when ``passes(ratio, group)``
    (``group``: the activation groups, None for the plugin's default of 32, 0 for off)."""
    tried: list[Any] = []
    monkeypatch.setattr(llm_build, "docstring_corpus", lambda *a: "text")
    monkeypatch.setattr(llm_build, "chat_prompts", lambda tok: [[1, 2, 3]])
    monkeypatch.setattr(llm_build, "greedy", lambda lm, prompts, n: [[1, 2, 3, 4, 5, 6]])
    monkeypatch.setattr(llm_build, "_dynamic_quantization", lambda built: 32)

    def perplexity(lm: FakeLM, corpus: Any) -> float:
        if lm.ratio is None:
            return 10.0
        return 10.0 if passes(lm.ratio, lm.group) else 20.0

    monkeypatch.setattr(llm_build, "perplexity", perplexity)
    monkeypatch.setattr(
        llm_build, "build_candidate", lambda run, device, spec: FakeBuilt(spec.ratio, tried)
    )
    options = SimpleNamespace(
        weights="int4", ratio=None, group_size=None, max_perplexity_increase=None,
        min_agreement=0.5, force_weights=False,
    )  # fmt: skip
    run = SimpleNamespace(options=options, say=lambda message: None)
    kept = llm_build.gate_weights(run, FakeBuilt(None, tried))  # type: ignore[arg-type]
    return kept, tried


def test_a_smaller_share_of_int4_comes_before_activation_groups_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ratio 1.0 passes only with dynamic quantization off, which decodes slower: ratio 0.8
    with the plugin's default ships, and off is not tried at 1.0."""
    kept, tried = _gate(monkeypatch, lambda ratio, group: group == 0 or ratio <= 0.8)
    assert kept.lm.ratio == 0.8 and kept.lm.group is None
    assert (1.0, 0) not in tried
    assert tried[:4] == [(1.0, None), (1.0, 64), (1.0, 128), (0.8, None)]


def test_activation_groups_off_is_the_last_resort(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where only dynamic quantization off passes, it is tried at the last share and ships."""
    kept, tried = _gate(monkeypatch, lambda ratio, group: group == 0)
    assert kept.lm.group == 0 and kept.lm.ratio == llm_build.INT4_RATIOS[-1]
    assert [t for t in tried if t[1] == 0] == [(llm_build.INT4_RATIOS[-1], 0)]
    assert "dynamic quantization of activations off" in kept.notes[-1]
