"""Stateful or paged attention for an OpenVINO decoder, chosen by measurement.

OpenVINO's CPU plugin runs our decoder two ways (``runtime/executors/openvino_lm.py``): with
the KV cache as the model's state (fused SDPA), or rewritten for PagedAttention, the kernels
GenAI's ``LLMPipeline`` uses (``runtime/executors/openvino_paged.py``). Which is faster depends
on the CPU and the model, so the compile times both on the float build, interleaved, at a
realistic request (a 400-token prompt and 64 new tokens: time to first token plus decoding), and
keeps paged unless it is slower beyond the noise, and only while it reproduces the float build's
greedy tokens (for float32: transformers' tokens, ``Built.check_parity``). Ties go to paged: it
also serves a batch without computing its padding, and rows leave and join without copies. The
choice holds for the compressed attempts too (``LMRun.attention``), so the quality gate judges
the decoder that ships.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ai_vmm.llm_quality import (
    CHOICE_NEW_TOKENS,
    CHOICE_ROUNDS,
    Speed,
    choice_prompt,
    measure_speed,
    race,
    speed_figures,
    timed_choice,
)

if TYPE_CHECKING:
    from ai_vmm.llm_build import Built, LMRun

NOISE = 0.02
"""Request times within 2 % are a tie (paged is kept)."""


def choose_attention(run: LMRun, built: Built) -> None:
    """Time ``built`` (stateful, loaded) against itself paged; keep the faster (``built`` is
    reconfigured in place) and record why in ``run.report["attention"]``."""
    prompt = choice_prompt(built.lm)
    run.say(f"attention: stateful against paged at a {len(prompt)}-token prompt")
    speeds: dict[str, list[Speed]] = {"stateful": [], "paged": []}
    for _ in range(CHOICE_ROUNDS):
        for mode in speeds:
            if built.lm.attention[0] != mode:  # a reload (the first round's stateful is loaded)
                built.reconfigure({"attention": mode})
            got, note = built.lm.attention
            if got != mode:
                return _keep_stateful(run, built, speeds, note or f"{mode} attention unavailable")
            speeds[mode].append(measure_speed(built.lm, prompt, CHOICE_NEW_TOKENS, runs=1))
    figures = {mode: speed_figures(values) for mode, values in speeds.items()}
    paged, stateful = figures["paged"], figures["stateful"]
    if paged["request_ms"] > (1 + NOISE) * stateful["request_ms"]:
        why = f"paged attention was slower: {race(paged, stateful)}"
        return _keep_stateful(run, built, speeds, why)
    if run.options.verify and run.options.precision == "fp32":
        problem = built.check_parity(run)
        if problem is not None:
            return _keep_stateful(run, built, speeds, f"paged attention: {problem}")
    run.attention = "paged"
    why = f"paged attention was not slower: {race(paged, stateful)} (interleaved rounds)"
    run.report["attention"] = timed_choice("paged", why, speeds)
    built.notes.append(f"attention: {run.report['attention']['why']}")


def _keep_stateful(run: LMRun, built: Built, speeds: dict[str, list[Speed]], why: str) -> None:
    built.reconfigure({"attention": "stateful"})
    run.attention = "stateful"
    run.report["attention"] = timed_choice("stateful", why, speeds)
