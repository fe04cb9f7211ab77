#!/usr/bin/env python
"""Issue 18's crash, replayed on a GPU: CUDA graphs of one cuda package at several shapes.

Builds the issue's model (``tests/support/convformer.py``: conv stem, ``nn.MultiheadAttention``
blocks, depthwise conv in the MLP) from ONNX for ``cuda:0`` once, then runs the scenario below
in a fresh process per executor variant (an illegal memory access ends the process's CUDA
context, so each variant needs its own):

1. capture once and drop it (what codegen's graph check does in the compiling process);
2. executor A: batches 1, 3, 8 against the eager module, then batch 1 again (the issue's order);
3. executor B on the same package in the same process, interleaved with A at 1, 2, 3, 5, 8;
4. other code's cuBLAS work: workspaces cleared (as torch.compile's CUDA-graph trees do), the
   cache emptied, matmuls on fresh memory; then A and B again;
5. A dropped; B again; then four threads calling B at random batch sizes.

Variants: ``new`` (``ai_vmm.runtime.executors.cuda`` as shipped), ``new+cudnn-benchmark``
(cuDNN's autotuner on while capturing), ``new+runtime-stream`` (streams created through the CUDA
runtime instead of PyTorch's pool), and with ``--old FILE`` the executor from before the fix
(``old``; ``old+clear`` adds the cuBLAS workspace clearing around its captures).

Usage::

    python scripts/gpu_crash_check.py --json crash.json \
        --old tests/support/cuda_executor_before_issue18.py
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 2, 3, 5, 8)
TOL = {"rtol": 1e-3, "atol": 1e-4}


def build(work: Path) -> tuple[Path, dict[str, Any]]:
    """The issue's model from ONNX for cuda:0 (fp32, the ONNX route): its package and config."""
    import onnx_ir as ir
    import torch

    from ai_vmm import hardware
    from ai_vmm.frontends.torch import export_torch
    from ai_vmm.targets.base import TargetOptions
    from ai_vmm.targets.cuda import CudaTarget

    sys.path.insert(0, str(REPO / "tests" / "support"))
    from convformer import convformer

    proto, _, _ = export_torch(
        convformer(),
        "torch.module",
        example_inputs=(torch.randn(2, 3, 32, 32),),
        dynamic_shapes={"x": {0: "batch"}},
    )
    model = ir.serde.deserialize_model(proto)
    device = CudaTarget().discover(hardware.detect_cpu())[0][0]
    started = time.perf_counter()
    out = work / "pkg"
    out.mkdir()
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {}})
    payload = CudaTarget().codegen(model, device, options, out)
    return out / payload.entry, {
        "compile_s": round(time.perf_counter() - started, 1),
        "config": payload.config,
        "inputs": [v.name for v in model.graph.inputs],
        "outputs": [v.name for v in model.graph.outputs],
    }


def _external_stream(torch: Any, device: Any) -> Any:
    """A stream created through the CUDA runtime (not PyTorch's pool), for the variant that
    tries it: the libcudart this process loaded, found in /proc/self/maps."""
    import ctypes

    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "libcudart" in line})
    lib = ctypes.CDLL(paths[0])
    lib.cudaStreamCreateWithFlags.restype = ctypes.c_int
    handle = ctypes.c_void_p()
    status = lib.cudaStreamCreateWithFlags(ctypes.byref(handle), ctypes.c_uint(1))
    if status != 0:
        raise RuntimeError(f"cudaStreamCreateWithFlags: {status}")
    return torch.cuda.ExternalStream(handle.value, device=device)


