"""Fused vs unfused latency per zoo model and target, written to docs/fusion-performance.md.

For every zoo model: build it (``models/zoo.py``), canonicalize it (the unfused baseline), and
for each target run that target's recipe (``ai_vmm.passes.recipes``) on a copy (the fused
model). Both ONNX files are then loaded by the raw backend, with its default optimisations on:

* ``openvino``: ``Core().compile_model(path, "CPU")`` with f32 inference precision and the
  latency hint;
* ``onnxruntime``: ``InferenceSession(path, CPUExecutionProvider)`` (``ORT_ENABLE_ALL``).

Threads: one per runtime by default (``--threads``): on a small machine shared with other work,
several spinning worker threads per runtime turn neighbours' load into noise.

Method: the outputs of fused and unfused are compared first (a fused model that computes
something else is not timed). Then, after a warm-up, ``--rounds`` interleaved rounds each time
the unfused and the fused model for an equal time box (``--budget-ms``), in alternating order,
and take the 10th percentile of each box's call times (on a shared machine the median includes
other processes' preemptions); the reported ratio is the median over rounds of
``fused / unfused`` (below 1: fusion made it faster), the ratio of box medians beside it.
Interleaving makes drift on a shared machine hit both alike.
Inputs: ``zoo.example_inputs(name, batch)`` (sequence 16, width 128).

Usage::

    python scripts/bench_fusion.py [--zoo-dir DIR] [--rounds 15] [--budget-ms 200]
        [--threads 1] [NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm.passes.analyze import analyze
from ai_vmm.passes.canonicalize import canonicalize
from ai_vmm.passes.recipes import apply_recipe, choose_recipe

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("openvino", "onnxruntime")
Runner = Callable[[], Any]


def load_zoo() -> ModuleType:
    from ai_vmm.bench_suite import load_zoo as load

    return load(REPO / "models" / "zoo.py")


def _runner(
    target: str, path: Path, feeds: dict[str, np.ndarray], threads: int
) -> tuple[Runner, Callable[[], list[np.ndarray]]]:
    """``(run, outputs)``: one inference, and one returning the outputs as a list."""
    if target == "openvino":
        import openvino as ov

        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()

        def ov_outputs() -> list[np.ndarray]:
            result = request.infer(feeds)
            return [np.asarray(result[port]) for port in compiled.outputs]

        return (lambda: request.infer(feeds, share_inputs=True)), ov_outputs
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return (lambda: session.run(None, feeds)), (lambda: list(session.run(None, feeds)))


def _box_ms(run: Runner, budget_s: float) -> tuple[float, float]:
    """Time ``run`` repeatedly for ``budget_s``: ``(p10, median)`` of the call times in ms."""
    times = []
    end = time.perf_counter() + budget_s
    while True:
        start = time.perf_counter()
        run()
        now = time.perf_counter()
        times.append((now - start) * 1e3)
        if now >= end and len(times) >= 5:
            times.sort()
            return times[len(times) // 10], statistics.median(times)


@dataclass
class Row:
    model: str
    target: str
    recipe: str
    fusions: dict[str, int] = field(default_factory=dict)
    nodes: tuple[int, int] = (0, 0)
    unfused_ms: float = 0.0
    fused_ms: float = 0.0
    ratio: float = 0.0
    ratio_iqr: tuple[float, float] = (0.0, 0.0)
    median_ratio: float = 0.0
    max_abs_diff: float = 0.0


def _iqr(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[0], quartiles[2]


def bench_model(
    zoo: ModuleType,
    name: str,
    zoo_dir: Path,
    work: Path,
    rounds: int,
    budget_s: float,
    threads: int,
) -> list[Row]:
    source = zoo.build(name, zoo_dir)
    unfused = ir.load(source)
    canonicalize(unfused)
    unfused_path = work / f"{name}.unfused.onnx"
    ir.save(unfused, unfused_path)
    recipe = choose_recipe(analyze(unfused))
    feeds = zoo.example_inputs(name, batch=1)
    rows = []
    for target in TARGETS:
        fused = ir.load(unfused_path)
        report = apply_recipe(fused, recipe, target=target)
        fused_path = work / f"{name}.{target}.onnx"
        ir.save(fused, fused_path)
        row = Row(name, target, recipe, report.fusion_counts)
        row.nodes = (report.nodes_before, report.node_counts[-1][1])
        base_run, base_out = _runner(target, unfused_path, feeds, threads)
        fused_run, fused_out = _runner(target, fused_path, feeds, threads)
        row.max_abs_diff = max(
            float(np.max(np.abs(a - b), initial=0.0))
            for a, b in zip(base_out(), fused_out(), strict=True)
        )
        for run in (base_run, fused_run):  # warm-up
            _box_ms(run, budget_s / 2)
        fast: dict[str, list[float]] = {"base": [], "fused": []}
        typical: dict[str, list[float]] = {"base": [], "fused": []}
        for index in range(rounds):
            order = [("base", base_run), ("fused", fused_run)]
            for key, run in order if index % 2 == 0 else order[::-1]:
                p10, median = _box_ms(run, budget_s)
                fast[key].append(p10)
                typical[key].append(median)
        ratios = [f / b for f, b in zip(fast["fused"], fast["base"], strict=True)]
        row.unfused_ms = statistics.median(fast["base"])
        row.fused_ms = statistics.median(fast["fused"])
        row.ratio = statistics.median(ratios)
        row.ratio_iqr = _iqr(ratios)
        row.median_ratio = statistics.median(
            f / b for f, b in zip(typical["fused"], typical["base"], strict=True)
        )
        rows.append(row)
        print(
            f"{name:20} {target:12} {row.unfused_ms:8.3f} ms -> {row.fused_ms:8.3f} ms "
            f"ratio {row.ratio:.3f} [{row.ratio_iqr[0]:.3f}, {row.ratio_iqr[1]:.3f}] "
            f"(medians {row.median_ratio:.3f}) diff {row.max_abs_diff:.2e} {row.fusions}",
            flush=True,
        )
    return rows


def _versions() -> str:
    names = ("onnxruntime", "openvino", "onnx", "onnx-ir", "onnxscript")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_markdown(rows: list[Row], path: Path, rounds: int, budget_s: float, threads: int) -> None:
    lines = [
        "# Fusion performance: fused vs unfused, per zoo model and target",
        "",
        "Generated by `python scripts/bench_fusion.py` "
        f"({time.strftime('%Y-%m-%d', time.gmtime())}). Each model is canonicalized (the "
        "unfused baseline), then the recipe chosen from its profile is applied for each target "
        "(the fused model); both ONNX files run on the raw backend with its default "
        "optimisations (OpenVINO CPU: f32 precision, latency hint; ONNX Runtime: CPU EP, "
        f"`ORT_ENABLE_ALL`), {f'{threads} thread(s) each' if threads else 'default threads'}, "
        "batch 1, `zoo.example_inputs` (sequence 16, image sizes as in the zoo). Rows with no "
        "fusion applied time the same file twice: their spread is the noise floor.",
        "",
        f"Method: {rounds} interleaved rounds, each timing unfused and fused for "
        f"{budget_s * 1e3:.0f} ms (alternating which goes first). Per time box we take the "
        "10th percentile of the call times (the machine is shared: the median of a box "
        "includes other processes' preemptions, the fast end is the model's own cost). "
        "Latency = median over rounds of those; **ratio = median over rounds of fused / "
        "unfused** (below 1: the fused model is faster), with the interquartile range of the "
        "per-round ratios; the ratio of the box medians is shown too. The outputs of both are "
        "compared before timing (max abs diff).",
        "",
        f"Machine: {_cpu()}, {len(os.sched_getaffinity(0))} CPUs available "
        f"(shared with other work while measured). Libraries: {_versions()}.",
        "",
    ]
    for target in TARGETS:
        lines += [
            f"## {target}",
            "",
            "| model | recipe | fusions | nodes | unfused ms | fused ms | ratio | IQR | "
            "ratio of medians | max abs diff |",
            "|---|---|---|---|---:|---:|---:|---|---:|---:|",
        ]
        for row in (r for r in rows if r.target == target):
            fusions = ", ".join(f"{k} {v}" for k, v in row.fusions.items()) or "none"
            lines.append(
                f"| {row.model} | {row.recipe} | {fusions} | {row.nodes[0]} -> {row.nodes[1]} "
                f"| {row.unfused_ms:.3f} | {row.fused_ms:.3f} | **{row.ratio:.3f}** | "
                f"{row.ratio_iqr[0]:.3f}-{row.ratio_iqr[1]:.3f} | {row.median_ratio:.3f} | "
                f"{row.max_abs_diff:.1e} |"
            )
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="zoo entries (default: all)")
    parser.add_argument("--zoo-dir", type=Path, help="where zoo models are built or reused")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget-ms", type=float, default=200.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="threads per runtime (0: library default)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "fusion-performance.md")
    args = parser.parse_args(argv)
    zoo = load_zoo()
    names = args.names or list(zoo.ZOO)
    budget_s = args.budget_ms / 1e3
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-fusion-") as tmp:
        zoo_dir = args.zoo_dir or Path(tmp) / "zoo"
        for name in names:
            rows += bench_model(zoo, name, zoo_dir, Path(tmp), args.rounds, budget_s, args.threads)
    write_markdown(rows, args.out, args.rounds, budget_s, args.threads)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
