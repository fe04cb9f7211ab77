#!/usr/bin/env python
"""Where do fresh processes on the GPU machine die? (issue 18: children of the crash check
segfaulted ~40 s in, before their first step, and a fresh-process package load did not answer.)

    python scripts/gpu_probe.py OUT_DIR [STEP,...]

STEP: aoti-pack (compile only), direct-load (ai-vmm's loader in a fresh process), aoti-load,
vmm-build, vmm-load, gdb (a native backtrace of PyTorch's loader); default: the sequence below.

Each step runs in its own child process (``-X faulthandler``, a stack dump every 20 s while it
runs, a time limit), so a hang shows where it hangs and a crash shows its Python stack:

1. ``cuda-init``: a fresh process initializes CUDA;
2. ``aoti-build``: a child compiles a small conv net with AOTInductor, loads it, and exits;
3. ``aoti-load`` / ``aoti-load-cold``: a fresh child loads that package and runs it (with CUDA
   initialized first / not);
4. ``vmm-build`` / ``vmm-load``: ``ai_vmm.compile`` of the bundled CNN for cuda:0 in one child,
   ``ai_vmm.runtime.load`` and a call (graphs at batch 1, 3, 1) in another;
5. then ``cuda-init``, ``aoti-load`` and ``vmm-load`` again while this (parent) process holds a
   CUDA context of its own (do two processes on the GPU at once work here?).

Works in a temporary folder; writes ``OUT_DIR/probe.json`` (each step's exit status, seconds
and last lines).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRELUDE = (
    "import faulthandler, sys, time; faulthandler.dump_traceback_later(20, repeat=True);"
    "t0 = time.perf_counter();"
    "say = lambda m: print(f'[{time.perf_counter() - t0:6.1f}s] {m}', flush=True);"
)
STEPS = {
    "cuda-init": "import torch; say('torch imported'); x = torch.zeros(1, device='cuda');"
    "torch.cuda.synchronize(); say(f'cuda ok {torch.__version__} {torch.cuda.get_device_name()}')",
    "aoti-build": "import torch; say('torch imported');"
    "m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),"
    " torch.nn.LazyLinear(4)).cuda().eval(); x = torch.randn(2, 3, 16, 16, device='cuda');"
    "m(x); b = torch.export.Dim('b', min=1, max=64);"
    "ep = torch.export.export(m, (x,), dynamic_shapes={'input': {0: b}}); say('exported');"
    "p = torch._inductor.aoti_compile_and_package(ep, package_path=sys.argv[1]); say('packaged');"
    "r = torch._inductor.aoti_load_package(p); say('loaded in the building process');"
    "print(r(x).shape); torch.cuda.synchronize(); say('ran')",
    "aoti-pack": "import torch; say('torch imported');"
    "m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),"
    " torch.nn.LazyLinear(4)).cuda().eval(); x = torch.randn(2, 3, 16, 16, device='cuda');"
    "m(x); b = torch.export.Dim('b', min=1, max=64);"
    "ep = torch.export.export(m, (x,), dynamic_shapes={'input': {0: b}}); say('exported');"
    "p = torch._inductor.aoti_compile_and_package(ep, package_path=sys.argv[1]); say('packaged');"
    "import zipfile; say(zipfile.ZipFile(p).namelist())",
    "direct-load": "import torch; from ai_vmm.runtime.executors.cuda_load import load_direct;"
    "say('imported'); r = load_direct(torch, __import__('pathlib').Path(sys.argv[1]),"
    " torch.device('cuda:0')); say(f'loaded directly: {r}');"
    "x = torch.randn(3, 3, 16, 16, device='cuda'); print(r(x)[0].shape);"
    "torch.cuda.synchronize(); say('ran')",
    "aoti-load": "import torch; say('torch imported'); torch.zeros(1, device='cuda');"
    "say('cuda up'); r = torch._inductor.aoti_load_package(sys.argv[1]); say('loaded');"
    "x = torch.randn(3, 3, 16, 16, device='cuda'); print(r(x).shape);"
    "torch.cuda.synchronize(); say('ran')",
    "aoti-load-cold": "import torch; say('torch imported');"
    "r = torch._inductor.aoti_load_package(sys.argv[1]); say('loaded (CUDA not touched first)');"
    "x = torch.randn(3, 3, 16, 16, device='cuda'); print(r(x).shape);"
    "torch.cuda.synchronize(); say('ran')",
    "vmm-build": "import ai_vmm; say('ai_vmm imported');"
    "r = ai_vmm.compile(sys.argv[2] + '/models/bundled/tiny_cnn.onnx', 'cuda:0', sys.argv[1],"
    " force=True); say(f'compiled {r.report.get(\"chosen\")}')",
    "vmm-load": "import numpy as np, ai_vmm.runtime as rt; say('imported');"
    "m = rt.load(sys.argv[1]); say('loaded');"
    "feed = dict(np.load(sys.argv[2] + '/models/bundled/tiny_cnn_input.npz'));"
    "x = next(iter(feed)); base = feed[x];"
    "outs = [m.run({x: np.concatenate([base] * n)}) for n in (1, 3, 1)];"
    "say(f'ran: {[{k: v.shape for k, v in o.items()} for o in outs]}');"
    "a = next(iter(outs[0].values())); c = next(iter(outs[2].values()));"
    "say(f'batch 1 twice, max diff {float(np.abs(a - c).max())}')",
}


def child(
    name: str, args: list[str], limit: float, env: dict[str, str] | None = None
) -> dict[str, object]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", PRELUDE + STEPS[name], *args],
            capture_output=True,
            text=True,
            timeout=limit,
            env={**os.environ, **(env or {})},
        )
        code: int | str = proc.returncode
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = "timeout"
        text = _text(exc.stdout) + _text(exc.stderr)
    seconds = round(time.perf_counter() - started, 1)
    tail = "\n".join(text.strip().splitlines()[-40:])
    print(f"== {name}: exit {code} after {seconds} s\n{tail}", flush=True)
    return {"step": name, "exit": code, "seconds": seconds, "tail": tail}


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value or "")


VARIANTS = {
    "plain": "",
    "onnxruntime-first": "import onnxruntime;",
    "onnx-first": "import onnx;",
    "ai-vmm-compiler-first": "import ai_vmm, ai_vmm.pipeline, onnx, onnxruntime;",
    "cuda-first": "import torch; torch.zeros(1, device='cuda');",
    "libcuda-global": "import ctypes, os;"
    "ctypes.CDLL('libcuda.so.1', mode=os.RTLD_GLOBAL | os.RTLD_NOW);",
    "triton-driver": "import torch; torch.zeros(1, device='cuda');"
    "from triton.runtime.driver import driver;"
    "driver.active.get_current_device(); driver.active.utils;",
    "stdcxx-global-first": "import ctypes, os;"
    "ctypes.CDLL('libstdc++.so.6', mode=os.RTLD_GLOBAL | os.RTLD_NOW);",
    "compile-first": "import torch; f = torch.compile(lambda x: x * 2 + 1);"
    "f(torch.randn(8, device='cuda')); torch.cuda.synchronize(); say('compiled a function');",
    "lc-all-c": "",
    "bind-now": "",
}
ENVS = {"lc-all-c": {"LC_ALL": "C", "LANG": "C"}, "bind-now": {"LD_BIND_NOW": "1"}}
LOAD = (
    "import torch, pathlib; from ai_vmm.runtime.executors.cuda_load import load_direct;"
    "libs = lambda: sorted({l.split()[-1] for l in open('/proc/self/maps')"
    " if 'cuda' in l and '.so' in l});"
    "say(f'before: {libs()}');"
    "r = load_direct(torch, pathlib.Path(sys.argv[1]), torch.device('cuda:0')); say('loaded');"
    "x = torch.randn(3, 3, 16, 16, device='cuda'); print(r(x)[0].shape); torch.cuda.synchronize();"
    "say(f'ran; after: {libs()}')"
)


def variants(package: str) -> list[dict[str, object]]:
    """ai-vmm's direct loader in fresh processes after different preparations, and what the
    package's library links against."""
    import zipfile

    results = []
    with zipfile.ZipFile(package) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".so"))
        library = Path(tempfile.mkdtemp()) / "model.so"
        library.write_bytes(archive.read(name))
    for tool in (["ldd", str(library)], ["sh", "-c", "ldconfig -p | grep -i libcuda"]):
        proc = subprocess.run(tool, capture_output=True, text=True)
        print(f"== {' '.join(tool)}\n{proc.stdout}{proc.stderr}", flush=True)
        results.append({"step": " ".join(tool), "exit": proc.returncode, "tail": proc.stdout})
    wanted = os.environ.get("GPU_PROBE_VARIANTS")
    for label, prelude in VARIANTS.items():
        if wanted and label not in wanted.split(","):
            continue
        STEPS[f"direct-{label}"] = prelude + LOAD
        results.append(child(f"direct-{label}", [package], 90, ENVS.get(label)))
    return results