def scenario(variant: str, entry: Path, part: dict[str, Any], old: Path | None) -> None:
    """Run the scenario in this process, one JSON line per step on stdout."""
    import torch

    sys.path.insert(0, str(REPO / "tests" / "support"))
    from convformer import convformer

    config = dict(part["config"])
    if variant.startswith("new"):
        from ai_vmm.runtime.executors import cuda as module

        if variant == "new+cudnn-benchmark":
            config["cudnn_benchmark"] = True
        elif variant == "new+runtime-stream":
            module.private_stream = _external_stream  # type: ignore[assignment]
    else:
        assert old is not None
        spec = importlib.util.spec_from_file_location("old_cuda_executor", old)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if variant == "old+clear":
            original = module.capture

            def capture(*args: Any, **kwargs: Any) -> Any:
                torch._C._cuda_clearCublasWorkspaces()
                try:
                    return original(*args, **kwargs)
                finally:
                    torch._C._cuda_clearCublasWorkspaces()

            module.capture = capture
    eager = convformer()
    name, out = part["inputs"][0], part["outputs"][0]
    cases = {}
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            cases[batch] = (x, eager(torch.from_numpy(x)).numpy())

    def say(step: str, **fields: Any) -> None:
        print(json.dumps({"step": step, **fields}), flush=True)

    def check(executor: Any, batch: int) -> float:
        x, want = cases[batch]
        got = executor.run({name: x})[out]
        torch.cuda.synchronize()
        error = float(np.abs(got - want).max())
        if not np.allclose(got, want, **TOL):
            raise AssertionError(f"batch {batch}: max error {error:.2e}")
        return error

    def make() -> Any:
        return module.CudaExecutor(entry, "0", config, tuple(part["outputs"]))

    from ai_vmm.runtime.executors.cuda_load import load_package

    runner = load_package(torch, entry, torch.device("cuda:0"))
    x = torch.from_numpy(cases[2][0]).cuda()
    probe = module.capture(runner, [x], torch.device("cuda:0"))
    probe.graph.replay()
    torch.cuda.synchronize()
    del probe, runner
    say("codegen-style capture dropped")
    a = make()
    errors = [check(a, b) for b in (1, 3, 8, 1)]
    say("A at 1, 3, 8, then 1", max_error=max(errors))
    b = make()
    errors = [check(e, batch) for batch in BATCHES for e in (a, b, a)]
    say("A and B interleaved", max_error=max(errors))
    for _ in range(3):
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        junk = [torch.randn(1024, 1024, device="cuda") for _ in range(8)]
        for m in junk:
            (m @ m).relu_()
        del junk
        errors = [check(e, batch) for batch in BATCHES for e in (a, b)]
    say("after other code's cuBLAS work", max_error=max(errors))
    del a
    gc.collect()
    errors = [check(b, batch) for batch in BATCHES]
    say("A dropped, B again", max_error=max(errors))
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(10):
            try:
                check(b, int(rng.choice(BATCHES)))
            except Exception as exc:
                failures.append(" ".join(str(exc).split())[:200])

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise AssertionError(f"threads: {len(failures)} failures, first: {failures[0]}")
    say("four threads on B")
    say("done")


def run_variant(
    variant: str, entry: Path, part: dict[str, Any], old: Path | None, sanitizer: bool
) -> dict[str, Any]:
    """The scenario in a child process; what it got through, and how it ended."""
    spec = json.dumps({"entry": str(entry), "part": part, "old": str(old) if old else None})
    command = [sys.executable, __file__, "--child", variant, "--spec", spec]
    if sanitizer:
        command = ["compute-sanitizer", "--tool", "memcheck", "--print-limit", "3", *command]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=120 if sanitizer else 45, env=env
        )
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = -999
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
    except FileNotFoundError as exc:
        return {"variant": variant, "sanitizer": sanitizer, "error": str(exc)}
    steps = []
    for line in stdout.splitlines():
        try:
            steps.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    tail = [line for line in (stderr + stdout).splitlines() if line.strip()][-12:]
    return {
        "variant": variant,
        "sanitizer": sanitizer,
        "rc": rc,
        "passed": bool(steps) and steps[-1].get("step") == "done" and rc == 0,
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "tail": tail if rc != 0 or sanitizer else [],
    }


def check_all(
    work: Path, old: Path | None, log: Any = print, json_path: Path | None = None
) -> dict[str, Any]:
    entry, part = build(work)
    log(f"crash check: built in {part['compile_s']} s; graphs {part['config'].get('cuda_graphs')}")
    keep = os.environ.get("AI_VMM_TEST_CONVFORMER_PACKAGE")
    if keep:  # tests/runtime/test_cuda_executor.py reuses this package instead of building one
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(entry, Path(keep) / entry.name)
        spec = {
            "entry": entry.name,
            "config": part["config"],
            "io": [part["inputs"], part["outputs"]],
        }
        (Path(keep) / "package.json").write_text(json.dumps(spec))
    results: list[dict[str, Any]] = []
    summary = {"compile_s": part["compile_s"], "config": part["config"], "variants": results}
    variants = ["new", *(["old"] if old else []), "new+cudnn-benchmark", "new+runtime-stream"]
    for variant in variants:
        result = run_variant(variant, entry, part, old, sanitizer=False)
        results.append(result)
        log(f"crash check {variant}: passed={result.get('passed')} rc={result.get('rc')}")
        log(json.dumps(result.get("steps")))
        if not result.get("passed"):
            log("\n".join(result.get("tail", [])))
        if json_path is not None:
            json_path.write_text(json.dumps(summary, indent=2))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="the executor module from before the fix")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.spec)
        old = Path(spec["old"]) if spec["old"] else None
        scenario(args.child, Path(spec["entry"]), spec["part"], old)
        return 0
    with tempfile.TemporaryDirectory(prefix="ai-vmm-crash-") as tmp:
        result = check_all(Path(tmp), args.old, json_path=args.json)
    return 0 if all(r.get("passed") for r in result["variants"] if r["variant"] == "new") else 1


if __name__ == "__main__":
    raise SystemExit(main())
