"""Benchmark: what a partition boundary costs.

For each model: the best single-target artifact (``--target auto``) against the same model
forced into two partitions on that same target, cut at the cheapest point of the middle half
(the topological position whose crossing tensors hold the fewest bytes). Both artifacts run
through ``ai_vmm.runtime`` in this one process, timed in interleaved rounds on the same inputs.
The difference is the overhead of one boundary (an extra executor call and the dict routing).

    python scripts/bench_partition.py [--models small_cnn,transformer_encoder,resnet]
        [--rounds 7] [--seconds 0.4] [--out docs/partition-overhead.md]

The goal (issue 5): the split costs < 10% over the best single-target run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx_ir as ir

import ai_vmm
from ai_vmm import hardware, registry
from ai_vmm.bench_suite import load_zoo
from ai_vmm.driver import _write_artifact, model_signature
from ai_vmm.frontends import load_model
from ai_vmm.partition import build_plan
from ai_vmm.passes.canonicalize import canonicalize
from ai_vmm.planner import Plan
from ai_vmm.runtime.artifact import Manifest
from ai_vmm.targets.base import TargetOptions
from ai_vmm.tuning import measure

REPO = Path(__file__).resolve().parents[1]


def cheapest_cut(model: ir.Model) -> int:
    """The position k in the middle half minimizing the elements crossing nodes[:k] | nodes[k:]."""
    nodes = list(model.graph)
    position = {id(node): i for i, node in enumerate(nodes)}
    best, best_bytes = len(nodes) // 2, float("inf")
    for k in range(len(nodes) // 4, 3 * len(nodes) // 4 + 1):
        crossing = 0
        for node in nodes[:k]:
            for value in node.outputs:
                if any(position[id(user)] >= k for user, _ in value.uses()):
                    shape = value.shape
                    dims = [d if isinstance(d, int) else 1 for d in shape] if shape else [1]
                    size = 1
                    for d in dims:
                        size *= d
                    crossing += size
        if crossing < best_bytes:
            best, best_bytes = k, crossing
    return best


def forced_split(source: Path, device_key: str, out: Path) -> tuple[Path, int]:
    """An artifact of ``source`` cut in two at the cheapest cut, both halves on ``device_key``."""
    loaded = load_model(source)
    model = loaded.model
    canonicalize(model)
    inventory = hardware.discover(registry.discoverers())
    target, _, name = device_key.partition(":")
    device = inventory.find(target, name)
    assert device is not None
    names = [node.name or "" for node in model.graph]
    k = cheapest_cut(model)
    groups = [names[:k], names[k:]]
    result = Plan(
        assignment=dict.fromkeys(names, device.key),
        groups=groups,
        cost=0.0,
        breakdown={},
        explanation={},
    )
    with tempfile.TemporaryDirectory(prefix="ai-vmm-split-") as tmp:
        build = build_plan(
            model, result, [device], {device.key}, TargetOptions(), Path(tmp), lambda m: None
        )
        inputs, outputs = model_signature(model)
        manifest = Manifest(inputs, outputs, tuple(build.partitions), {}, {}, {})
        _write_artifact(out, manifest, {}, build.payload_dirs)
    return out, k


def bench(
    name: str, zoo: Any, work: Path, rounds: int, seconds: float, batch: int
) -> dict[str, Any]:
    path = zoo.build(name, work)
    single = ai_vmm.compile(path, "auto", work / f"{name}.vmm", tune=True)
    device = single.report["chosen"]["device"]
    split, k = forced_split(path, device, work / f"{name}-split.vmm")
    feed = zoo.example_inputs(name, batch=batch)
    # The split halves use the target's default executor config; the single artifact gets the
    # same (not the tuned one), so that only the boundary differs.
    plain = ai_vmm.compile(path, device, work / f"{name}-plain.vmm", tune=False).path
    models = {"single": ai_vmm.load(plain), "split": ai_vmm.load(split)}
    samples: dict[str, list[float]] = {k2: [] for k2 in models}
    for _ in range(rounds):
        for label, model in models.items():
            samples[label].append(
                measure(lambda m=model: m.run(feed), budget_s=seconds / rounds).median_ms
            )
    single_ms = statistics.median(samples["single"])
    split_ms = statistics.median(samples["split"])
    return {
        "model": name,
        "batch": batch,
        "device": device,
        "nodes": len(list(ir.load(path).graph)),
        "cut_after_node": k,
        "single_ms": round(single_ms, 4),
        "split_ms": round(split_ms, 4),
        "boundary_overhead_us": round((split_ms - single_ms) * 1000, 1),
        "ratio": round(split_ms / single_ms, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn,transformer_encoder,resnet")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "partition-overhead.md")
    args = parser.parse_args()
    zoo = load_zoo(REPO / "models" / "zoo.py")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ai-vmm-bench-split-") as tmp:
        for name in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                print(f"[split] {name} batch {batch}", file=sys.stderr, flush=True)
                rows.append(bench(name, zoo, Path(tmp), args.rounds, args.seconds, batch))
            print(f"[split] {rows[-1]}", file=sys.stderr, flush=True)
    cpu = hardware.detect_cpu()
    lines = [
        "# Partition boundary overhead",
        "",
        f"Generated by `python scripts/bench_partition.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" on {time.strftime('%Y-%m-%d')}, {cpu.model}, {cpu.logical_cores} logical cores.",
        "",
        "Each model runs as one partition and as two partitions on the same device, cut at the "
        "cheapest point of its middle half; both through `ai_vmm.runtime`, same inputs, "
        "default executor settings, median of interleaved rounds. Goal: split / single < 1.10.",
        "",
        "| model | batch | device | nodes | cut after node | single (ms) | split (ms) | "
        "boundary overhead (us) | split / single |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['device']} | {r['nodes']} | "
            f"{r['cut_after_node']} | "
            f"{r['single_ms']:.3f} | {r['split_ms']:.3f} | {r['boundary_overhead_us']:.1f} | "
            f"{r['ratio']:.3f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r["ratio"] < 1.10 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
