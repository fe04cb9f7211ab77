"""Plain or Inductor-compiled decode steps for a cuda LM, chosen by measurement.

The cuda LM step (``targets/cuda_lm.py``) is an exported program; its decode steps replay as
CUDA graphs of its kernels as they are. ``decode_compile: inductor`` runs them through
``torch.compile`` first (fused kernels inside the same graphs), at the price of compiling at
the first step of each batch size in every process that loads the artifact. Whether that pays
depends on the model and the GPU, so the compile times both on the built candidate, at a
realistic request (a 400-token prompt and 64 new tokens, after a warm-up that compiles), and
keeps Inductor only if it is faster beyond the noise and still reproduces the build's greedy
tokens (float32: transformers' tokens, ``Built.check_parity``).
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

GAIN = 0.03
"""Inductor must cut the request time by more than this (3 %) to be kept."""


def choose_decode_compile(run: LMRun, built: Built) -> None:
    """Time ``built`` (loaded with plain decode steps) against itself with Inductor; keep
    the faster and record why in ``run.report["decode_compile"]``."""
    prompt = choice_prompt(built.lm)
    run.say(f"decode steps: plain against Inductor at a {len(prompt)}-token prompt")
    speeds: dict[str, list[Speed]] = {}
    for mode in ("none", "inductor"):
        if mode != "none":
            try:
                built.reconfigure({"decode_compile": mode})
            except Exception as exc:  # torch.compile unavailable or broken here
                return _keep_plain(run, built, speeds, f"Inductor did not load: {exc}")
        try:
            measure_speed(built.lm, prompt[:32], 8, runs=1)  # compiles, captures
            note = built.lm.decode_compile[1]
            if note is not None:  # Inductor gave up at its first steps here
                return _keep_plain(run, built, speeds, note)
            speeds[mode] = [
                measure_speed(built.lm, prompt, CHOICE_NEW_TOKENS, runs=1)
                for _ in range(CHOICE_ROUNDS)
            ]
        except Exception as exc:
            if mode == "none":
                raise
            return _keep_plain(run, built, speeds, f"Inductor failed to run: {exc}")
    figures = {mode: speed_figures(values) for mode, values in speeds.items()}
    fused, plain = figures["inductor"], figures["none"]
    if fused["request_ms"] >= (1 - GAIN) * plain["request_ms"]:
        return _keep_plain(run, built, speeds, f"Inductor was not faster: {race(fused, plain)}")
    if run.options.verify:
        problem = built.check_parity(run)
        if problem is not None:
            return _keep_plain(run, built, speeds, f"Inductor: {problem}")
    why = f"Inductor was faster: {race(fused, plain)}"
    run.report["decode_compile"] = timed_choice("inductor", why, speeds)
    built.notes.append(f"decode steps: {run.report['decode_compile']['why']}")


def _keep_plain(run: LMRun, built: Built, speeds: dict[str, list[Speed]], why: str) -> None:
    if built.manifest.partitions[0].config.get("decode_compile", "none") != "none":
        built.reconfigure({"decode_compile": "none"})
    run.report["decode_compile"] = timed_choice("none", why, speeds)
    built.notes.append(f"decode steps: {why}")
