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

Variants: ``new`` (``ai_vmm.runtime.executors.cuda``), and with ``--old FILE`` the executor
from before the fix (``old``), and that executor with the cuBLAS workspaces cleared around its
captures (``old+clear``), to tell which hazard the crash came from.

Usage::

    python scripts/gpu_crash_check.py --old old_cuda_executor.py --json crash.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
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
    """The issue's model from ONNX for cuda:0 (fp32); its payload and partition config."""
    import onnx
    import torch

    import ai_vmm
    from ai_vmm.frontends.torch import export_torch

    sys.path.insert(0, str(REPO / "tests" / "support"))
    from convformer import convformer

    proto, _, _ = export_torch(
        convformer(),
        "torch.module",
        example_inputs=(torch.randn(2, 3, 32, 32),),
        dynamic_shapes={"x": {0: "batch"}},
    )
    onnx.save(proto, work / "convformer.onnx")
    started = time.perf_counter()
    result = ai_vmm.compile(work / "convformer.onnx", "cuda:0", work / "m.vmm", tune=False)
    part = result.manifest["partitions"][0]
    return work / "m.vmm" / part["entry"], {
        "compile_s": round(time.perf_counter() - started, 1),
        "config": part["config"],
        "inputs": list(part["inputs"]),
        "outputs": list(part["outputs"]),
    }


def scenario(variant: str, entry: Path, part: dict[str, Any], old: Path | None) -> None:
    """Run the scenario in this process, one JSON line per step on stdout."""
    import torch

    sys.path.insert(0, str(REPO / "tests" / "support"))
    from convformer import convformer

    if variant == "new":
        from ai_vmm.runtime.executors import cuda as module
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
        return module.CudaExecutor(entry, "0", part["config"], tuple(part["outputs"]))

    runner = torch._inductor.aoti_load_package(str(entry), run_single_threaded=True)
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
            command, capture_output=True, text=True, timeout=240 if sanitizer else 120, env=env
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


def check_all(work: Path, old: Path | None, log: Any = print) -> dict[str, Any]:
    entry, part = build(work)
    log(f"crash check: built in {part['compile_s']} s; graphs {part['config'].get('cuda_graphs')}")
    results = []
    variants = ["new"] + (["old", "old+clear"] if old else [])
    for variant in variants:
        result = run_variant(variant, entry, part, old, sanitizer=False)
        results.append(result)
        log(f"crash check {variant}: passed={result.get('passed')} rc={result.get('rc')}")
        if not result.get("passed"):
            log("\n".join(result.get("tail", [])))
    crashed = [r for r in results if r["variant"] == "old" and not r.get("passed")]
    if crashed:
        result = run_variant("old", entry, part, old, sanitizer=True)
        results.append(result)
        log("compute-sanitizer on old:\n" + "\n".join(result.get("tail", [])))
    return {"compile_s": part["compile_s"], "config": part["config"], "variants": results}


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
        result = check_all(Path(tmp), args.old)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(r.get("passed") for r in result["variants"] if r["variant"] == "new") else 1


if __name__ == "__main__":
    raise SystemExit(main())
