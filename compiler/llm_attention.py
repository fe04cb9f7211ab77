"""Stateful or paged attention for an OpenVINO decoder, chosen by measurement.

OpenVINO's CPU plugin runs our decoder two ways (``runtime/executors/openvino_lm.py``): with
the KV cache as the model's state (fused SDPA), or rewritten for PagedAttention, the kernels
GenAI's ``LLMPipeline`` uses (``runtime/executors/openvino_paged.py``). Which is faster depends
on the CPU and the model, so the compile times both on the float build, interleaved, at a
realistic prompt, and keeps paged only where it is faster and still reproduces the float
build's greedy tokens (for float32: transformers' tokens, ``Built.check_parity``). The choice
holds for the compressed attempts too (``LMRun.attention``), so the quality gate judges the
decoder that ships.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from ai_vmm.llm_quality import Speed, measure_speed, realistic_prompt

if TYPE_CHECKING:
    from ai_vmm.llm_build import Built, LMRun

PROMPT_TOKENS = 400
"""The bench's long prompt (``vmmc bench --generate``): where prefill and attention show."""
NEW_TOKENS = 32
ROUNDS = 3
NOISE = 0.02
"""Decode speeds within 2 % are a tie, decided by the time to first token."""


def choose_attention(run: LMRun, built: Built) -> None:
    """Time ``built`` (stateful, loaded) against itself paged; keep the faster (``built`` is
    reconfigured in place) and record why in ``run.report["attention"]``."""
    if built.manifest.partitions[0].config.get("kv_cache_precision", "f32") != "f32":
        run.report["attention"] = {
            "chosen": "stateful",
            "why": "paged attention runs with a float32 KV cache only",
        }
        return
    tokens = min(PROMPT_TOKENS, built.lm.context_length // 2)
    prompt = realistic_prompt(built.lm.tokenizer, tokens)
    run.say(f"attention: stateful against paged at a {len(prompt)}-token prompt")
    speeds: dict[str, list[Speed]] = {"stateful": [], "paged": []}
    for _ in range(ROUNDS):
        for mode in speeds:
            built.reconfigure({"attention": mode})
            got, note = built.lm.attention
            if got != mode:
                return _keep_stateful(run, built, speeds, note or f"{mode} attention unavailable")
            speeds[mode].append(measure_speed(built.lm, prompt, NEW_TOKENS, runs=1))
    figures = {mode: _median(values) for mode, values in speeds.items()}
    paged, stateful = figures["paged"], figures["stateful"]
    faster = paged["decode_tok_s"] > (1 + NOISE) * stateful["decode_tok_s"]
    tie = paged["decode_tok_s"] >= (1 - NOISE) * stateful["decode_tok_s"]
    if not (faster or (tie and paged["ttft_ms"] < stateful["ttft_ms"])):
        why = (
            f"paged attention was not faster: {paged['decode_tok_s']:.1f} against "
            f"{stateful['decode_tok_s']:.1f} tok/s, TTFT {paged['ttft_ms']:.0f} against "
            f"{stateful['ttft_ms']:.0f} ms"
        )
        return _keep_stateful(run, built, speeds, why)
    if run.options.verify and run.options.precision == "fp32":
        problem = built.check_parity(run)
        if problem is not None:
            return _keep_stateful(run, built, speeds, f"paged attention: {problem}")
    run.attention = "paged"
    run.report["attention"] = {
        "chosen": "paged",
        "why": (
            f"paged decoded {paged['decode_tok_s']:.1f} tok/s against "
            f"{stateful['decode_tok_s']:.1f} stateful, TTFT {paged['ttft_ms']:.0f} against "
            f"{stateful['ttft_ms']:.0f} ms ({len(prompt)}-token prompt, medians of {ROUNDS} "
            "interleaved rounds)"
        ),
        **figures,
    }
    built.notes.append(f"attention: {run.report['attention']['why']}")


def _keep_stateful(run: LMRun, built: Built, speeds: dict[str, list[Speed]], why: str) -> None:
    built.reconfigure({"attention": "stateful"})
    run.attention = "stateful"
    run.report["attention"] = {
        "chosen": "stateful",
        "why": why,
        **{mode: _median(values) for mode, values in speeds.items() if values},
    }


def _median(values: list[Speed]) -> dict[str, Any]:
    return {
        "decode_tok_s": round(statistics.median(v.decode_tok_s for v in values), 2),
        "ttft_ms": round(1000 * statistics.median(v.ttft_s for v in values), 2),
        "rounds": [v.to_json() for v in values],
    }
