"""Where a batch's GPU time goes: our package against ``torch.compile(mode="reduce-overhead")``.

For one of ``bench_gpu.py``'s models at one batch, fp16: our cuda target's package under the
executor (CUDA graphs) and reduce-overhead, each run ``--runs`` times under the PyTorch
profiler (CUDA activity), kernels summed by name (ms per call), the largest first, side by
side. CUDA-graph replays show their kernels where the driver reports them (CUPTI); where
they do not, the table says so and gives the wall time per call instead.

    python3 scripts/gpu_kernel_profile.py bert --batch 32 --json out.json
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
sys.path.insert(0, str(REPO / "scripts"))

from bench_gpu import VARIANTS, _cast, build_model, build_ours, log  # noqa: E402


def kernels(fn: Any, runs: int) -> tuple[dict[str, float], float]:
    """Kernel name -> GPU ms per call (the runtime's profiler helper), and the wall ms per call
    of the same ``runs`` calls."""
    import torch

    from ai_vmm.runtime.executors.cuda import profile_kernels

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    totals = profile_kernels(fn, runs)
    return totals, (time.perf_counter() - started) * 1000 / runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["resnet50", "bert", "vit"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--variant", default="", help=f"build ours as bench_gpu.py's variant ({sorted(VARIANTS)})"
    )
    args = parser.parse_args()

    import copy

    import torch

    from ai_vmm.runtime.executors import create_executor

    module, inputs, dynamic = build_model(args.model)
    with tempfile.TemporaryDirectory(prefix="ai-vmm-prof-") as tmp:
        chosen = VARIANTS.get(args.variant, {}) if args.variant else {}
        extra = {k: v for k, v in chosen.items() if not k.startswith("_")}
        if extra.get("cuda_static_batches") == "timed":
            extra["cuda_static_batches"] = [args.batch]
        entry, config, _, seconds = build_ours(module, inputs, dynamic, Path(tmp), extra)
        config = {**config, **chosen.get("_executor", {})}
        log(f"ours built in {seconds:.1f} s: {config.get('inductor')}")
        ours = create_executor(
            "cuda", entry, "0", {**config, "device_outputs": ["output"]}, ("output",)
        )
        half = copy.deepcopy(module).half().cuda().eval()
        overhead = torch.compile(half, mode="reduce-overhead", dynamic=False)
        gpu32 = {k: v.cuda() for k, v in inputs(args.batch).items()}
        gpu16 = _cast(gpu32, torch.float16)
        with torch.inference_mode():
            for _ in range(3):
                overhead(**gpu16)
            result: dict[str, Any] = {
                "model": args.model,
                "batch": args.batch,
                "variant": args.variant,
                "inductor": config.get("inductor"),
            }
            for label, fn in (
                ("ours", lambda: ours.run(gpu32)),
                ("reduce-overhead", lambda: overhead(**gpu16)),
            ):
                table, wall = kernels(fn, args.runs)
                result[label] = {
                    "wall_ms": round(wall, 4),
                    "gpu_ms": round(sum(table.values()), 4),
                    "kernels": {
                        k: round(v, 4)
                        for k, v in sorted(table.items(), key=lambda kv: -kv[1])[: args.top]
                    },
                }
                log(f"{label}: wall {wall:.3f} ms, kernels {sum(table.values()):.3f} ms a call")
                for name, ms in list(result[label]["kernels"].items())[: args.top]:
                    log(f"  {ms:8.4f}  {name[:140]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
