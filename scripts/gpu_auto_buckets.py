#!/usr/bin/env python
"""`--target auto` with shape buckets on a machine with a GPU (issue 18): which device each batch
bucket goes to, and why.

    python scripts/gpu_auto_buckets.py --json auto.json [--models resnet,transformer_encoder]
        [--batches 1,64]

Per zoo model (random weights: speed only): ``ai_vmm.compile(model, target="auto",
samples=[inputs at each batch])``, so every candidate (the CPU targets and ``cuda:0``) is
timed at each batch size; prints each bucket's choice and every candidate's median there, and
the compile's time. Writes the rows to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_model(name: str, batches: list[int], work: Path) -> dict[str, Any]:
    import ai_vmm
    from ai_vmm.bench_suite import load_zoo

    zoo = load_zoo(REPO / "models" / "zoo.py")
    source = zoo.build(name, work)
    samples = [zoo.example_inputs(name, batch=b) for b in batches]
    started = time.perf_counter()
    result = ai_vmm.compile(
        source, target="auto", output=work / f"{name}.vmm", samples=samples, progress=print
    )
    seconds = round(time.perf_counter() - started, 1)
    report = result.report
    medians: dict[str, dict[str, float]] = {}
    variants: dict[str, dict[str, Any]] = {}  # bucket -> device -> runtime variants timed there
    for candidate in report.get("candidates", []):
        for bucket, stats in ((candidate.get("latency") or {}).get("buckets") or {}).items():
            device = candidate.get("device", "?")
            medians.setdefault(bucket, {})[device] = stats.get("median_ms")
            if len(stats.get("variants") or []) > 1:  # e.g. cuda:0's static_dispatch
                variants.setdefault(bucket, {})[device] = {
                    "chosen_config": stats.get("chosen_config"),
                    "reason": stats.get("variant_reason"),
                    "medians_ms": [
                        [v.get("config"), v.get("median_ms")] for v in stats["variants"]
                    ],
                }
    row = {
        "model": name,
        "compile_s": seconds,
        "chosen": report.get("chosen"),
        "buckets": report.get("buckets"),
        "medians_ms": medians,
        "variants": variants,
        "candidates": [
            {k: c.get(k) for k in ("device", "status", "reason")}
            for c in report.get("candidates", [])
        ],
        "plans": result.manifest.get("plans") if isinstance(result.manifest, dict) else None,
    }
    choices = {c["bucket"]: c for c in report.get("buckets") or []}
    primary = choices.get("primary", {})
    for bucket, times in medians.items():
        choice = choices.get(bucket, primary)
        print(
            f"[{name}] {bucket}: {choice.get('chosen')} ({choice.get('rule')}); "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(times.items()) if v is not None),
            flush=True,
        )
        for device, timed in variants.get(bucket, {}).items():
            print(f"[{name}] {bucket}: {device} variants {timed}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet,transformer_encoder")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ai-vmm-auto-") as tmp:
        for name in args.models.split(","):
            try:
                rows.append(run_model(name, batches, Path(tmp)))
            except Exception as exc:
                print(f"[{name}] failed: {type(exc).__name__}: {exc}", flush=True)
                rows.append({"model": name, "failed": f"{type(exc).__name__}: {exc}"[:800]})
            args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
