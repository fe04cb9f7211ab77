#!/usr/bin/env python
"""The GPU half of issue 14's must-show, as one command (run it on a machine with an NVIDIA GPU).

    python scripts/deploy_gpu_check.py --out gpu-check

Model: the zoo's ResNet-50 (``models/zoo.py`` ``resnet``: transformers' ResNetConfig, random
weights: speed and power only), dynamic batch, on synthetic images (said so in explain()).

Checks (each prints PASS / FAIL / SKIP with the figures):

1. ``preferred_hardware=["NVIDIA_GPU", "CPU"]`` lands on the GPU (the CPU candidates are
   measured too and would also meet the generous latency limit).
2. The power budget: a survey deploy permits fp16/bf16 (``max_accuracy_drop``) and batches up
   to ``--max-batch`` under a budget nothing reaches; its choice (the least energy per
   inference on the GPU) draws W watts, measured by NVML. Deploying again with a budget halfway
   between W and the lowest draw any candidate had (or ``--budget``) must choose a cheaper
   setting (a smaller batch, a lower precision, or the CPU) whose draw is within the budget, and
   explain() must show measured watts for the GPU candidates (skipped when the survey's choice
   already draws the least: nothing cheaper exists). Nothing ever changes the GPU's power
   limit: the budget only chooses.

Without a GPU (or with ``--fake-nvml``, a stand-in NVML from the tests, for a dry run on a CPU
machine) check 1 is skipped and check 2 runs on the CPU candidates (thread counts, batches),
where power is estimated unless RAPL reports it. Exit status: 0 when no check failed.
Writes ``OUT/gpu-check.json`` and every deploy's explain() to ``OUT/*.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _module(name: str, path: Path) -> ModuleType:
    from ai_vmm.bench_suite import load_module

    return load_module(path, name)


def build_model(name: str, work: Path) -> Path:
    """A zoo model exported to ``work``, or an existing ``.onnx`` path as it is."""
    from ai_vmm.bench_suite import load_zoo

    if name.endswith(".onnx") and Path(name).is_file():
        return Path(name)
    zoo = load_zoo(REPO / "models" / "zoo.py")
    return Path(zoo.build(name, work))


def _chosen(deployment: Any) -> dict[str, Any]:
    return dict(deployment.explanation["chosen"])


def _watts(row: dict[str, Any]) -> tuple[float | None, bool]:
    power = row.get("figures", {}).get("power", {})
    return power.get("watts"), bool(power.get("measured"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--model", default="resnet", help="a models/zoo.py entry, or an .onnx")
    parser.add_argument(
        "--store", type=Path, default=None, help="deployment store (default build/deploy-gpu-...)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time a candidate")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--budget", type=float, default=None, help="power budget in W")
    parser.add_argument(
        "--fp32-only",
        action="store_true",
        help="survey fp32 only (no max_accuracy_drop: no fp16/bf16/INT8 builds); the cheaper "
        "setting is then a smaller batch or the CPU (a shorter run)",
    )
    parser.add_argument(
        "--fake-nvml",
        action="store_true",
        help="dry run on a CPU machine with the tests' stand-in NVML (no real GPU figures)",
    )
    args = parser.parse_args(argv)
    from ai_vmm import VMM, ConstraintError
    from ai_vmm.deploy.telemetry import Telemetry

    args.out.mkdir(parents=True, exist_ok=True)
    # Under build/ (ignored by git): on the device machine, a second run reuses the builds.
    store = args.store or REPO / "build" / "deploy-gpu-check-store"
    telemetry = None
    if args.fake_nvml:
        fakes = _module("deploy_fakes", REPO / "tests" / "deploy" / "deploy_fakes.py")
        telemetry = Telemetry.discover(nvml=fakes.FakeNvml())
    vmm = VMM(
        store=store,
        measure_seconds=args.seconds,
        telemetry=telemetry,
        progress=lambda message: log(f"    {message}"),
    )
    log("hardware:\n" + vmm.explain())
    gpu_present = any(h.name == "NVIDIA_GPU" for h in vmm.devices)
    results: dict[str, Any] = {"gpu_present": gpu_present, "checks": {}}
    failed = False

    def record(name: str, status: str, detail: str, **extra: Any) -> None:
        nonlocal failed
        failed = failed or status == "FAIL"
        results["checks"][name] = {"status": status, "detail": detail, **extra}
        log(f"{status} {name}: {detail}")

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args.model, Path(tmp))
        log(f"model {args.model}: {model} (random weights: speed and power only)")

        # 1. The GPU is preferred and lands.
        limits = {"preferred_hardware": ["NVIDIA_GPU", "CPU"], "max_latency_ms": 10_000}
        with vmm.deploy(model, limits) as deployment:
            (args.out / "1-preferred.txt").write_text(deployment.explain() + "\n")
            chosen = _chosen(deployment)
        if not gpu_present:
            record("preferred_gpu", "SKIP", f"no NVIDIA GPU here; chose {chosen['key']}")
        elif chosen["hardware"] == "NVIDIA_GPU":
            record("preferred_gpu", "PASS", f"chose {chosen['key']}", chosen=chosen)
        else:
            record("preferred_gpu", "FAIL", f"chose {chosen['key']}, not the GPU", chosen=chosen)

        # 2. A power budget below the survey's measured draw chooses a cheaper setting.
        survey_limits: dict[str, Any] = {
            "preferred_hardware": ["NVIDIA_GPU", "CPU"],
            "power_budget_watts": 1_000_000,  # reached by nothing: batching and cost objective
            "max_batch": args.max_batch,
        }
        if not args.fp32_only:
            survey_limits["max_accuracy_drop"] = {"cosine": 0.01}
        with vmm.deploy(model, survey_limits) as deployment:
            (args.out / "2-survey.txt").write_text(deployment.explain() + "\n")
            survey = _chosen(deployment)
            rows = deployment.explanation["candidates"]
        watts, measured = _watts(survey)
        results["survey"] = {"chosen": survey, "candidates": rows}
        if watts is None:
            record(
                "power_budget", "FAIL", f"the survey's choice {survey['key']} has no power figure"
            )
            return _finish(args.out, results, failed)
        lowest = min(w for w, _ in map(_watts, rows) if w is not None)
        if args.budget is None and watts <= lowest * 1.01:
            record(
                "power_budget",
                "SKIP",
                f"the survey's choice {survey['key']} already draws the least ({watts:.1f} W): "
                "there is no cheaper setting to choose",
            )
            return _finish(args.out, results, failed)
        budget = args.budget or round((watts + lowest) / 2, 2)
        how = "measured" if measured else "estimated"
        log(f"survey chose {survey['key']} drawing {watts:.1f} W ({how}); budget {budget} W")
        try:
            with vmm.deploy(model, {**survey_limits, "power_budget_watts": budget}) as deployment:
                (args.out / "3-budget.txt").write_text(deployment.explain() + "\n")
                cheaper = _chosen(deployment)
                gpu_rows = [
                    r for r in deployment.explanation["candidates"] if r["hardware"] == "NVIDIA_GPU"
                ]
        except ConstraintError as exc:
            record("power_budget", "FAIL", f"nothing within {budget} W: {exc}")
            return _finish(args.out, results, failed)
        new_watts, new_measured = _watts(cheaper)
        different = cheaper["key"] != survey["key"]
        within = new_watts is not None and new_watts <= budget
        detail = (
            f"budget {budget} W (between {watts:.1f} W of {survey['key']} and the lowest draw "
            f"{lowest:.1f} W): chose {cheaper['key']} at "
            + ("unknown power" if new_watts is None else f"{new_watts:.1f} W")
            + f" ({'measured' if new_measured else 'estimated'})"
        )
        if not (different and within):
            record("power_budget", "FAIL", detail, chosen=cheaper)
        elif gpu_present and not all(_watts(r)[1] for r in gpu_rows if r.get("figures")):
            record(
                "power_budget", "FAIL", detail + "; GPU rows lack measured watts", chosen=cheaper
            )
        else:
            record("power_budget", "PASS", detail, chosen=cheaper)
    return _finish(args.out, results, failed)


def _finish(out: Path, results: dict[str, Any], failed: bool) -> int:
    (out / "gpu-check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"wrote {out / 'gpu-check.json'}; {'FAILED' if failed else 'no check failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