def gdb(package: str, limit: float) -> dict[str, object]:
    """A native backtrace of PyTorch's package loader in a fresh process (cuda-gdb)."""
    code = PRELUDE + LOAD
    command = ["cuda-gdb", "-q", "-batch", "-ex", "set pagination off", "-ex", "run"]
    command += ["-ex", "bt 18", "-ex", "info sharedlibrary"]
    command += ["--args", sys.executable, "-c", code, package]
    started = time.perf_counter()
    code_: str
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=limit)
        text, code_ = proc.stdout + proc.stderr, str(proc.returncode)
    except (subprocess.TimeoutExpired, OSError) as exc:
        text, code_ = f"{type(exc).__name__}: {exc}", "timeout/missing"
    tail = (
        "\n".join(
            line[:400]
            for line in text.splitlines()
            if line.startswith(("#", "Thread", "[")) or "stdc++" in line or "gcc_s" in line
        )
        or text[-3000:]
    )
    print(f"== gdb: exit {code_}\n{tail[:4000]}", flush=True)
    return {
        "step": "gdb",
        "exit": code_,
        "seconds": round(time.perf_counter() - started, 1),
        "tail": tail[:8000],
    }


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    steps = sys.argv[2].split(",") if len(sys.argv) > 2 else ["all"]
    work = Path(os.environ.get("GPU_PROBE_WORK") or tempfile.mkdtemp(prefix="gpu-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    package = str(work / "small.pt2")
    artifact = str(work / "cnn.vmm")
    results: list[dict[str, object]] = []
    if steps == ["all"]:
        results += [child("cuda-init", [], 60), child("aoti-build", [package], 120)]
        results += [child("aoti-load", [package], 60), child("aoti-load-cold", [package], 60)]
        results += [child("vmm-build", [artifact, str(REPO)], 150)]
        results += [child("vmm-load", [artifact, str(REPO)], 90)]
        import torch

        torch.zeros(1, device="cuda")
        print("== the parent holds a CUDA context from here on", flush=True)
        results += [child("cuda-init", [], 60), child("aoti-load", [package], 60)]
        results += [child("vmm-load", [artifact, str(REPO)], 90)]
    for step in steps:
        if step in ("aoti-pack", "direct-load", "aoti-load"):
            results.append(child(step, [package], 120))
        elif step in ("vmm-build", "vmm-load"):
            results.append(child(step, [artifact, str(REPO)], 150))
        elif step == "variants":
            results += variants(package)
        elif step == "gdb":
            results.append(gdb(package, 120))
        (out / "probe.json").write_text(json.dumps(results, indent=1))
    (out / "probe.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
