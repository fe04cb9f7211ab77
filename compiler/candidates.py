"""Single-target candidates: build one per device, verify, tune, and choose the best.

    per device: fuse -> capability -> prepare -> codegen -> load -> verify against the reference
    -> (quantize, if asked) -> time in interleaved rounds -> choose

Partitioned (multi-device) builds are ``ai_vmm.partition``'s job; the driver runs either.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from ai_vmm import hardware, registry
from ai_vmm.fusion_stage import fuse, one_line
from ai_vmm.inputs import Tolerance, compare
from ai_vmm.quantize import Progress, quantize_candidates
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import CompileError, UnsupportedModelError, VmmError
from ai_vmm.runtime.executors import Executor, create_executor
from ai_vmm.targets.base import NodeSupport, TargetOptions
from ai_vmm.tuning import measure

if TYPE_CHECKING:
    from ai_vmm.driver import CompileOptions

TUNE_ROUNDS = 3


@dataclass
class Candidate:
    device: Device
    status: str = "pending"
    reason: str = ""
    work_dir: Path | None = None
    entry: str = ""
    files: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    unsupported: dict[str, str] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    """The fusion recipe's report for this candidate's target."""
    executor: Executor | None = None
    output_names: tuple[str, ...] = ()
    quantization: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.device.key, "status": self.status}
        if self.quantization:
            out["quantization"] = self.quantization
        if self.reason:
            out["reason"] = self.reason
        if self.latency:
            out["latency"] = self.latency
        if self.verification:
            out["verification"] = self.verification
        if self.unsupported:
            out["unsupported_nodes"] = dict(sorted(self.unsupported.items())[:50])
        if self.recipe:
            out["recipe"] = self.recipe
        return out


def build_candidates(
    model: ir.Model,
    recipe: str,
    devices: list[Device],
    target_options: TargetOptions,
    options: CompileOptions,
    work: Path,
    sample: dict[str, np.ndarray] | None,
    expected: dict[str, Any] | None,
    say: Progress,
    timings: dict[str, float],
) -> list[Candidate]:
    quantizing = options.quantization.active(options.precision)
    if quantizing:
        # Lower precision is the quantize stage's job, behind its gates: build float first.
        target_options = replace(target_options, precision="fp32")
    ordered = devices if options.tune else static_order(devices)
    built: list[Candidate] = []
    for index, device in enumerate(ordered):
        candidate = Candidate(device)
        built.append(candidate)
        if not options.tune and any(c.status == "ok" for c in built):
            candidate.status, candidate.reason = "not built", "--no-tune: static rule chose earlier"
            continue
        clock = time.perf_counter()
        target = registry.get_target(device.target)
        say(f"[{device.key}] fusing ({recipe} recipe)")
        # Fusions are target-aware, so each candidate gets its own copy (tensors are shared).
        fused, candidate.recipe = fuse(model, recipe, options, device.target, target.supports_op)
        say(f"[{device.key}] checking capability")
        support: dict[str, NodeSupport] = target.capability(fused, device)
        candidate.unsupported = {n: s.reason for n, s in support.items() if not s.supported}
        if candidate.unsupported:
            candidate.status = "unsupported"
            candidate.reason = f"{len(candidate.unsupported)} nodes it cannot run"
            continue
        say(f"[{device.key}] generating code")
        candidate.work_dir = work / f"c{index}"
        candidate.work_dir.mkdir()
        try:
            prepared = target.prepare(fused, target_options)
            payload = target.codegen(prepared, device, target_options, candidate.work_dir)
            candidate.output_names = tuple(v.name or "" for v in fused.graph.outputs)
            executor = create_executor(
                device.target,
                candidate.work_dir / payload.entry,
                device.name,
                payload.config,
                candidate.output_names,
            )
        except VmmError as exc:
            candidate.status, candidate.reason = "failed", str(exc)
            continue
        except Exception as exc:  # a backend's own exception: keep its message, one line
            candidate.status, candidate.reason = "failed", one_line(exc)
            continue
        candidate.entry, candidate.files, candidate.config = (
            payload.entry,
            payload.files,
            payload.config,
        )
        timings[f"build {device.key}"] = time.perf_counter() - clock
        if sample is not None and expected is not None:
            say(f"[{device.key}] verifying against the reference")
            candidate.verification = verify(executor, sample, expected, options.tolerance)
            if not candidate.verification["passed"]:
                candidate.status = "mismatch"
                candidate.reason = "outputs differ from the reference: " + ", ".join(
                    f"{name} max abs error {r.get('max_abs_error', r.get('reason', '?'))}"
                    for name, r in candidate.verification["outputs"].items()
                    if not r["passed"]
                )
                continue
        candidate.status = "ok"
        candidate.executor = executor
    if quantizing:
        clock = time.perf_counter()
        quantize_candidates(
            model,
            [c for c in built if c.status == "ok"],
            options.quantization,
            precision=options.precision,
            target_options=target_options,
            work=work,
            host_isa=hardware.detect_cpu().isa,
            measure_speed=options.tune,
            speed_budget_s=options.tune_budget_s,
            say=say,
        )
        timings["quantize"] = time.perf_counter() - clock
    if options.tune and sample is not None:
        tune([c for c in built if c.status == "ok"], sample, options, say)
    return built


def tune(
    candidates: list[Candidate],
    sample: dict[str, np.ndarray],
    options: CompileOptions,
    say: Progress,
) -> None:
    """Time every candidate and each of its target's runtime variants; keep each one's best.

    Contenders are timed in interleaved rounds (every contender once per round) and ranked by
    the median of their round medians, so a noisy neighbour on the machine hits all alike.
    """
    contenders: list[tuple[Candidate, dict[str, Any], Executor]] = []
    for candidate in candidates:
        assert candidate.executor is not None and candidate.work_dir is not None
        contenders.append((candidate, {}, candidate.executor))
        target = registry.get_target(candidate.device.target)
        for override in target.tuning_space(candidate.device):
            config = {**candidate.config, **override}
            try:
                executor = create_executor(
                    candidate.device.target,
                    candidate.work_dir / candidate.entry,
                    candidate.device.name,
                    config,
                    candidate.output_names,
                )
            except VmmError:
                continue
            contenders.append((candidate, override, executor))
    say(f"timing {len(contenders)} contenders in {TUNE_ROUNDS} interleaved rounds")
    rounds: list[list[float]] = [[] for _ in contenders]
    budget = options.tune_budget_s / TUNE_ROUNDS
    for _ in range(TUNE_ROUNDS):
        for index, (candidate, _, executor) in enumerate(contenders):
            try:
                rounds[index].append(measure(_runner(executor, sample), budget_s=budget).median_ms)
            except VmmError as exc:
                candidate.status, candidate.reason = "failed", str(exc)
                rounds[index].append(float("inf"))
    for candidate in candidates:
        variants = [
            (statistics.median(rounds[i]), override)
            for i, (owner, override, _) in enumerate(contenders)
            if owner is candidate
        ]
        best_ms, best_override = min(variants, key=lambda item: item[0])
        candidate.config = {**candidate.config, **best_override}
        candidate.latency = {
            "median_ms": round(best_ms, 4),
            "variants": [
                {"config": override, "median_ms": round(ms, 4)} for ms, override in variants
            ],
        }


def _runner(executor: Executor, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    return lambda: executor.run(feed)


def static_order(devices: list[Device]) -> list[Device]:
    """The documented ``--no-tune`` order (see ``registry.STATIC_PRIORITY_*``)."""
    cpu = hardware.detect_cpu()
    priority = (
        registry.STATIC_PRIORITY_INTEL
        if "intel" in cpu.vendor.lower()
        else registry.STATIC_PRIORITY_OTHER
    )

    def rank(device: Device) -> tuple[int, str]:
        base = f"{device.target}:{device.name.split('.')[0]}"
        return (priority.index(base) if base in priority else len(priority), device.key)

    return sorted(devices, key=rank)


def verify(
    executor: Executor,
    sample: dict[str, np.ndarray],
    expected: dict[str, Any],
    tolerance: Tolerance,
) -> dict[str, Any]:
    try:
        got = executor.run(sample)
    except VmmError as exc:
        return {"passed": False, "outputs": {"*": {"passed": False, "reason": str(exc)}}}
    results = {}
    for name, ref in expected.items():
        if name not in got:
            results[name] = {"passed": False, "reason": "output missing"}
        elif isinstance(ref, list | dict) or ref is None:
            results[name] = {"passed": True, "note": "non-tensor output not compared"}
        else:
            results[name] = compare(got[name], ref, tolerance)
    return {
        "passed": all(r["passed"] for r in results.values()),
        "tolerance": tolerance.to_json(),
        "inputs": "synthetic (seed 0)",
        "outputs": results,
    }


def choose(built: list[Candidate], options: CompileOptions) -> tuple[Candidate, str]:
    ok = [c for c in built if c.status == "ok"]
    if not ok:
        unsupported = [c for c in built if c.status == "unsupported"]
        if unsupported and len(unsupported) == len(built):
            # A node counts when no candidate can run it; say why, per target.
            blocking = sorted(set.intersection(*(set(c.unsupported) for c in unsupported)))
            blocking = blocking or sorted({n for c in unsupported for n in c.unsupported})
            details = [
                f"{name} ("
                + "; ".join(
                    f"{c.device.key}: {c.unsupported[name]}"
                    for c in unsupported
                    if name in c.unsupported
                )
                + ")"
                for name in blocking[:5]
            ]
            raise UnsupportedModelError(
                f"no available target can run {len(blocking)} node(s): {', '.join(details)}"
                + (" ..." if len(blocking) > 5 else "")
            )
        raise CompileError(
            "no target produced a verified payload: "
            + "; ".join(f"{c.device.key}: {c.status} ({c.reason})" for c in built)
            + (
                " (use --no-verify to accept unverified outputs)"
                if any(c.status == "mismatch" for c in built)
                else ""
            )
        )
    if options.tune and all(c.latency for c in ok) and len(ok) > 1:
        best = min(ok, key=lambda c: c.latency["median_ms"] if c.latency else float("inf"))
        return best, "fastest measured on this machine"
    if len(ok) == 1 and len(built) > 1 and options.tune:
        return ok[0], "the only candidate that built and verified"
    return ok[0], (
        "first in the static priority order" if not options.tune else "the only candidate"
    )
