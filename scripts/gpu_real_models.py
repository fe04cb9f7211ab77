"""Issue 18, "every model that exports": real public models compiled for the GPU (cuda target).

For each model: ``ai_vmm.compile(model, target="cuda:0", samples=<its real inputs>)``, the
artifact checked against ONNX Runtime (CPU) on every real sample, then timed at the first
sample in interleaved rounds against ONNX Runtime on the CPU beside it and against the same
converted module in PyTorch eager on the GPU (``targets/cuda_convert.to_torch``). Rows are
written to ``--json`` as they finish (a time box that ends the call keeps the finished ones).

Needs the models' files and their input data in ``--cache`` (the names of
``models/realmodels.py``; ``scripts/gpu_realmodels_carry.sh`` copies a subset that fits a
device call's carry) and no package index: nothing is fetched.

    python3 scripts/gpu_real_models.py --cache .realmodels --json out.json \\
        ppocr_v4_det nudenet_320n silero_vad_sequence magika smart_turn_v3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _say(message: str) -> None:
    print(f"[gpu-real] {message}", flush=True)


def _eager_module(source: Path) -> Any:
    import onnx_ir as ir

    from ai_vmm.driver import normalize_dims
    from ai_vmm.passes.canonicalize import canonicalize
    from ai_vmm.targets.cuda_convert import to_torch

    model = ir.load(source)
    normalize_dims(model)
    canonicalize(model, frozenset())
    return to_torch(model).eval().to("cuda")


def bench(rm: Any, name: str, cache: Path, work: Path, rounds: int, box_s: float) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    import ai_vmm
    from ai_vmm.bench_real import check_artifact, round_ratio, time_rounds
    from ai_vmm.runtime import load

    source = rm.model_path(name, cache)
    samples = rm.samples(name, cache)
    shapes = {k: list(v.shape) for k, v in samples[0].items()}
    row: dict[str, Any] = {"model": name, "shapes": shapes}
    start = time.perf_counter()
    try:
        result = ai_vmm.compile(source, "cuda:0", work / f"{name}.vmm", samples=samples)
    except Exception as exc:  # a compile that fails is the finding
        row["error"] = f"compile: {type(exc).__name__}: {' '.join(str(exc).split())[:1500]}"
        return row
    row["compile_s"] = round(time.perf_counter() - start, 1)
    manifest = json.loads((Path(result.path) / "manifest.json").read_text())
    row["partitions"] = [  # how each GPU payload runs: AOTInductor, or eagerly where it failed
        {
            "target": part.get("target"),
            "runner": part.get("config", {}).get("runner", "aoti"),
            "cuda_graphs": part.get("config", {}).get("cuda_graphs"),
            "inductor_note": part.get("config", {}).get("inductor_note"),
            "pad_batch": part.get("config", {}).get("pad_batch"),
            "static_batches": sorted(part.get("config", {}).get("static_batches") or {}),
            "static_dispatch": part.get("config", {}).get("static_dispatch"),
            "static_note": part.get("config", {}).get("static_note"),
        }
        for part in manifest.get("partitions", [])
    ]
    checked = check_artifact(result.path, source, samples)
    row["match"], row["samples"] = checked["match"], checked["samples"]
    artifact = load(result.path)
    feed = samples[0]
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    module = _eager_module(source)
    args = [torch.from_numpy(np.asarray(feed[n])).to("cuda") for n in module.input_names]

    def eager() -> Any:
        with torch.no_grad():
            out = module(*args)
        torch.cuda.synchronize()
        return out

    runs = {
        "ours": lambda: artifact.run(feed),
        "onnxruntime_cpu": lambda: session.run(None, feed),
        "torch_eager_gpu": eager,
    }
    for run in runs.values():
        run()
    medians = time_rounds(runs, rounds, box_s, _say)
    row["ms"] = {k: round(statistics.median(v), 3) for k, v in medians.items()}
    row["ours_over"] = {k: round_ratio(medians["ours"], medians[k]) for k in runs if k != "ours"}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="time box per contender")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "models"))
    from ai_vmm.bench_real import load_realmodels

    rm = load_realmodels(REPO / "models" / "realmodels.py")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            _say(f"{name} ...")
            try:
                row = bench(rm, name, args.cache, Path(tmp), args.rounds, args.seconds)
            except Exception as exc:  # a file the carry lacks: the next models still run
                row = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:1500]}
            rows.append(row)
            args.json.write_text(json.dumps(rows, indent=1))
            keys = ("model", "compile_s", "match", "ms", "partitions", "error")
            _say(json.dumps({k: row.get(k) for k in keys}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
